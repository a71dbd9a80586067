"""Work in progress under the store's tmp/: names that say which process owns them.

Several pods may share one volume and any of them may be killed mid-write, so every
temporary name carries its writer (`<host>~<pid>~<random>`, the host part naming the machine
and its PID namespace, so two containers on one node are two hosts). A partial download is
resumed only by claiming it with a rename (exactly one claimant wins), and only once its
writer is gone: a dead process on this host, or, from another host, no write for
`STALE_SECONDS` and no heartbeat (a running sync keeps its GC root's time fresh, see
roots.py). Nothing here needs flock, which network volumes ignore.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO

from gpulock.safeopen import open_descriptor

STALE_SECONDS = 600
# The host part holds no '.', '-' or '~', so a tag is found inside any name built around it
# (`.building-<tag>-x1`, `wheel.part.<tag>`).
_OWNER = re.compile(r"([^.~-]+)~(\d+)~[0-9a-f]{8}")


def _host() -> str:
    """This machine and PID namespace: a process of another namespace is another host's."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        namespace = ""
    return re.sub(r"[.~-]", "_", f"{os.uname().nodename or 'host'}_{namespace or '0'}")


HOST = _host()


def tag() -> str:
    """A name fragment unique to this writer: host, process and a random part."""
    return f"{HOST}~{os.getpid()}~{os.urandom(4).hex()}"


def tagged(name: str) -> bool:
    """Whether `name` is one of gpulock's temporary names: a dot-name that carries its
    writer (a dataset's own `.gitattributes` or `.meta/` is not)."""
    return name.startswith(".") and _OWNER.search(name) is not None


def abandoned(path: Path, alive: Collection[str] = ()) -> bool:
    """Whether the writer named in `path` can no longer be writing to it.

    `alive` holds `host~pid` of writers whose heartbeat is fresh (see `alive_writers`); on
    this host the process table is asked first, as it knows for sure.
    """
    owner = _OWNER.search(path.name)
    if owner is None:
        return _stale(path)
    host, pid = owner.group(1), int(owner.group(2))
    if host == HOST:
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
    if f"{host}~{pid}" in alive:
        return False
    return _stale(path)


def _stale(path: Path) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False


def alive_writers(heartbeats: Path) -> set[str]:
    """`host~pid` of the writers whose heartbeat file in `heartbeats` is fresh."""
    alive: set[str] = set()
    try:
        names = os.listdir(heartbeats)
    except OSError:
        return alive
    now = time.time()
    for name in names:
        owner = _OWNER.search(name)
        try:
            fresh = abs(now - os.lstat(heartbeats / name).st_mtime) < STALE_SECONDS
        except FileNotFoundError:
            continue
        if owner and fresh:
            alive.add(f"{owner.group(1)}~{owner.group(2)}")
    return alive


def claim_partial(folder: Path, stem: str, alive: Collection[str] = ()) -> Path:
    """A partial file for `stem` in the (existing, real) `folder` that only this process writes.

    The largest abandoned partial of the same content is taken over by renaming it (its
    `.ranges` record moves with it); otherwise a new name is returned. Whatever is in a
    claimed partial is re-hashed before it counts, so a wrong guess costs bytes, not data.
    Only plain files are claimed: a link planted under a partial's name is left alone.
    """
    mine = folder / f"{stem}.part.{tag()}"
    leftovers = [p for p in folder.glob(f"{stem}.part.*")
                 if not p.name.endswith(".ranges") and _plain(p) and abandoned(p, alive)]
    for old in sorted(leftovers, key=_size, reverse=True):
        try:
            os.rename(old, mine)
        except FileNotFoundError:
            continue  # another process claimed it first
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{old}.ranges", f"{mine}.ranges")
        return mine
    return mine


def _plain(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def open_part(path: Path) -> BinaryIO:
    """Open a partial download for appending: never through a symbolic link, never waiting
    on a FIFO planted in its place (safeopen.open_descriptor)."""
    return open(open_descriptor(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def write_atomic(path: Path, content: str | bytes) -> None:
    """Replace `path` with `content` in one rename: readers see the old content or the new.

    The parent folder must exist (the store's layout makes and checks it).
    """
    temporary = path.parent / f".{path.name}.{tag()}.tmp"
    try:
        if isinstance(content, bytes):
            temporary.write_bytes(content)
        else:
            temporary.write_text(content)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def link_atomic(link: Path, value: str) -> None:
    """Point the symlink `link` at `value`, replacing any old link in one rename."""
    with contextlib.suppress(OSError):
        if os.readlink(link) == value:
            return  # a rerun changes nothing: one readlink instead of symlink + rename
    temporary = link.parent / f".{link.name}.{tag()}.tmp"
    os.symlink(value, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def built_beside(final: Path) -> Iterator[Path]:
    """A new folder beside `final` for the block to fill, renamed to `final` when it succeeds.

    Nothing half-built is ever at `final`. When `final` exists by then, a racing writer
    built the same content and ours is dropped. A killed writer's folder keeps its writer's
    name, for gc. The parent folder must exist.
    """
    work = Path(tempfile.mkdtemp(prefix=f".building-{tag()}-", dir=final.parent))
    try:
        yield work
        work.chmod(0o755)  # shared on the volume: readable by every user
        try:
            os.rename(work, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
