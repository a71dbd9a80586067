"""`gpulock push`: put the store's entries and model files a cache lacks into it.

Each entry goes up as its wheel (a built one from the entry's `built/`, an index's fetched
again from its locked URL and checked against its hash) and then its signed record, so a
reader never finds a record whose wheel is not there yet. Model files go up as they are:
the lock pins their sha256.

Push signs only what `verify` would pass: each entry is first checked file by file by
verify's own checks, and the wheel is copied into push's own work folder, hashed as it is
copied, and signed only when that hash is the one the entry records (the built wheel's
record, or the locked origin's sha256): the bytes uploaded are the bytes hashed, whatever
happens in the store meanwhile. A damaged entry or model file is skipped, never signed,
and named when the push ends (exit 1), while the healthy ones are shared: skipping rather
than stopping at the first keeps one damaged entry of another project from holding back a
whole `push --all`, and the error still makes it impossible to miss.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gpulock.digests import copy_hashed
from gpulock.errors import GpulockError
from gpulock.http import Http
from gpulock.safeopen import open_file
from gpulock.signing import SecretKey
from gpulock.store import DamagedEntry, Entry, Record, Store
from gpulock.store.integrity import EntryDamage, verified_records, verify_blob
from gpulock.store.layout import Layout
from gpulock.store.substituters.backend import Substituter
from gpulock.store.substituters.record import CacheRecord, blob_name, record_name, wheel_name

Log = Callable[[str], None]


@dataclass
class Pushed:
    entries: int = 0
    present: int = 0
    bytes: int = 0
    damaged: list[str] = field(default_factory=list)  # what was not pushed, and why


def push(store: Store, cache: Substituter, key: SecretKey, keys: Sequence[str], log: Log,
         jobs: int = 4) -> Pushed:
    """Upload every sound entry of `keys` that `cache` lacks; list the damaged ones."""
    result = Pushed()
    http = Http()
    counting = threading.Lock()

    def one(entry_key: str) -> None:
        if cache.exists(record_name(entry_key)):
            with counting:
                result.present += 1
            return
        try:
            size = _push_entry(store, cache, key, entry_key, http)
        except EntryDamage as exc:
            with counting:
                result.damaged.append(str(exc))
            return
        with counting:
            result.bytes += size
            result.entries += 1
        log(f"  pushed {entry_key.split('-', 1)[1]}")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, keys))
    return result


def push_blobs(store: Store, cache: Substituter, blobs: Sequence[str], log: Log,
               jobs: int = 4) -> Pushed:
    """Upload the sound model files (by sha256) the store holds and `cache` lacks.

    A model file needs no signature (its name is the sha256 every reader checks it
    against), so it is checked and uploaded in place rather than copied first: bytes changed
    in between are refused by every reader, never taken."""
    result = Pushed()
    counting = threading.Lock()

    def one(sha256: str) -> None:
        path = store.layout.blob(sha256)
        if not store.layout.present(path) or cache.exists(blob_name(sha256)):
            with counting:
                result.present += 1
            return
        try:
            verify_blob(store, sha256)
        except EntryDamage as exc:
            with counting:
                result.damaged.append(f"the model file {sha256}, which is damaged (it "
                                      f"{exc})")
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


def refusal(*results: Pushed) -> GpulockError | None:
    """The error a push ends with when it skipped something damaged, or None."""
    damaged = sorted(problem for result in results for problem in result.damaged)
    if not damaged:
        return None
    more = f", and {len(damaged) - 1} more damaged," if len(damaged) > 1 else ""
    return GpulockError(f"push skipped {damaged[0]}{more}: nothing of it was signed or "
                        "uploaded; run 'gpulock verify --repair', then push again")


def _push_entry(store: Store, cache: Substituter, key: SecretKey, entry_key: str,
                http: Http) -> int:
    name, version = entry_key.split("-", 1)[1].rsplit("-", 1)
    label = f"{name} {version} ({entry_key})"
    try:  # first: a manifest that cannot be read is damage too, not the end of the push
        records = verified_records(store, entry_key)
        entry = store.entry(entry_key)  # checked again: what is pushed is what is read now
    except EntryDamage as exc:
        raise EntryDamage(f"{label}, which is damaged ({exc})") from None
    except DamagedEntry as exc:
        raise EntryDamage(f"{label}, which is damaged ({exc.why})") from None
    work = store.work_dir("push")
    try:
        wheel, sha256, size = _packed(store, entry, label, records, work, http)
        record = CacheRecord(entry_key, entry.name, entry.version, wheel.name, sha256,
                             size).signed(key)
        if not cache.exists(wheel_name(record)):
            cache.upload(wheel_name(record), wheel)
        signed = work / "record.json"
        signed.write_bytes(record.to_json())
        cache.upload(record_name(entry_key), signed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return size


def _packed(store: Store, entry: Entry, label: str, records: list[Record], work: Path,
            http: Http) -> tuple[Path, str, int]:
    """The entry's wheel, copied into `work` and hashed as it was copied: (path, sha256,
    size), refused unless the hash is the one the entry records for it."""
    from gpulock.store.fetch import discard, fetch

    fetched = None
    if entry.built is not None:
        relative = f"built/{entry.built[0]}"
        source = entry.path / relative
        # The record verify just checked the file (and the manifest's hash) against.
        expected = next(((r.sha256, r.size) for r in records if r.path == relative), None)
    else:
        ref = entry.origin
        if ref is None:
            raise GpulockError(f"{label}: the entry keeps no wheel to push (an older gpulock "
                               "built it); remove it and sync again")
        source = fetched = fetch(ref, label, store.layout, http)
        expected = ref.sha256, ref.size
    try:
        wheel = Layout.named(work, source.name, "a wheel's filename")
        with open_file(source) as handle:
            copied = copy_hashed(handle, wheel)
    finally:
        if fetched is not None:
            discard(store.layout, fetched)
    if copied != expected:
        recorded = f"recorded {expected[0]} ({expected[1]} bytes)" if expected else "unrecorded"
        raise EntryDamage(f"{label}, whose wheel changed while it was pushed (it has sha256 "
                          f"{copied[0]} ({copied[1]} bytes), {recorded})")
    return wheel, *copied
