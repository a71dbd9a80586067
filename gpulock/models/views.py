"""Models on the volume: verified blobs, laid out as the Hugging Face cache reads them.

Every pinned file lands once in `blobs/sha256/<aa>/<rest>` (a file shared by two repos or
projects is stored once; small git files, pinned by their blob sha1, are indexed under
`blobs/git-sha1/` after their first download). The view `hf/` is a real HF_HUB_CACHE:
`models--org--name/blobs/<etag>` links into the store, `snapshots/<commit>/<path>` are
relative links `../../blobs/<etag>`, `refs/<revision>` holds the commit and
`trees/<commit>.json` lists the files, so huggingface_hub finds a complete snapshot with
HF_HUB_OFFLINE=1. A snapshot folder is built aside and renamed into place: it is complete
or absent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

import xxhash

from gpulock import faults
from gpulock.errors import GpulockError, HashMismatchError
from gpulock.models import ModelFile, PinnedModel
from gpulock.safeopen import Unsafe, open_descriptor, open_regular, read_json, read_small
from gpulock.store import Store, seal
from gpulock.store.layout import Layout
from gpulock.store.names import member_problem
from gpulock.store.scratch import (
    alive_writers,
    built_beside,
    claim_partial,
    link_atomic,
    open_part,
    write_atomic,
)

if TYPE_CHECKING:
    from gpulock.store.substituters.pull import Substitutes

_CHUNK = 1 << 20
PARALLEL_FROM = 64 * 2**20  # files this large may download as parallel ranges
RANGE_MIN = 16 * 2**20
ONE_STREAM_FOR = 1.0  # seconds: a large file that one stream brings this fast gets one
_RANGES_LIMIT = 16 * 2**20  # `<part>.ranges`: the pieces done, one number each
_TREE_LIMIT = 256 * 2**20  # `trees/<commit>.json`: every pinned file of a commit
Log = Callable[[str], None]


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    kind: str  # "model" or "dataset"

    @classmethod
    def of(cls, source: str) -> HubRepo:
        repo = source.removeprefix("hf://")
        if repo.startswith("datasets/"):
            return cls(repo.removeprefix("datasets/"), "dataset")
        return cls(repo, "model")

    def folder(self, store: Store) -> Path:
        """This repository's folder in the store's Hugging Face cache."""
        return store.layout.hf_repo(self.kind, self.repo_id)

    def url(self, endpoint: str, commit: str, path: str) -> str:
        prefix = "datasets/" if self.kind == "dataset" else ""
        return f"{endpoint}/{prefix}{self.repo_id}/resolve/{commit}/{quote(path)}"


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


def _download(store: Store, model: PinnedModel, file: ModelFile, url: str,
              headers: dict[str, str], ranges: int = 1) -> Path:
    """Stream one file into the blob store, verifying size and hash; return its blob.

    The partial file is `tmp/models/<expected hash>.part.<writer>`: a sync killed mid-file
    leaves it, and the next one claims it and continues with Range requests after
    re-hashing what is already there.
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
            return _continue(store, model, file, url, headers, part, expected, ranges)
        except HashMismatchError as exc:
            if not exc.resumed:
                raise
            # Bytes kept from an earlier run failed the hash: fetch the file once more, whole.
            part.unlink(missing_ok=True)
            Path(f"{part}.ranges").unlink(missing_ok=True)
            return _continue(store, model, file, url, headers, part, expected, ranges)
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


