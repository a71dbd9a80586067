"""A model file over HTTP into the blob store: resumable, verified, one download per host.

The partial file is `tmp/models/<expected hash>.part.<writer>`: a sync killed mid-file
leaves it, and the next one claims it and continues with Range requests after re-hashing
what is already there (or, for a large file, fetches only the pieces `<part>.ranges` does
not list as done: gpulock.models.ranges).
"""

from __future__ import annotations

import errno
import fcntl
import os
import queue
import threading
from pathlib import Path
from typing import BinaryIO

from gpulock import faults
from gpulock.errors import GpulockError, HashMismatchError
from gpulock.http import Http
from gpulock.models.blobs import CHUNK, Hashes, hash_part, publish, stored_blob
from gpulock.models.ranges import RangedDownload, worth_ranges
from gpulock.pins import ModelFile, PinnedModel
from gpulock.safeopen import open_descriptor
from gpulock.store import Store
from gpulock.store.layout import Layout
from gpulock.store.scratch import alive_writers, claim_partial, open_part


def download(store: Store, model: PinnedModel, file: ModelFile, url: str,
             headers: dict[str, str], streams: int = 1) -> Path:
    """Stream one file into the blob store, verifying size and hash; return its blob.

    A large file may come as ranges over up to `streams` connections.
    """
    expected = file.sha256 or file.git_sha1 or ""
    layout = store.layout
    folder = layout.folder(layout.model_parts)
    guard = Layout.named(folder, f"{expected}.lock", "a download's name")
    # Another sync on this host may be fetching the same file: wait for it rather than
    # repeat its download. flock only saves work (network volumes ignore it); the claimed
    # partial and the hash check are what keep the bytes right.
    with _guard(guard, model) as held:
        if not os.environ.get("GPULOCK_NO_FLOCK"):
            fcntl.flock(held, fcntl.LOCK_EX)
        blob = stored_blob(store, file)
        if blob is not None:
            return blob
        part = claim_partial(folder, expected, alive_writers(layout.tmp_roots))
        try:
            return _fetch(store, model, file, url, headers, part, streams)
        except HashMismatchError as exc:
            if not exc.resumed:
                raise
            # Bytes kept from an earlier run failed the hash: fetch the file once more, whole.
            part.unlink(missing_ok=True)
            Path(f"{part}.ranges").unlink(missing_ok=True)
            return _fetch(store, model, file, url, headers, part, streams)
        finally:
            if part.is_file() and part.stat().st_size == 0:
                part.unlink(missing_ok=True)


def _guard(guard: Path, model: PinnedModel) -> BinaryIO:
    """The download's lock file, open to be flocked: a file gpulock made, so a link or FIFO
    planted in its place is damage to repair, never written through or waited on."""
    try:
        return open(open_descriptor(guard, os.O_WRONLY | os.O_CREAT), "wb")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        raise GpulockError(f"model '{model.name}': {exc.strerror}, which gpulock did not "
                           "make; run 'gpulock verify --repair'") from None


def _fetch(store: Store, model: PinnedModel, file: ModelFile, url: str,
           headers: dict[str, str], part: Path, streams: int) -> Path:
    """`part` completed (as ranges, or one stream from where it ends) and published."""
    resumed = part.is_file() and part.stat().st_size > 0
    label = f"model '{model.name}': {file.path}"
    if worth_ranges(file.size, streams):
        ranged = RangedDownload(Http(), label, url, headers, file, part, streams).run()
        if ranged is not None:
            return publish(store, model, file, url, part, ranged, resumed=resumed)
    return publish(store, model, file, url, part, _one_stream(label, url, headers, file, part),
                   resumed=resumed)


def _one_stream(label: str, url: str, headers: dict[str, str], file: ModelFile, part: Path
                ) -> Hashes:
    """The rest of `part` in one request (all of it when the server ignores the Range);
    return the hashes of the whole."""
    from gpulock.credentials import redact

    if part.is_file() and part.stat().st_size <= file.size:
        hashes = hash_part(part, file)
    else:
        part.unlink(missing_ok=True)
        hashes = Hashes(file)
    if hashes.size == file.size and hashes.size:
        return hashes
    wanted = {**headers, "Range": f"bytes={hashes.size}-"} if hashes.size else dict(headers)
    with Http().stream(url, wanted, label) as (response, body):
        if response.status == 200 and hashes.size:
            hashes = Hashes(file)  # the server ignored the Range: start over
            part.unlink(missing_ok=True)
        elif response.status not in (200, 206):
            raise GpulockError(f"{label} could not be downloaded from {redact(url)} "
                               f"(HTTP {response.status})")
        size = hashes.size
        with open_part(part) as out, _Behind(hashes) as behind:
            while chunk := body.read(CHUNK):
                if size + len(chunk) > file.size:  # never more than the lock's size
                    part.unlink(missing_ok=True)
                    raise GpulockError(f"{label} from {redact(url)} is larger than the "
                                       f"{file.size} bytes the lock says; nothing was stored")
                out.write(chunk)
                behind.update(chunk)
                size += len(chunk)
                faults.point("model", part)
    return hashes


class _Behind:
    """Hashes a download's chunks on a thread of its own, a few chunks behind the thread
    that receives and writes them: hashlib releases the GIL, so sha256 (the costliest step,
    ~1.5 GB/s) runs on another core while the socket and the disk are served. Leaving the
    block waits for the last chunk to be hashed."""

    def __init__(self, hashes: Hashes) -> None:
        self.hashes = hashes
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpulock-hash")

    def __enter__(self) -> _Behind:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while (chunk := self._chunks.get()) is not None:
                self.hashes.update(chunk)
        except BaseException as exc:  # re-raised on the downloading thread
            self._failed = exc
            while self._chunks.get() is not None:  # let the producer finish, then end
                pass

    def update(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def __exit__(self, *exc: object) -> None:
        self._chunks.put(None)
        self._thread.join()
        if self._failed is not None:
            raise self._failed
