"""The symlink farm: one site-packages made of links into store entries.

A folder owned by one wheel becomes a single link (a torch env is a few hundred links, not
25,000 hardlinks), except where an ELF file below it has an $ORIGIN path climbing out of
it: then it is a real folder whose children are linked. Folders several wheels share
(`nvidia/`, namespace packages) are real and merged. The same path in two wheels is fine
when the bytes are equal and an error naming both wheels otherwise. Links are relative,
so a volume mounted elsewhere keeps working.
"""

from __future__ import annotations

import filecmp
import os
import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpulock.errors import GpulockError
from gpulock.store import DamagedEntry, Entry


@dataclass
class FarmStats:
    links: int = 0
    folders: int = 0
    shared: int = 0  # links taken over from the previous generation (hard links)


@dataclass(frozen=True)
class _Source:
    entry: Entry
    path: Path
    is_dir: bool


def build(target: Path, entries: Sequence[Entry], reserved: Collection[str] = (),
          previous: Path | None = None) -> FarmStats:
    """Fill the (new, empty) folder `target` with the merged site trees of `entries`; a
    wheel with a top-level name in `reserved` (the environment's own files) is refused.

    `previous`: the same folder of the generation this one follows; each link it already
    holds is taken over (see `link`), so an update makes new links only for what changed."""
    stats = FarmStats()
    target.mkdir(parents=True, exist_ok=True)
    roots = [_Source(e, e.site, True) for e in entries if _has_site(e)]
    for root in roots:
        for name in sorted(set(reserved) & set(os.listdir(root.path))):
            raise GpulockError(f"{_label(root)} ships {name}, which the environment keeps for "
                               "gpulock's own use (its pip guard and .pth support); this "
                               "wheel cannot be installed by gpulock")
    _merge(target, "", roots, stats, previous)
    return stats


def _has_site(entry: Entry) -> bool:
    """Whether the entry has a `site` folder: a real one (a link planted there would take
    the farm, and every import through it, anywhere on the volume)."""
    try:
        mode = os.lstat(entry.site).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(mode):
        raise DamagedEntry(entry.path, "site is not a folder")
    return True


def _merge(folder: Path, relative: str, sources: list[_Source], stats: FarmStats,
           previous: Path | None) -> None:
    children: dict[str, list[_Source]] = {}
    for source in sources:
        with os.scandir(source.path) as listing:
            for item in listing:
                if item.is_symlink():  # unpack makes none: planted on the shared volume
                    inside = f"{relative}/{item.name}" if relative else item.name
                    raise DamagedEntry(source.entry.path, f"site/{inside} is a symbolic link")
                children.setdefault(item.name, []).append(
                    _Source(source.entry, Path(item.path), item.is_dir(follow_symlinks=False)))
    for name in sorted(children):
        owners = children[name]
        child = f"{relative}/{name}" if relative else name
        dest = folder / name
        dirs = [o for o in owners if o.is_dir]
        files = [o for o in owners if not o.is_dir]
        if dirs and files:
            raise GpulockError(f"{child} is a folder in {_label(dirs[0])} but a file in "
                               f"{_label(files[0])}; these wheels cannot share an environment")
        if files:
            first = files[0]
            if name.endswith(".pyc") and relative.endswith("__pycache__"):
                pass  # compiled in different temporary folders: equal sources, other bytes
            else:
                for other in files[1:]:
                    if not filecmp.cmp(first.path, other.path, shallow=False):
                        raise GpulockError(f"{child} differs between {_label(first)} and "
                                           f"{_label(other)}; these wheels cannot share an "
                                           "environment")
            _link(first.path, dest, child, stats, previous)
        elif len(dirs) == 1 and child not in dirs[0].entry.real_dirs:
            _link(dirs[0].path, dest, child, stats, previous)
        else:
            dest.mkdir()
            stats.folders += 1
            _merge(dest, child, dirs, stats, previous)


def _link(source: Path, dest: Path, relative: str, stats: FarmStats,
          previous: Path | None) -> None:
    shared = link(os.path.relpath(source, dest.parent), dest,
                  previous / relative if previous is not None else None)
    stats.links += 1
    stats.shared += shared


def link(target: str, dest: Path, previous: Path | None) -> bool:
    """Make `dest` a symbolic link to `target`: a hard link to `previous` when that is a
    link to the same target (True), else a new one (False).

    Every generation sits at the same depth, so an unchanged package's relative link is the
    same string in each; sharing its inode costs a directory entry, where a new symbolic link
    costs an inode (0.4-0.6 ms each on this benchmark's disk, 20x a hard link). A symbolic
    link's target never changes once made, so the generations stay independent."""
    if previous is not None:
        try:
            if os.readlink(previous) == target:
                os.link(previous, dest, follow_symlinks=False)
                return True
        except OSError:
            pass  # none there, not a link, or another filesystem: make a new one
    os.symlink(target, dest)
    return False


def _label(source: _Source) -> str:
    return f"{source.entry.name} {source.entry.version}"