def _continue(store: Store, model: PinnedModel, file: ModelFile, url: str,
              headers: dict[str, str], part: Path, expected: str, ranges: int) -> Path:
    from gpulock.credentials import redact
    from gpulock.http import Http

    resumed = part.is_file() and part.stat().st_size > 0
    if ranges > 1 and file.size >= PARALLEL_FROM:
        ranged = _ranged(model, file, url, headers, part, ranges)
        if ranged is not None:
            return _publish(store, model, file, url, part, expected, ranged, resumed=resumed)
    if part.is_file() and part.stat().st_size <= file.size:
        hashes = _hash_part(part, file)
    else:
        part.unlink(missing_ok=True)
        hashes = _Hashes(file)
    wanted = {**headers, "Range": f"bytes={hashes.size}-"} if hashes.size else dict(headers)
    if hashes.size < file.size or not hashes.size:
        with Http().stream(url, wanted, f"model '{model.name}': {file.path}") as (response,
                                                                                  body):
            if response.status == 200 and hashes.size:
                hashes = _Hashes(file)  # the server ignored the Range: start over
                part.unlink(missing_ok=True)
            elif response.status not in (200, 206):
                raise GpulockError(f"model '{model.name}': {file.path} could not be downloaded "
                                   f"from {redact(url)} (HTTP {response.status})")
            size = hashes.size
            with open_part(part) as out, _Behind(hashes) as behind:
                while chunk := body.read(_CHUNK):
                    if size + len(chunk) > file.size:  # never more than the lock's size
                        part.unlink(missing_ok=True)
                        raise GpulockError(f"model '{model.name}': {file.path} from "
                                           f"{redact(url)} is larger than the {file.size} "
                                           "bytes the lock says; nothing was stored")
                    out.write(chunk)
                    behind.update(chunk)
                    size += len(chunk)
                    faults.point("model", part)
    return _publish(store, model, file, url, part, expected, hashes, resumed=resumed)


def _hash_part(part: Path, file: ModelFile) -> _Hashes:
    """The hashes of a partial download or a source's copy: a regular file, never a link's
    target (a source that made `part` a link would have the outside file hashed, then
    sealed read-only and published as a blob)."""
    hashes = _Hashes(file)
    try:
        with open_regular(part.parent, part.name) as handle:
            while chunk := handle.read(_CHUNK):
                hashes.update(chunk)
    except Unsafe as exc:
        raise GpulockError(f"{file.path}: the copy downloaded at {part.parent}/{exc}; nothing "
                           "was stored") from None
    return hashes


