"""Binary caches a store takes entries from and pushes them to, as Nix's substituters.

A substituter is a flat namespace of objects behind one URL: a local or mounted folder
(`file:///mnt/cache`, or a plain absolute path) or an S3 bucket and prefix
(`s3://bucket/prefix?endpoint=https://minio.example&region=us-east-1`, credentials from the
usual AWS variables or profile). What the objects are called and what they hold is
`gpulock.store.substituters.record`'s business; a backend only moves bytes, and a new backend is
one module implementing `Substituter`, registered by its scheme in `open_substituter`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gpulock.credentials import login_problem, shown
from gpulock.errors import GpulockError

Progress = Callable[[int], None]


class Substituter(Protocol):
    """Moves named objects between a store's machine and one cache."""

    url: str  # for messages: the URL as `gpulock.credentials.shown` leaves it, made once

    def read(self, name: str, limit: int) -> bytes | None:
        """The object's bytes (at most `limit`), or None when the cache has no such object."""
        ...

    def download(self, name: str, target: Path, limit: int,
                 progress: Progress | None = None) -> bool:
        """Write the object to the new file `target` (at most `limit` bytes); False when the
        cache has no such object."""
        ...

    def exists(self, name: str) -> bool:
        """Whether the cache holds the object."""
        ...

    def upload(self, name: str, source: Path) -> None:
        """Store the file `source` as the object, replacing any object of that name whole."""
        ...


class CacheError(GpulockError):
    """A cache could not be read or written (unreachable, denied, malformed URL), or sent
    something other than it was asked for (an object larger than its record says)."""


class CacheUnreachable(CacheError):
    """The cache could not be reached or stalled (GPULOCK_STALL_TIMEOUT): every other entry
    asked of it would wait as long, so a sync stops asking it."""


def url_problem(url: str) -> str | None:
    """What is wrong with a cache URL, wherever it came from (gpu.toml, $GPULOCK_SUBSTITUTERS,
    `push --to`), or None. A cache URL never carries credentials: where one might hold some
    is `gpulock.credentials.login_problem`'s rule, and the answer never quotes the URL."""
    if problem := login_problem(url):
        return problem
    if not re.match(r"(s3://|file:///|/)", url):
        return "must be s3://bucket/prefix, file:///folder or an absolute path"
    return None


def open_substituter(url: str) -> Substituter:
    """The substituter a URL names, by its scheme; refused in one sentence that never shows
    a password."""
    problem = url_problem(url)
    if problem:
        raise CacheError(f"substituter {shown(url)!r} {problem}")
    if url.startswith("s3://"):
        from gpulock.store.substituters.s3 import S3

        return S3(url)
    from gpulock.store.substituters.folder import Folder

    return Folder(url)
