"""`gpulock sync` for models: each pinned file into the blob store unless it is there (from a
binary cache first when there is one, else from its source: gpulock.sources), then each
model's view laid out by its source. Every file is verified against the lock before it is
published."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpulock.errors import GpulockError, HashMismatchError
from gpulock.models.blobs import hash_part, publish, stored_blob
from gpulock.pins import ModelFile, PinnedModel
from gpulock.sources import kind_of
from gpulock.store import Store

if TYPE_CHECKING:
    from gpulock.store.substituters.pull import Substitutes

Log = Callable[[str], None]


def sync_models(store: Store, project: str, models: list[PinnedModel], log: Log,
                jobs: int = 8, substitutes: Substitutes | None = None) -> tuple[int, int]:
    """Fetch what the store lacks (from a binary cache first, when there is one) and lay
    out the views; return (files fetched, bytes)."""
    found, count, size = fetch_missing(store, models, log, jobs, substitutes)
    for model in models:
        blobs = {f.path: found[str(f.etag)] for f in model.files}
        kind_of(model.source).lay_out(store, project, model, blobs)
    return count, size


def fetch_missing(store: Store, models: list[PinnedModel], log: Log, jobs: int = 8,
                  substitutes: Substitutes | None = None
                  ) -> tuple[dict[str, Path], int, int]:
    """Every pinned file's blob by its etag, fetching those the store lacks; with the
    count and bytes fetched."""
    from concurrent.futures import ThreadPoolExecutor

    # One download per distinct content: a file two repos share is fetched once.
    work: dict[str, tuple[PinnedModel, ModelFile]] = {}
    found: dict[str, Path] = {}
    for model in models:
        for file in model.files:
            key = str(file.etag)
            blob = stored_blob(store, file)
            if blob is not None:
                found[key] = blob
            elif key not in work:
                work[key] = (model, file)
    total = sum(f.size for _, f in work.values())
    if work:
        log(f"Fetching {len(work)} model files ({total / 2**20:.1f} MiB)")

        def fetch(key: str) -> None:
            model, file = work[key]
            # Parallelism is a budget: a lone 10 GB file gets all of it as ranges, files
            # that already fill the pool get one stream each (more only adds contention).
            try:
                cached = _from_cache(store, model, file, substitutes) if substitutes else None
                found[key] = cached or kind_of(model.source).fetch(
                    store, model, file, max(1, jobs // len(work)))
            except OSError as exc:
                raise GpulockError(f"model '{model.name}': {file.path} could not be written "
                                   f"into {store.tmp}: {exc.strerror}; nothing partial is "
                                   "visible in the caches, and the next sync resumes it"
                                   ) from None

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(fetch, list(work)))
    return found, len(work), total


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
        return publish(store, model, file, cache, part, hash_part(part, file), resumed=False)
    except HashMismatchError as exc:
        substitutes.log(f"warning: refused {label} from {cache}: {exc}")
        return None
    finally:
        shutil.rmtree(part.parent, ignore_errors=True)