def _ranged(model: PinnedModel, file: ModelFile, url: str, headers: dict[str, str],
            part: Path, ranges: int) -> _Hashes | None:
    """Fetch a large file as parallel ranges written in place and return its hashes; None
    if ranges are refused.

    `<part>.ranges` lists the ranges already complete, so a killed sync fetches only the
    rest. The whole file is hashed from the part file, from its first byte on, by a thread
    that follows the ranges as they arrive (no second pass once the last range lands); a
    bad byte anywhere still fails the sync.
    """
    from concurrent.futures import ThreadPoolExecutor

    from gpulock.credentials import redact
    from gpulock.http import Http

    # Pieces of at least RANGE_MIN, about eight per stream, taken in order by `ranges`
    # streams: the hashing thread, which can only follow the file's complete prefix, stays
    # a few pieces behind the fastest stream instead of waiting for the last range.
    step = max(RANGE_MIN, -(-file.size // (8 * ranges)))
    count = -(-file.size // step)
    spans = [(i * step, min(file.size, (i + 1) * step) - 1) for i in range(count)]
    state = Path(f"{part}.ranges")
    done = _done_pieces(state, step, file.size, count) if part.is_file() else set()
    if not done:
        part.unlink(missing_ok=True)
    with open_part(part) as handle:
        if handle.tell() < file.size:
            handle.truncate(file.size)
    lock = threading.Lock()
    refused = threading.Event()
    stop = threading.Event()  # a range failed or was refused: the hashing thread gives up
    # Bytes written so far from each range's start (each range is written in order).
    written = [spans[i][1] - spans[i][0] + 1 if i in done else 0 for i in range(count)]
    moved = threading.Condition()
    http = Http()

    def record(pieces: list[int]) -> None:
        with lock:
            done.update(pieces)
            write_atomic(state, json.dumps({"step": step, "size": file.size,
                                            "done": sorted(done)}))

    def fetch(first: int, last: int) -> None:
        """Pieces first..last as one range, each recorded complete as its last byte lands."""
        start, end = spans[first][0], spans[last][1]
        with http.stream(url, {**headers, "Range": f"bytes={start}-{end}"},
                         f"model '{model.name}': {file.path}") as (response, body):
            if response.status == 200:
                refused.set()  # the server sends the whole file: not worth it per range
                return
            if response.status != 206:
                raise GpulockError(f"model '{model.name}': {file.path} could not be "
                                   f"downloaded from {redact(url)} (HTTP {response.status})")
            fd = open_descriptor(part, os.O_WRONLY)
            try:
                offset, index = start, first
                while chunk := body.read(_CHUNK):
                    if stop.is_set():  # another piece failed: this sync gives up
                        return
                    if offset + len(chunk) > end + 1:  # a range never grows the file
                        raise GpulockError(f"model '{model.name}': {file.path} from "
                                           f"{redact(url)} sent more than the range asked for")
                    os.pwrite(fd, chunk, offset)
                    offset += len(chunk)
                    complete = []
                    with moved:
                        while offset > spans[index][1] and index < last:
                            written[index] = spans[index][1] - spans[index][0] + 1
                            complete.append(index)
                            index += 1
                        written[index] = offset - spans[index][0]
                        moved.notify_all()
                    if complete:
                        record(complete)
            finally:
                os.close(fd)
        if offset != end + 1:
            raise GpulockError(f"model '{model.name}': {file.path} from {redact(url)}: the "
                               f"connection closed {end + 1 - offset} bytes short of the "
                               "range asked for; the next sync resumes it")
        record([last])

    def follow() -> _Hashes | None:
        hashes, buffer = _Hashes(file), memoryview(bytearray(4 * _CHUNK))
        fd = open_descriptor(part)
        try:
            while hashes.size < file.size:
                index = hashes.size // step
                with moved:
                    while written[index] <= hashes.size - spans[index][0] and not stop.is_set():
                        moved.wait()
                    if stop.is_set():
                        return None
                    ready = spans[index][0] + written[index] - hashes.size
                got = os.preadv(fd, [buffer[:min(ready, len(buffer))]], hashes.size)
                if got <= 0:  # the part file shrank under us: the hash check will say so
                    break
                hashes.update(buffer[:got])
        finally:
            os.close(fd)
        return hashes

    def halt() -> None:
        with moved:
            stop.set()
            moved.notify_all()

    todo = [i for i in range(count) if i not in done]
    with ThreadPoolExecutor(max_workers=min(ranges, count) + 1) as pool:
        hashed = pool.submit(follow)
        try:
            if len(todo) == count > 1:
                # A fresh file: the first piece alone tells whether one stream is enough.
                # Where it would bring the rest within ONE_STREAM_FOR seconds, parallel
                # streams cannot save more than that and cost CPU (on a 2-core machine
                # against a loopback hub, 0.48-0.51 s for 256 MiB with 2-8 streams, 0.39 s
                # with one); where one stream is slow (a CDN's per-connection limit, a
                # long round trip), the rest goes as parallel pieces.
                began = time.monotonic()
                fetch(0, 0)
                rate = spans[0][1] / max(time.monotonic() - began, 1e-6)
                todo = todo[1:]
                if not refused.is_set() and (file.size - step) / rate <= ONE_STREAM_FOR:
                    fetch(1, count - 1)
                    todo = []
            for future in [pool.submit(fetch, i, i) for i in todo if not refused.is_set()]:
                future.result()
        except BaseException:
            halt()  # the streams still running stop at their next chunk
            pool.shutdown(wait=False, cancel_futures=True)  # the pieces not started never do
            raise
        if refused.is_set():
            halt()
        hashes = hashed.result()
    if refused.is_set():
        part.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
        return None
    state.unlink(missing_ok=True)
    return hashes


def _done_pieces(state: Path, step: int, size: int, count: int) -> set[int]:
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


def _publish(store: Store, model: PinnedModel, file: ModelFile, url: str, part: Path,
             expected: str, hashes: _Hashes, resumed: bool) -> Path:
    from gpulock.credentials import redact

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
        _link(layout.ready(layout.git_index(file.git_sha1)), blob)
    return blob


def _seal(part: Path) -> None:
    """Make the file `part` read-only, never a link's target."""
    fd = open_descriptor(part)
    try:
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)


class _Hashes:
    """sha256 and xxh3 of a model file as it streams, and its git blob sha1 when pinned so."""

    def __init__(self, file: ModelFile) -> None:
        self.sha256 = hashlib.sha256()
        self.xxh3 = xxhash.xxh3_128()
        self.size = 0
        # Small git files are pinned by their blob sha1; LFS files need only the sha256.
        self.git = None if file.sha256 else hashlib.sha1(b"blob %d\0" % file.size)

    def update(self, chunk: bytes | memoryview) -> None:
        self.sha256.update(chunk)
        self.xxh3.update(chunk)
        self.size += len(chunk)
        if self.git is not None:
            self.git.update(chunk)

    def git_sha1(self) -> str:
        return self.git.hexdigest() if self.git is not None else ""


class _Behind:
    """Hashes a download's chunks on a thread of its own, a few chunks behind the thread
    that receives and writes them: hashlib releases the GIL, so sha256 (the costliest step,
    ~1.5 GB/s) runs on another core while the socket and the disk are served. Leaving the
    block waits for the last chunk to be hashed."""

    def __init__(self, hashes: _Hashes) -> None:
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


def _link(link: Path, target: Path) -> None:
    """Create or replace a relative symlink atomically."""
    link_atomic(link, os.path.relpath(target, link.parent))


def _hf_view(store: Store, model: PinnedModel, blobs: dict[str, Path]) -> Path:
    layout = store.layout
    root = HubRepo.of(model.source).folder(store)
    commit = model.commit or ""
    links = layout.folder(root / "blobs")
    for file in model.files:
        _link(Layout.named(links, str(file.etag), "a blob id"), blobs[file.path])
    snapshot = layout.ready(Layout.commit_folder(root / "snapshots", commit))
    _lay_out(store, model, snapshot, {
        file.path: "../" * (file.path.count("/") + 2) + f"blobs/{file.etag}"
        for file in model.files})
    _write_tree(layout.ready(root / "trees" / f"{commit}.json"), model)
    if model.revision and model.revision != commit:
        ref = layout.ready(Layout.ref(root, model.revision))
        with contextlib.suppress(OSError, Unsafe):
            if read_small(ref, len(commit)) == commit.encode():
                return snapshot
        write_atomic(ref, commit)  # no newline: huggingface_hub reads it verbatim
    return snapshot


def _write_tree(path: Path, model: PinnedModel) -> None:
    """`trees/<commit>.json`: the files of the commit that the snapshot holds, so that
    huggingface_hub offline finds it complete. Projects pinning other files of the same
    commit add theirs."""
    try:
        files = read_json(path, _TREE_LIMIT)["files"]
    except (OSError, Unsafe, KeyError, TypeError):
        files = {}
    if not isinstance(files, dict):
        files = {}
    before = dict(files)
    for file in model.files:
        entry: dict[str, object] = {"size": file.size, "blob_id": file.git_sha1 or ""}
        if file.sha256:
            entry["lfs_sha256"], entry["lfs_size"] = file.sha256, file.size
        files[file.path] = entry
    if files != before or not path.exists():
        write_atomic(path, json.dumps({"format_version": 1, "files": files}, indent=1,
                                      sort_keys=True))


def _lay_out(store: Store, model: PinnedModel, snapshot: Path, links: dict[str, str]) -> None:
    """Make `snapshot` hold each of `links` (a file's path -> its relative link).

    A new snapshot is built beside and renamed into place: complete or absent. An existing
    one (another project's pin of the same commit, an earlier lock of a ModelScope
    revision) gets the links it lacks or holds differently, each replaced in one rename;
    links other pins need are left alone.
    """
    if not os.path.lexists(snapshot):
        with built_beside(snapshot) as work:
            for path, target in links.items():
                os.symlink(target, _new_link_path(model, work, path))
        return
    for path, target in links.items():
        link = Layout.inside(snapshot, path)
        with contextlib.suppress(OSError):
            if os.readlink(link) == target:
                continue
        if os.path.isdir(link) and not os.path.islink(link):
            raise GpulockError(f"model '{model.name}': {path} is a folder in the snapshot "
                               f"{snapshot} but a file in the lock; nothing was laid out")
        link_atomic(store.layout.ready(link), target)


def sync_models(store: Store, project: str, models: list[PinnedModel], log: Log,
                jobs: int = 8, substitutes: Substitutes | None = None) -> tuple[int, int]:
    """Fetch what the store lacks (from a binary cache first, when there is one) and lay
    out the views; return (files fetched, bytes)."""
    from concurrent.futures import ThreadPoolExecutor

    endpoint = _hf_endpoint()
    # One download per distinct content: a file two repos share is fetched once.
    work: dict[str, tuple[PinnedModel, ModelFile, str]] = {}
    found: dict[str, Path] = {}
    for model in models:
        for file in model.files:
            key = str(file.etag)
            blob = stored_blob(store, file)
            if blob is not None:
                found[key] = blob
            elif key not in work:
                work[key] = (model, file, _url(model, file, endpoint))
    if work:
        total = sum(f.size for _, f, _ in work.values())
        log(f"Fetching {len(work)} model files ({total / 2**20:.1f} MiB)")

        def fetch(key: str) -> None:
            model, file, url = work[key]
            # Parallelism is a budget: a lone 10 GB file gets all of it as ranges, files
            # that already fill the pool get one stream each (more only adds contention).
            try:
                cached = _from_cache(store, model, file, substitutes) if substitutes else None
                found[key] = cached or _fetch(store, model, file, url,
                                              ranges=max(1, jobs // len(work)))
            except OSError as exc:
                raise GpulockError(f"model '{model.name}': {file.path} could not be written "
                                   f"into {store.tmp}: {exc.strerror}; nothing partial is "
                                   "visible in the caches, and the next sync resumes it"
                                   ) from None

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(fetch, list(work)))
    for model in models:
        blobs = {f.path: found[str(f.etag)] for f in model.files}
        if model.source.startswith("hf://"):
            _hf_view(store, model, blobs)
        elif model.source.startswith("ms://"):
            _ms_view(store, project, model, blobs)
        else:
            _file_view(store, project, model, blobs)
    return len(work), sum(f.size for _, f, _ in work.values())


def _from_cache(store: Store, model: PinnedModel, file: ModelFile,
                substitutes: Substitutes) -> Path | None:
    """The file's blob from a binary cache, published only when its bytes are the lock's."""
    if not file.sha256:
        return None
    label = f"model '{model.name}': {file.path}"
    got = substitutes.blob(label, file.sha256, file.size, store)
    if got is None:
        return None
    part, cache = got
    try:
        return _publish(store, model, file, cache, part, file.sha256, _hash_part(part, file),
                        resumed=False)
    except HashMismatchError as exc:
        substitutes.log(f"warning: refused {label} from {cache}: {exc}")
        return None
    finally:
        shutil.rmtree(part.parent, ignore_errors=True)


def fetch_blob(store: Store, model: PinnedModel, file: ModelFile) -> Path:
    """Download one pinned file into the blob store (used by `verify --repair`)."""
    return _fetch(store, model, file, _url(model, file, _hf_endpoint()))


def _fetch(store: Store, model: PinnedModel, file: ModelFile, url: str, ranges: int = 1
           ) -> Path:
    """One pinned file into the blob store from its source: a hub or https:// over HTTP,
    another kind (gpulock.sources) through its own fetch; verified against the lock."""
    from gpulock.sources import source_for

    kind = source_for(model.source)
    if kind is None:
        return _download(store, model, file, url, _auth(model), ranges)
    blob = stored_blob(store, file)
    if blob is not None:
        return blob
    work = store.work_dir(f"source-{model.name}")
    try:
        part = work / "file"
        kind.fetch(store, model, file, part)
        from gpulock.credentials import redact

        return _publish(store, model, file, redact(model.source), part,
                        file.sha256 or file.git_sha1 or "", _hash_part(part, file),
                        resumed=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _auth(model: PinnedModel) -> dict[str, str]:
    """Tokens come from the environment only, and go only to their own hub."""
    if model.source.startswith("hf://"):
        token = os.environ.get("HF_TOKEN")
    elif model.source.startswith("ms://"):
        token = os.environ.get("MODELSCOPE_API_TOKEN")
    else:
        token = None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _extracted(store: Store, model: PinnedModel, file: ModelFile, blob: Path) -> Path:
    """The archive unpacked once into `trees/<archive sha256>/`, complete or absent."""
    import tarfile
    import zipfile
    import zlib

    tree = store.layout.ready(store.layout.tree(str(file.sha256)))
    if tree.is_dir():
        return tree
    with built_beside(tree) as work:
        try:
            if zipfile.is_zipfile(blob):
                with zipfile.ZipFile(blob) as archive:
                    _refuse_escapes(model, [i.filename for i in archive.infolist()])
                    archive.extractall(work)
            elif tarfile.is_tarfile(blob):
                with tarfile.open(blob) as archive:
                    members = archive.getmembers()
                    _refuse_escapes(model, [m.name for m in members]
                                    + [m.linkname for m in members if m.issym() or m.islnk()])
                    archive.extractall(work, filter="data")  # no devices, FIFOs, escapes
            elif _is_7z(blob):
                _extract_7z(model, blob, work)
            else:
                raise GpulockError(f"model '{model.name}': {file.path} is not a zip, tar or "
                                   "7z archive (rar is not supported); set extract = false "
                                   "to keep it as one file")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, _SevenZipError, RuntimeError,
                NotImplementedError, zlib.error) as exc:  # zipfile: encrypted, method, corrupt
            raise GpulockError(f"model '{model.name}': the archive {file.path} cannot be "
                               f"extracted ({exc}); nothing was extracted") from None
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            raise GpulockError(f"model '{model.name}': the archive {file.path} holds a file "
                               "and a folder of the same name; nothing was extracted") from None
        # Sealed before the tree is published: verify tells what it held from what it holds.
        write_atomic(store.layout.tree_seal(str(file.sha256)),
                     json.dumps(dict(seal.contents(work)), sort_keys=True))
    return tree


class _SevenZipError(Exception):
    """A 7z archive py7zr cannot read (its own errors, raised as this)."""


def _is_7z(blob: Path) -> bool:
    with blob.open("rb") as handle:
        return handle.read(6) == b"7z\xbc\xaf\x27\x1c"


def _extract_7z(model: PinnedModel, blob: Path, work: Path) -> None:
    """Unpack a 7z archive (seed 004's ETH3D data) by the rules of zip and tar: no member
    outside the tree, and no links (7z has no safe-link filter like tar's "data"); never
    more bytes than its members declare, nor than the volume has free."""
    import py7zr

    try:
        with py7zr.SevenZipFile(blob) as archive:
            members = archive.list()
            _refuse_escapes(model, [m.filename for m in members])
            linked = next((m.filename for m in members if m.is_symlink), None)
            if linked is not None:
                raise GpulockError(f"model '{model.name}': the archive holds a link, "
                                   f"{linked!r}, and gpulock extracts 7z archives without "
                                   "links; nothing was extracted")
            declared = sum(m.uncompressed or 0 for m in members)
            if declared > shutil.disk_usage(work).free:
                raise GpulockError(f"model '{model.name}': the archive unpacks to {declared:,} "
                                   "bytes, more than the store's volume has free; nothing was "
                                   "extracted")
        with py7zr.SevenZipFile(blob, max_extract_size=declared) as archive:
            archive.extractall(work)
    except (GpulockError, MemoryError):
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _SevenZipError(str(exc) or type(exc).__name__) from None
    except Exception as exc:  # py7zr's codecs fail in their own ways (LZMAError, zlib...)
        raise _SevenZipError(str(exc) or type(exc).__name__) from None


def _refuse_escapes(model: PinnedModel, names: list[str]) -> None:
    for name in names:
        if problem := member_problem(name):
            raise GpulockError(f"model '{model.name}': the archive holds {name!r}, outside its "
                               f"own tree (the path {problem}); nothing was extracted")


def _url(model: PinnedModel, file: ModelFile, hf_endpoint: str) -> str:
    if model.source.startswith("hf://"):
        return HubRepo.of(model.source).url(hf_endpoint, model.commit or "", file.path)
    if model.source.startswith("ms://"):
        from gpulock.models import modelscope_endpoint

        repo = model.source.removeprefix("ms://")
        return (f"{modelscope_endpoint()}/api/v1/models/{repo}/repo?"
                f"Revision={quote(model.revision or 'master')}&FilePath={quote(file.path)}")
    return model.source


def _ms_view(store: Store, project: str, model: PinnedModel, blobs: dict[str, Path]) -> Path:
    """`models/{owner}--{name}/snapshots/{revision}/{path}`, as modelscope-hub reads it, in
    the project's own cache: a revision's files are what this project's lock pinned."""
    layout = store.layout
    root = layout.ms_repo(project, model.source.removeprefix("ms://"))
    snapshot = layout.ready(Layout.ms_snapshot(root, model.revision or "master"))
    # A revision's files can change between locks (no commits on ModelScope): a link that
    # names another blob than the lock's is replaced.
    _lay_out(store, model, snapshot, {
        file.path: os.path.relpath(blobs[file.path], Layout.inside(snapshot, file.path).parent)
        for file in model.files})
    _ms_legacy_view(store, project, model, blobs)
    return snapshot


def _ms_legacy_view(store: Store, project: str, model: PinnedModel, blobs: dict[str, Path]
                    ) -> None:
    """Each folder modelscope 1.x before modelscope-hub reads (Layout.ms_legacy_repos), with
    the index files of its hub/utils/caching.py: `.msc`, a pickled list of {Path, Revision}
    the cache holds (with `local_files_only=True` a non-empty list is the whole check), and
    `.mdl`, a pickled {"id": "owner/name"}. Both are plain files: that client rewrites `.mdl`
    when it loads, and must never write through a link into a blob."""
    import pickle

    repo_id = model.source.removeprefix("ms://")
    revision = model.revision or "master"
    index = pickle.dumps([{"Path": f.path, "Revision": revision}
                          for f in sorted(model.files, key=lambda f: f.path)], protocol=2)
    meta = pickle.dumps({"id": repo_id}, protocol=2)
    for folder in store.layout.ms_legacy_repos(project, repo_id):
        root = store.layout.ready(folder)
        _lay_out(store, model, root, {
            file.path: os.path.relpath(blobs[file.path], Layout.inside(root, file.path).parent)
            for file in model.files})
        for name, content in ((".msc", index), (".mdl", meta)):
            path = root / name
            with contextlib.suppress(OSError, Unsafe):
                if read_small(path, len(content)) == content:
                    continue
            write_atomic(path, content)


def _file_view(store: Store, project: str, model: PinnedModel, blobs: dict[str, Path]
               ) -> None:
    """`files/<project>/<model>/<filename>` for a plain download, `files/<project>/<model>`
    -> its tree when extracted; a view of the other kind left by an earlier lock is
    replaced."""
    view = store.layout.ready(store.layout.file_view(project, model.name))
    is_link = os.path.islink(view)
    if model.extract:
        (file,) = model.files
        tree = _extracted(store, model, file, blobs[file.path])
        if os.path.isdir(view) and not is_link:
            aside = store.work_dir(f"view-{model.name}")
            os.rename(view, aside / "old")
            shutil.rmtree(aside)
        _link(view, tree)
        return
    if is_link:
        view.unlink()
    for file in model.files:
        _link(store.layout.ready(Layout.inside(view, file.path)), blobs[file.path])


def _new_link_path(model: PinnedModel, work: Path, path: str) -> Path:
    """Where the link for repository file `path` goes in a snapshot being built in `work`."""
    link = Layout.inside(work, path)
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GpulockError(f"model '{model.name}': {path} needs a folder where the repository "
                           "has a file of the same name; nothing was laid out") from None
    return link
