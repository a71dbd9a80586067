"""What a binary cache backend is (folder.py, s3.py): a `Substituter` moves named objects
between the store's machine and one cache, and says what went wrong as a `CacheError`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

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
