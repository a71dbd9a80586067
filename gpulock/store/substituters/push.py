"""`gpulock push`: put the store's entries and model files a cache lacks into it.

Each entry goes up as its wheel (a built one from the entry's `built/`, an index's fetched
again from its locked URL and checked against its hash) and then its signed record, so a
reader never finds a record whose wheel is not there yet. Model files go up as they are:
the lock pins their sha256.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gpulock.digests import hash_file
from gpulock.errors import GpulockError
from gpulock.http import Http
from gpulock.lock.lockfile import FileRef
from gpulock.signing import SecretKey
from gpulock.store import Store
from gpulock.store.substituters import Substituter
from gpulock.store.substituters.record import CacheRecord, blob_name, record_name, wheel_name

Log = Callable[[str], None]


@dataclass
class Pushed:
    entries: int = 0
    present: int = 0
    bytes: int = 0


def push(store: Store, cache: Substituter, key: SecretKey, keys: Sequence[str], log: Log,
         jobs: int = 4) -> Pushed:
    """Upload every entry of `keys` that `cache` lacks."""
    result = Pushed()
    http = Http()
    counting = threading.Lock()

    def one(entry_key: str) -> None:
        if cache.exists(record_name(entry_key)):
            with counting:
                result.present += 1
            return
        size = _push_entry(store, cache, key, entry_key, http)
        with counting:
            result.bytes += size
            result.entries += 1
        log(f"  pushed {entry_key.split('-', 1)[1]}")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, keys))
    return result


def push_blobs(store: Store, cache: Substituter, blobs: Sequence[str], log: Log,
               jobs: int = 4) -> Pushed:
    """Upload the model files (by sha256) the store holds and `cache` lacks."""
    result = Pushed()
    counting = threading.Lock()

    def one(sha256: str) -> None:
        path = store.layout.blob(sha256)
        if not store.layout.present(path) or cache.exists(blob_name(sha256)):
            with counting:
                result.present += 1
            return
        cache.upload(blob_name(sha256), path)
        with counting:
            result.entries += 1
            result.bytes += path.stat().st_size

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, blobs))
    if result.entries:
        log(f"  pushed {result.entries} model files")
    return result


def _push_entry(store: Store, cache: Substituter, key: SecretKey, entry_key: str,
                http: Http) -> int:
    from gpulock.store.fetch import discard, fetch

    entry = store.entry(entry_key)
    label = f"{entry.name} {entry.version}"
    built = store.built(entry_key)
    fetched = None
    if built is not None:
        wheel, sha256, size = built
        if hash_file(wheel) != (sha256, size):
            raise GpulockError(f"{label}: its built wheel {wheel} is damaged; 'gpulock verify "
                               "--repair' removes the entry and the next sync builds it again")
    else:
        origin = store.origin(entry_key)
        if not isinstance(origin, dict):
            raise GpulockError(f"{label}: the entry {entry_key} keeps no wheel to push (an "
                               "older gpulock built it); remove it and sync again")
        ref = FileRef(str(origin["name"]), str(origin["url"]), int(origin["size"]),
                      str(origin["sha256"]))
        wheel = fetched = fetch(ref, label, store.layout, http)
        sha256, size = ref.sha256, ref.size
    try:
        record = CacheRecord(entry_key, entry.name, entry.version, wheel.name, sha256,
                             size).signed(key)
        if not cache.exists(wheel_name(record)):
            cache.upload(wheel_name(record), wheel)
        with tempfile.NamedTemporaryFile(dir=store.layout.folder(store.tmp),
                                         prefix=".record-") as handle:
            handle.write(record.to_json())
            handle.flush()
            cache.upload(record_name(entry_key), Path(handle.name))
    finally:
        if fetched is not None:
            discard(store.layout, fetched)
    return size

