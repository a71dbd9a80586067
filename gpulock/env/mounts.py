"""Which filesystem holds a path, read from /proc/self/mountinfo.

A generation on a network volume imports the packages its farm links whole from the store
folders the links name (see the generation's sitecustomize): there every readlink is a
round trip, on a local disk it costs microseconds and the farm's paths are kept. The same
volume is a local folder on the pod that filled it and a network mount on a worker, so the
question is asked where Python starts: each generation's sitecustomize runs this file, which
therefore needs nothing but `os` (no import a bare interpreter would not have made).
"""

from __future__ import annotations

import os

# Filesystems whose metadata operations travel over a network. FUSE ones count too
# (MooseFS on RunPod, JuiceFS, gcsfuse, s3fs), except fuseblk: a local disk (ntfs-3g).
NETWORK = frozenset({"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "lustre", "beegfs",
                     "gpfs", "9p"})


def filesystem(path: str | os.PathLike[str], mountinfo: str | None = None) -> str | None:
    """The type of the filesystem `path` is on (`ext4`, `fuse.mfsmount`, ...), or None when
    it cannot be told."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
                mountinfo = handle.read()
        except OSError:
            return None
    real = os.path.realpath(path)
    found: tuple[str, str | None] = ("", None)
    for line in mountinfo.splitlines():
        left, separator, right = line.partition(" - ")
        fields, kind = left.split(), right.split()[:1]
        if not separator or len(fields) < 5 or not kind:
            continue
        point = _unescaped(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(found[0]):  # the deepest; a later one mounts over
            found = (point, kind[0])
    return found[1]


def on_network_volume(path: str | os.PathLike[str], mountinfo: str | None = None) -> bool:
    """Whether `path` is on a filesystem whose metadata operations are network round trips."""
    kind = filesystem(path, mountinfo)
    if kind is None:
        return False
    return kind in NETWORK or (kind.startswith("fuse") and kind != "fuseblk")


def _unescaped(field: str) -> str:
    """A mount point as mountinfo writes it, with space, tab, newline and backslash as
    `\\ooo` octal escapes."""
    parts = field.split("\\")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:3]
        if len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)) + part[3:])
        else:
            out.append("\\" + part)
    return "".join(out)
