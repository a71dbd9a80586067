"""Which filesystem holds a path, read from /proc/self/mountinfo.

A generation on a network volume imports the packages its farm links whole from the store
folders the links name (see the generation's sitecustomize): there every readlink is a
round trip, on a local disk it costs microseconds and the farm's paths are kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Filesystems whose metadata operations travel over a network. FUSE ones count too
# (MooseFS on RunPod, JuiceFS, gcsfuse, s3fs), except fuseblk: a local disk (ntfs-3g).
NETWORK = frozenset({"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "lustre", "beegfs",
                     "gpfs", "9p"})
_ESCAPE = re.compile(r"\\([0-7]{3})")


def filesystem(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem `path` is on (`ext4`, `fuse.mfsmount`, ...), or None when
    it cannot be told."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    real = os.path.realpath(path)
    found: tuple[str, str | None] = ("", None)
    for line in mountinfo.splitlines():
        left, separator, right = line.partition(" - ")
        fields, kind = left.split(), right.split()[:1]
        if not separator or len(fields) < 5 or not kind:
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(found[0]):  # the deepest; a later one mounts over
            found = (point, kind[0])
    return found[1]


def on_network_volume(path: Path, mountinfo: str | None = None) -> bool:
    """Whether `path` is on a filesystem whose metadata operations are network round trips."""
    kind = filesystem(path, mountinfo)
    if kind is None:
        return False
    return kind in NETWORK or (kind.startswith("fuse") and kind != "fuseblk")
