"""A file's sha256 and size, read once: how bytes from a cache, a share or a bucket are
checked against what a lock or a signed record says."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def hash_file(path: Path) -> tuple[str, int]:
    """The sha256 and size of a file, read once."""
    with path.open("rb") as handle:
        return hash_stream(handle)


def hash_stream(handle: BinaryIO) -> tuple[str, int]:
    """The sha256 and size of what is left to read from `handle`."""
    digest, size = hashlib.sha256(), 0
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def copy_hashed(source: BinaryIO, target: Path) -> tuple[str, int]:
    """Copy an open file to the new file `target`; the sha256 and size of exactly the bytes
    written, so what is checked is what is kept, whatever happens to `source` meanwhile."""
    digest, size = hashlib.sha256(), 0
    with target.open("xb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
