"""What the store holds, listed once for everything that walks it (gc, verify, repair,
push --all): the projects in `envs/`, the package entries and the model blobs, and the
plain folder listings they are made of.

Nothing here follows a link or waits on one: a listing of a path that is a link, or that
vanished under it (a sync renaming its work into place), is empty. `files` and `dirs` leave
out dot-names, work in progress; `names`, `projects` and `blobs` list everything there, for
verify to judge what gpulock did not put there.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from gpulock.names import entry_key_problem, hex_problem
from gpulock.safeopen import Unsafe, read_small
from gpulock.store import Store


def projects(store: Store) -> list[Path]:
    """What `envs/` holds: each project's folder of generations (and whatever else is
    there, for verify to name)."""
    return names(store.layout.envs)


def entries(store: Store) -> list[str]:
    """The keys of the package entries in `pkgs/` whose names are entry keys."""
    return [p.name for p in names(store.layout.pkgs) if not entry_key_problem(p.name)]


def blobs(store: Store) -> list[Path]:
    """Every file below `blobs/sha256/`, sorted, whatever its name (verify judges it)."""
    found: list[Path] = []
    if os.path.islink(store.layout.blobs):
        return found
    for parent, _subdirs, leaves in os.walk(store.layout.blobs):
        found += [Path(parent) / n for n in leaves]
    return sorted(found)


def blob_sha256(blob: Path) -> str | None:
    """The sha256 a blob's place names, or None when the place is not one a blob has."""
    sha = blob.parent.name + blob.name
    return None if hex_problem(sha, 64) else sha


def names(folder: Path) -> list[Path]:
    """What `folder` holds, sorted; nothing when it is a link (nothing lists through one)."""
    if os.path.islink(folder):
        return []
    try:
        return [folder / n for n in sorted(os.listdir(folder))]
    except (FileNotFoundError, NotADirectoryError):
        return []


def files(folder: Path) -> list[Path]:
    """Published files and links below `folder`, sorted (dot-names are work in progress)."""
    found: list[Path] = []
    if os.path.islink(folder):
        return found
    for parent, subdirs, leaves in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [Path(parent) / n for n in leaves if not n.startswith(".")]
    return sorted(found)


def dirs(folder: Path) -> list[Path]:
    """Real folders (not links) directly in `folder`, published ones only."""
    found = []
    for path in names(folder):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(path).st_mode) and not path.name.startswith("."):
                found.append(path)
    return found


def walk(root: Path, pick: Callable[[Path], bool]) -> Iterator[Path]:
    """Paths below `root` that `pick` chooses, never descending into links or picked folders."""
    if os.path.islink(root):
        return  # not gpulock's: verify names it, gc never goes through it
    for folder, subdirs, leaves in os.walk(root):
        for name in leaves:
            if pick(path := Path(folder) / name):
                yield path
        chosen = [d for d in subdirs if pick(Path(folder) / d)]
        subdirs[:] = [d for d in subdirs if d not in chosen]
        for name in chosen:
            yield Path(folder) / name


def small(path: Path, limit: int = 1 << 16) -> bytes | None:
    """A regular file's bytes when it holds at most `limit`; None for anything else (a
    link, a FIFO, a huge file): never blocks, never fills memory."""
    try:
        return read_small(path, limit)
    except (OSError, Unsafe):
        return None


def text(path: Path) -> str:
    """A small file gpulock wrote (a Hugging Face ref: one commit id), or "" when it is not
    one: never read through a link, never waited on as a FIFO."""
    return (small(path, 4096) or b"").decode("utf-8", "replace").strip()


def prune_empty(folder: Path) -> None:
    """Remove the empty folders below and of `folder` (work in progress, dot-named, stays)."""
    if os.path.islink(folder):
        return
    for parent, _subdirs, _leaves in os.walk(folder, topdown=False):
        if not any(part.startswith(".") for part in Path(parent).relative_to(folder).parts):
            with contextlib.suppress(OSError):
                os.rmdir(parent)


def size(path: Path) -> int:
    """Bytes a path holds on disk, not following links (a farm's links cost nothing)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return os.lstat(path).st_size
    except FileNotFoundError:
        return 0
    total = 0
    for folder, _subdirs, leaves in os.walk(path):
        for name in leaves:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
