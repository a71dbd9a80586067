"""A generation's pack for starting on local disk (`[project] local-start = true`).

On a network volume every metadata operation is a round trip: a cold `import torch,
transformers` through the farm makes ~23,000 of them (53 s at 2 ms each, bench `coldstart`).
A generation built with `local-start` also holds `local.tar`: its small files (sources,
bytecode, metadata, scripts; each under `SMALL` bytes), read once in one sequential stream
and unpacked by a worker onto its local disk, with every larger file (the shared libraries)
left on the volume behind a relative link through `<dir>/.store`, the one link made at
unpack time to the volume's `v1/`. Nothing in the pack names a path, so it unpacks the same
wherever the volume is mounted. `local-start` (a /bin/sh script beside it) unpacks once per
machine and runs a command there.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

from gpulock.store import DamagedEntry

PACK = "local.tar"
SCRIPT = "local-start"
SMALL = 1 << 20  # files this large stay on the volume, behind a link
_SCRIPT = r"""#!/bin/sh
# Written by gpulock: run a command in this environment unpacked onto local disk.
#   <store>/v1/envs/<project>/current/local-start COMMAND [ARGS...]
# The generation's small files (sources, bytecode, metadata: local.tar beside this script)
# are unpacked once per machine and user into $GPULOCK_LOCAL (default /tmp/gpulock-<uid>,
# which must be an absolute path and the user's own), its large files left on the volume
# behind links; imports then touch the volume only for those. Where the pack cannot be
# unpacked, the command runs from the volume as it is, and one line says why.
set -f
p=$(realpath -- "$0" 2>/dev/null || realpath "$0" 2>/dev/null) || p=$0
gen=${p%/*}
v1=${gen%/envs/*}
base=${GPULOCK_LOCAL:-/tmp/gpulock-$(id -u)}
# The lock digest's start names the copy: another store's generation of the same number,
# or a later lock, never reuses it.
dir="$base/${gen#"$v1"/envs/}-@KEY@"
why=""
case $base in
  /*) ;;
  *) why="GPULOCK_LOCAL=$base is not an absolute path" ;;
esac
if [ -z "$why" ] && [ ! -e "$dir/.complete" ]; then
  part="$dir.part.$$"
  # Unpacked aside, then renamed into place (-T: never into a folder another start made).
  why=$( { umask 077 && mkdir -p "$base" && [ -O "$base" ] \
           || { echo "$base is not this user's own folder"; exit 1; }
           rm -rf "$part" && mkdir -p "$part" && tar -xof "$gen/local.tar" -C "$part" \
           && ln -s "$v1" "$part/.store" && : > "$part/.complete" \
           && { mv -T "$part" "$dir" 2>/dev/null || { [ ! -e "$dir" ] && mv "$part" "$dir"; }; }
         } 2>&1 )
  rm -rf "$part" 2>/dev/null
  why=$(printf '%s\n' "$why" | head -n 1)
fi
if [ -e "$dir/.complete" ] && [ -O "$dir" ] && [ "$(readlink "$dir/.store")" != "$v1" ]; then
  ln -sfn "$v1" "$dir/.store" 2>/dev/null  # the volume mounted elsewhere since: same files
fi
if [ -e "$dir/.complete" ] && [ -O "$dir" ] && [ "$(readlink "$dir/.store")" = "$v1" ]; then
  root=$dir
else
  [ -n "$why" ] || why="$dir is there but incomplete or not this user's; remove it"
  printf 'gpulock: could not unpack the environment into %s (%s); running it from %s\n' \
    "$dir" "$why" "$gen" >&2
  root=$gen
fi
site="$root/lib/python@MINOR@/site-packages"
kept=""
old_ifs=$IFS
IFS=:
for entry in ${PYTHONPATH:-}; do
  case "$entry" in "$v1"/*|"") ;; *) kept="$kept:$entry" ;; esac
done
IFS=$old_ifs
set +f
PYTHONPATH="$site$kept"
PATH="$root/bin:$PATH"
export PYTHONPATH PATH
[ "$#" -gt 0 ] || set -- python@MINOR@
exec "$@"
"""


def write(work: Path, v1: Path, minor: str, key: str) -> None:
    """Add `local.tar` and `local-start` to the generation being built in `work` (which
    sits at its final depth below `v1/envs/<project>/`); `key` (hex digits: the lock
    digest's start) names its local copy. Return the pack's size."""
    real_v1 = os.path.realpath(v1)
    with tarfile.open(work / PACK, "w", format=tarfile.PAX_FORMAT) as pack:
        _add_file(pack, work / "pyvenv.cfg", "pyvenv.cfg")
        _add_folder(pack, "bin")
        for name in sorted(os.listdir(work / "bin")):
            _add_bin(pack, work / "bin" / name, f"bin/{name}", real_v1)
        site = f"lib/python{minor}/site-packages"
        for folder in ("lib", f"lib/python{minor}"):
            _add_folder(pack, folder)
        _add_tree(pack, work / site, site, real_v1, set())
    script = _SCRIPT.replace("@MINOR@", minor).replace("@KEY@", key)
    (work / SCRIPT).write_text(script)
    os.chmod(work / SCRIPT, 0o755)


def _add_tree(pack: tarfile.TarFile, top: Path, name: str, real_v1: str,
              seen: set[str]) -> None:
    """The farm below `top`, its links followed: folders as folders, small files as files,
    large ones as links into `.store`. Only links the farm makes are followed, into store
    entries: an entry holds none of its own (wheels cannot), so one found there was planted
    and is damage, never a way to copy files from outside the store into the pack."""
    real = os.path.realpath(top)
    if real in seen:
        raise DamagedEntry(Path(real), "a link in it leads back into a folder above it")
    seen.add(real)
    _add_folder(pack, name)
    for entry in sorted(os.scandir(top), key=lambda e: e.name):
        path, member = Path(entry.path), f"{name}/{entry.name}"
        if entry.is_symlink() and not _farm_link(path, real_v1):
            raise DamagedEntry(Path(real), f"{entry.name} is a link gpulock did not make")
        if entry.is_dir():  # a real folder, or the farm's link to an entry's folder
            _add_tree(pack, path, member, real_v1, seen)
        elif entry.is_file():
            _add_large_or_small(pack, path, member, real_v1)


def _farm_link(path: Path, real_v1: str) -> bool:
    """Whether `path` is a link the farm made: a relative one into a store entry, from a
    folder of the generation (not from inside an entry)."""
    target = os.readlink(path)
    return (not os.path.isabs(target) and os.path.realpath(path).startswith(f"{real_v1}/pkgs/")
            and not os.path.realpath(path.parent).startswith(f"{real_v1}/pkgs/"))


def _add_large_or_small(pack: tarfile.TarFile, path: Path, member: str, real_v1: str) -> None:
    """A large file of a store entry as a link; anything else (the generation's own files
    live in a folder that is renamed once built) as a file."""
    real = os.path.realpath(path)
    if os.stat(real).st_size < SMALL or not real.startswith(f"{real_v1}/pkgs/"):
        _add_file(pack, path, member)
        return
    # `<dir>/<member>` -> `<dir>/.store/<path below v1>`, whatever <dir> is.
    up = "../" * member.count("/")
    _add_link(pack, member, up + ".store/" + os.path.relpath(real, real_v1))


def _add_bin(pack: tarfile.TarFile, path: Path, member: str, real_v1: str) -> None:
    """`bin/python*` links keep an absolute interpreter; one relative to the generation
    (the store's CPython, `../../../../python/...`) goes through `.store`."""
    if not path.is_symlink():
        _add_file(pack, path, member)
        return
    target = os.readlink(path)
    if not os.path.isabs(target):
        below_v1 = os.path.relpath(os.path.normpath(os.path.join(path.parent, target)),
                                   path.parents[4])
        target = "../.store/" + below_v1
    _add_link(pack, member, target)


def _add_file(pack: tarfile.TarFile, path: Path, member: str) -> None:
    info = tarfile.TarInfo(member)
    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        info.size, info.mode = status.st_size, 0o755 if status.st_mode & stat.S_IXUSR else 0o644
        pack.addfile(info, handle)


def _add_folder(pack: tarfile.TarFile, member: str) -> None:
    info = tarfile.TarInfo(member)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    pack.addfile(info)


def _add_link(pack: tarfile.TarFile, member: str, target: str) -> None:
    info = tarfile.TarInfo(member)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    pack.addfile(info)
