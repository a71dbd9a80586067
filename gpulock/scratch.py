"""Work in progress under the store's tmp/: names that say which process owns them.

Several pods may share one volume and any of them may be killed mid-write, so every
temporary name carries its writer (`<host>~<pid>~<random>`). A partial download is
resumed only by claiming it with a rename (exactly one claimant wins), and only once its
writer is gone: a dead process on this host, or no write for `STALE_SECONDS` from another
host. Nothing here needs flock, which network volumes ignore.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import time
from pathlib import Path

STALE_SECONDS = 600
_OWNER = re.compile(r"([^.~]+)~(\d+)~[0-9a-f]{8}")
HOST = socket.gethostname().replace(".", "_").replace("~", "_") or "host"


def tag() -> str:
    """A name fragment unique to this writer: host, process and a random part."""
    return f"{HOST}~{os.getpid()}~{secrets.token_hex(4)}"


def abandoned(path: Path, now: float | None = None) -> bool:
    """Whether the writer named in `path` can no longer be writing to it."""
    owner = _OWNER.search(path.name)
    if owner is None:
        return _stale(path, now)
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
    return _stale(path, now)


def _stale(path: Path, now: float | None) -> bool:
    try:
        return (now or time.time()) - path.lstat().st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False


def claim_partial(folder: Path, stem: str) -> Path:
    """A partial file for `stem` that only this process writes.

    The largest abandoned partial of the same content is taken over by renaming it (its
    `.ranges` record moves with it); otherwise a new name is returned. Whatever is in a
    claimed partial is re-hashed before it counts, so a wrong guess costs bytes, not data.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / f"{stem}.part.{tag()}"
    leftovers = [p for p in folder.glob(f"{stem}.part.*")
                 if not p.name.endswith(".ranges") and abandoned(p)]
    for old in sorted(leftovers, key=_size, reverse=True):
        try:
            os.rename(old, mine)
        except FileNotFoundError:
            continue  # another process claimed it first
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{old}.ranges", f"{mine}.ranges")
        return mine
    return mine


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1
