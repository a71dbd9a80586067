"""A model file's blob: found in the store, hashed as its bytes arrive, published once they
are the lock's.

Every pinned file lands once in `blobs/sha256/<aa>/<rest>` (a file shared by two repos or
projects is stored once); small git files, pinned by their blob sha1, are indexed under
`blobs/git-sha1/` after their first download.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import xxhash

from gpulock.errors import GpulockError, HashMismatchError
from gpulock.pins import ModelFile, PinnedModel
from gpulock.safeopen import Unsafe, open_descriptor, open_regular
from gpulock.store import Store
from gpulock.store.layout import Layout
from gpulock.store.scratch import link_atomic, write_atomic

CHUNK = 1 << 20


def stored_blob(store: Store, file: ModelFile) -> Path | None:
    """The blob holding `file`, if the store has it."""
    layout = store.layout
    if file.sha256:
        path = layout.blob(file.sha256)
        return path if layout.present(path) and path.is_file() else None
    if file.git_sha1:
        return indexed_blob(layout, layout.git_index(file.git_sha1))
    return None


def indexed_blob(layout: Layout, index: Path) -> Path | None:
    """The blob a `blobs/git-sha1/` link names, if it is a link gpulock made to a blob."""
    try:
        target = os.readlink(index)
    except OSError:
        return None
    aa, _, rest = target.removeprefix("../../sha256/").partition("/")
    if not target.startswith("../../sha256/") or "/" in rest:
        return None  # not a link gpulock wrote: only ever ../../sha256/<aa>/<rest>
    try:
        blob = layout.blob(aa + rest)
    except GpulockError:
        return None
    return blob if layout.present(blob) and blob.is_file() else None


class Hashes:
    """sha256 and xxh3 of a model file as it streams, and its git blob sha1 when pinned so."""

    def __init__(self, file: ModelFile) -> None:
        self.sha256 = hashlib.sha256()
        self.xxh3 = xxhash.xxh3_128()
        self.size = 0
        # Small git files are pinned by their blob sha1; LFS files need only the sha256.
        self.git = None if file.sha256 else hashlib.sha1(b"blob %d\0" % file.size)

    def update(self, chunk: bytes | memoryview) -> None:
        """Take the next bytes of the file."""
        self.sha256.update(chunk)
        self.xxh3.update(chunk)
        self.size += len(chunk)
        if self.git is not None:
            self.git.update(chunk)

    def git_sha1(self) -> str:
        """The git blob sha1 of the bytes so far, when the file is pinned by it."""
        return self.git.hexdigest() if self.git is not None else ""


def hash_part(part: Path, file: ModelFile) -> Hashes:
    """The hashes of a partial download or a source's copy: a regular file, never a link's
    target (a source that made `part` a link would have the outside file hashed, then
    sealed read-only and published as a blob)."""
    hashes = Hashes(file)
    try:
        with open_regular(part.parent, part.name) as handle:
            while chunk := handle.read(CHUNK):
                hashes.update(chunk)
    except Unsafe as exc:
        raise GpulockError(f"{file.path}: the copy downloaded at {part.parent}/{exc}; nothing "
                           "was stored") from None
    return hashes


def publish(store: Store, model: PinnedModel, file: ModelFile, url: str, part: Path,
            hashes: Hashes, resumed: bool) -> Path:
    """Move `part` into the blob store when `hashes` are the lock's; otherwise delete it and
    raise HashMismatchError (`resumed`: some of its bytes came from an earlier run)."""
    from gpulock.credentials import redact

    expected = file.sha256 or file.git_sha1 or ""
    size = hashes.size
    actual = hashes.sha256.hexdigest() if file.sha256 else hashes.git_sha1()
    if size != file.size or actual != expected:
        part.unlink(missing_ok=True)
        Path(f"{part}.ranges").unlink(missing_ok=True)
        # The hash of the bytes found is never printed: a hostile lock could aim a model
        # file at /etc/shadow (through a share, a checkout's link) and read it from a CI log.
        raise HashMismatchError(f"model '{model.name}': {file.path} from {redact(url)} has "
                                f"other bytes ({size} bytes), but the lock says {expected} "
                                f"({file.size} bytes): it changed upstream since the lock; "
                                "nothing was stored", resumed=resumed)
    layout = store.layout
    blob = layout.ready(layout.blob(hashes.sha256.hexdigest()))
    # The blob's xxh3, recorded now, lets `verify --fast` check it at memory speed.
    write_atomic(layout.ready(layout.fast_record(hashes.sha256.hexdigest())),
                 hashes.xxh3.hexdigest())
    _seal(part)
    os.replace(part, blob)
    if not file.sha256 and file.git_sha1:
        link_to(layout.ready(layout.git_index(file.git_sha1)), blob)
    return blob


def link_to(link: Path, target: Path) -> None:
    """Create or replace `link` as a relative symlink to `target`, atomically."""
    link_atomic(link, os.path.relpath(target, link.parent))


def _seal(part: Path) -> None:
    """Make the file `part` read-only, never a link's target."""
    fd = open_descriptor(part)
    try:
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)
