"""A large file fetched as parallel ranges, written in place and hashed as it lands.

`<part>.ranges` lists the pieces already complete, so a killed sync fetches only the rest.
The whole file is hashed from the part file, from its first byte on, by a thread that
follows the pieces as they arrive (no second pass once the last one lands); a bad byte
anywhere still fails the sync.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpulock.errors import GpulockError
from gpulock.http import Http
from gpulock.models.blobs import CHUNK, Hashes
from gpulock.pins import ModelFile
from gpulock.safeopen import Unsafe, open_descriptor, read_json
from gpulock.store.scratch import open_part, write_atomic

PARALLEL_FROM = 64 * 2**20  # files this large may download as parallel ranges
RANGE_MIN = 16 * 2**20
ONE_STREAM_FOR = 1.0  # seconds: a large file that one stream brings this fast gets one
_RANGES_LIMIT = 16 * 2**20  # `<part>.ranges`: the pieces done, one number each


def worth_ranges(size: int, streams: int) -> bool:
    """Whether a file of `size` bytes, with `streams` connections to spare, goes as ranges."""
    return streams > 1 and size >= PARALLEL_FROM


class Refused(Exception):
    """The server answers a range with the whole file: one stream is the way."""


class RangedDownload:
    """`file` from `url` into `part` as pieces of at least RANGE_MIN, about eight per
    stream, taken in order by `streams` streams: the hashing thread, which can only follow
    the file's complete prefix, stays a few pieces behind the fastest stream instead of
    waiting for the last range."""

    def __init__(self, http: Http, label: str, url: str, headers: dict[str, str],
                 file: ModelFile, part: Path, streams: int) -> None:
        self.http, self.label, self.url, self.headers = http, label, url, headers
        self.file, self.part, self.streams = file, part, streams
        self.step = max(RANGE_MIN, -(-file.size // (8 * streams)))
        count = -(-file.size // self.step)
        self.spans = [(i * self.step, min(file.size, (i + 1) * self.step) - 1)
                      for i in range(count)]
        self.state = Path(f"{part}.ranges")
        self.done = done_pieces(self.state, self.step, file.size, count) \
            if part.is_file() else set()
        # Bytes written so far from each piece's start (each range is written in order).
        self.written = [self._length(i) if i in self.done else 0 for i in range(count)]
        self._record_lock = threading.Lock()
        self._moved = threading.Condition()  # a piece grew, or the download stopped
        self._stopped = False

    def run(self) -> Hashes | None:
        """The file's hashes once every piece is in `part`; None if ranges are refused."""
        if not self.done:
            self.part.unlink(missing_ok=True)
        with open_part(self.part) as handle:
            if handle.tell() < self.file.size:
                handle.truncate(self.file.size)
        with ThreadPoolExecutor(max_workers=min(self.streams, len(self.spans)) + 1) as pool:
            hashed = pool.submit(self._follow)
            try:
                self._fetch_missing(pool)
            except BaseException as exc:
                self._halt()  # the streams still running stop at their next chunk
                pool.shutdown(wait=False, cancel_futures=True)  # those not started never do
                if not isinstance(exc, Refused):
                    raise
            hashes = hashed.result()  # None once halted
        if hashes is None:  # refused: the caller fetches the file as one stream
            self.part.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)
        return hashes

    def _fetch_missing(self, pool: ThreadPoolExecutor) -> None:
        """Every piece not yet done: one stream or several, as the first piece came."""
        todo = [i for i in range(len(self.spans)) if i not in self.done]
        last = len(self.spans) - 1
        if len(todo) == len(self.spans) > 1:
            # A fresh file: the first piece alone tells whether one stream is enough. Where
            # it would bring the rest within ONE_STREAM_FOR seconds, parallel streams cannot
            # save more than that and cost CPU (on a 2-core machine against a loopback hub,
            # 0.48-0.51 s for 256 MiB with 2-8 streams, 0.39 s with one); where one stream is
            # slow (a CDN's per-connection limit, a long round trip), the rest goes as pieces.
            began = time.monotonic()
            self._fetch(0, 0)
            rate = self.spans[0][1] / max(time.monotonic() - began, 1e-6)
            todo = todo[1:]
            if (self.file.size - self.step) / rate <= ONE_STREAM_FOR:
                self._fetch(1, last)
                return
        for future in [pool.submit(self._fetch, i, i) for i in todo]:
            future.result()

    def _fetch(self, first: int, last: int) -> None:
        """Pieces first..last as one range, each recorded complete as its last byte lands."""
        from gpulock.credentials import redact

        start, end = self.spans[first][0], self.spans[last][1]
        with self.http.stream(self.url, {**self.headers, "Range": f"bytes={start}-{end}"},
                              self.label) as (response, body):
            if response.status == 200:
                raise Refused  # the whole file for each range: not worth it
            if response.status != 206:
                raise GpulockError(f"{self.label} could not be downloaded from "
                                   f"{redact(self.url)} (HTTP {response.status})")
            fd = open_descriptor(self.part, os.O_WRONLY)
            try:
                offset, index = start, first
                while chunk := body.read(CHUNK):
                    if self._stopped:  # another piece failed: this sync gives up
                        return
                    if offset + len(chunk) > end + 1:  # a range never grows the file
                        raise GpulockError(f"{self.label} from {redact(self.url)} sent more "
                                           "than the range asked for")
                    os.pwrite(fd, chunk, offset)
                    offset += len(chunk)
                    index = self._wrote(index, last, offset)
            finally:
                os.close(fd)
        if offset != end + 1:
            raise GpulockError(f"{self.label} from {redact(self.url)}: the connection closed "
                               f"{end + 1 - offset} bytes short of the range asked for; the "
                               "next sync resumes it")
        self._record([last])

    def _wrote(self, index: int, last: int, offset: int) -> int:
        """Note that a stream's pieces index..last hold bytes up to `offset`: wake the
        hashing thread, record the pieces it completed, and return the piece it is in."""
        complete = []
        with self._moved:
            while offset > self.spans[index][1] and index < last:
                self.written[index] = self._length(index)
                complete.append(index)
                index += 1
            self.written[index] = offset - self.spans[index][0]
            self._moved.notify_all()
        if complete:
            self._record(complete)
        return index

    def _record(self, pieces: list[int]) -> None:
        with self._record_lock:
            self.done.update(pieces)
            write_atomic(self.state, json.dumps({"step": self.step, "size": self.file.size,
                                                 "done": sorted(self.done)}))

    def _follow(self) -> Hashes | None:
        """Hash the file's complete prefix as it grows; None if the download stopped."""
        hashes, buffer = Hashes(self.file), memoryview(bytearray(4 * CHUNK))
        fd = open_descriptor(self.part)
        try:
            while hashes.size < self.file.size:
                index = hashes.size // self.step
                start = self.spans[index][0]
                with self._moved:
                    while self.written[index] <= hashes.size - start and not self._stopped:
                        self._moved.wait()
                    if self._stopped:
                        return None
                    ready = start + self.written[index] - hashes.size
                got = os.preadv(fd, [buffer[:min(ready, len(buffer))]], hashes.size)
                if got <= 0:  # the part file shrank under us: the hash check will say so
                    break
                hashes.update(buffer[:got])
        finally:
            os.close(fd)
        return hashes

    def _halt(self) -> None:
        with self._moved:
            self._stopped = True
            self._moved.notify_all()

    def _length(self, index: int) -> int:
        return self.spans[index][1] - self.spans[index][0] + 1


def done_pieces(state: Path, step: int, size: int, count: int) -> set[int]:
    """The pieces `<part>.ranges` records complete, when it was written for pieces of this
    size (a run with another --jobs, or an older gpulock, cut the file differently)."""
    try:  # `claim_partial` carried it over from another writer: it may be anything
        recorded = read_json(state, _RANGES_LIMIT)
    except (OSError, Unsafe):
        return set()
    if not isinstance(recorded, dict) or recorded.get("step") != step \
            or recorded.get("size") != size or not isinstance(recorded.get("done"), list):
        return set()
    return {i for i in recorded["done"] if isinstance(i, int) and 0 <= i < count}
