"""Taking store entries from binary caches before downloading or building them."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from gpulock.digests import hash_file
from gpulock.pins import LockedPackage
from gpulock.signing import PublicKey
from gpulock.store import Store
from gpulock.store.layout import Layout
from gpulock.store.substituters.backend import CacheError, CacheUnreachable, Substituter
from gpulock.store.substituters.record import (
    RECORD_LIMIT,
    RecordError,
    blob_name,
    parse,
    record_name,
    refusal,
    wheel_name,
)

Log = Callable[[str], None]


class Substitutes:
    """The caches a sync asks, in order, and the keys it trusts."""

    def __init__(self, caches: Sequence[Substituter], trusted: Sequence[PublicKey],
                 log: Log) -> None:
        self.caches = list(caches)
        self.trusted = list(trusted)
        self.log = log
        self.taken = 0
        self._gone: set[int] = set()  # caches that stalled or could not be reached
        self._going = threading.Lock()

    def take(self, package: LockedPackage, key: str, store: Store,
             progress: Callable[[int], None] | None = None) -> Path | None:
        """The entry's wheel from the first cache that has it and passes every check, in a
        folder of this writer's under tmp/ (see fetch.discard); None when no cache does.

        A record or wheel that fails a check is refused, said once, and never stored; the
        next cache, then the index or a build, is tried instead."""
        label = f"{package.name} {package.version}"
        for cache in self._asked():
            try:
                wheel = self._from(cache, package, key, store, progress)
            except (CacheError, RecordError) as exc:
                self._refused(cache, label, exc)
                continue
            if wheel is not None:
                self.taken += 1
                return wheel
        return None

    def blob(self, label: str, sha256: str, size: int, store: Store
             ) -> tuple[Path, str] | None:
        """A model file pinned by `sha256` from the first cache that has it, in a folder of
        this writer's under tmp/, with the cache's URL; the caller checks its bytes against
        the lock before it becomes a blob (and removes the folder)."""
        for cache in self._asked():
            work = store.work_dir("substitute-blob")
            try:
                target = work / "blob"
                if cache.download(blob_name(sha256), target, size):
                    self.taken += 1
                    return target, cache.url
            except (CacheError, RecordError) as exc:
                self._refused(cache, label, exc)
            shutil.rmtree(work, ignore_errors=True)
        return None

    def _asked(self) -> list[Substituter]:
        return [cache for cache in self.caches if id(cache) not in self._gone]

    def _refused(self, cache: Substituter, label: str, exc: Exception) -> None:
        """Say in one line why `cache` gave nothing for `label`. A cache that stalled or
        could not be reached is not asked again in this sync: every entry would wait out
        the same stall before the index is tried."""
        dropped = ""
        if isinstance(exc, CacheUnreachable):
            with self._going:
                if id(cache) not in self._gone:
                    self._gone.add(id(cache))
                    dropped = "; it is not asked again in this sync"
        self.log(f"warning: refused {label} from {cache.url}: {exc}{dropped}")

    def _from(self, cache: Substituter, package: LockedPackage, key: str, store: Store,
              progress: Callable[[int], None] | None) -> Path | None:
        raw = cache.read(record_name(key), RECORD_LIMIT)
        if raw is None:
            return None
        record = parse(raw, key)
        problem = refusal(record, package, self.trusted)
        if problem:
            raise RecordError(problem)
        work = store.work_dir(f"substitute-{package.name}")
        try:
            target = Layout.named(work, record.filename, "a wheel's filename")
            if not cache.download(wheel_name(record), target, record.size, progress):
                raise RecordError(f"its record is there but its wheel {wheel_name(record)} "
                                  "is not")
            sha256, size = hash_file(target)
            if (sha256, size) != (record.sha256, record.size):
                raise RecordError(f"its wheel has sha256 {sha256} ({size} bytes), but its "
                                  f"signed record says {record.sha256} ({record.size} bytes)")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return target

