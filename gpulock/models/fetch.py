"""Pinned model files into the blob store, from wherever the lock says they come from: a
binary cache first when there is one, then the hub or URL over HTTP, or a source of
another kind (gpulock.sources) through its own fetch. Every file is verified against the
lock before it is published."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from gpulock.errors import GpulockError, HashMismatchError
from gpulock.models import ModelFile, PinnedModel
from gpulock.models.blobs import hash_part, publish, stored_blob
from gpulock.models.hub import HubRepo, hf_endpoint
from gpulock.store import Store

if TYPE_CHECKING:
    from gpulock.store.substituters.pull import Substitutes

Log = Callable[[str], None]


def fetch_missing(store: Store, models: list[PinnedModel], log: Log, jobs: int = 8,
                  substitutes: Substitutes | None = None
                  ) -> tuple[dict[str, Path], int, int]:
    """Every pinned file's blob by its etag, fetching those the store lacks; with the
    count and bytes fetched."""
    from concurrent.futures import ThreadPoolExecutor

    endpoint = hf_endpoint()
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
    total = sum(f.size for _, f, _ in work.values())
    if work:
        log(f"Fetching {len(work)} model files ({total / 2**20:.1f} MiB)")

        def fetch(key: str) -> None:
            model, file, url = work[key]
            # Parallelism is a budget: a lone 10 GB file gets all of it as ranges, files
            # that already fill the pool get one stream each (more only adds contention).
            try:
                cached = _from_cache(store, model, file, substitutes) if substitutes else None
                found[key] = cached or _fetch(store, model, file, url,
                                              streams=max(1, jobs // len(work)))
            except OSError as exc:
                raise GpulockError(f"model '{model.name}': {file.path} could not be written "
                                   f"into {store.tmp}: {exc.strerror}; nothing partial is "
                                   "visible in the caches, and the next sync resumes it"
                                   ) from None

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(fetch, list(work)))
    return found, len(work), total


def fetch_blob(store: Store, model: PinnedModel, file: ModelFile) -> Path:
    """Download one pinned file into the blob store (used by `verify --repair`)."""
    return _fetch(store, model, file, _url(model, file, hf_endpoint()))


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


def _fetch(store: Store, model: PinnedModel, file: ModelFile, url: str, streams: int = 1
           ) -> Path:
    """One pinned file into the blob store from its source: a hub or https:// over HTTP,
    another kind (gpulock.sources) through its own fetch; verified against the lock."""
    from gpulock.sources import source_for

    kind = source_for(model.source)
    if kind is None:
        from gpulock.models.download import download

        return download(store, model, file, url, _auth(model), streams)
    blob = stored_blob(store, file)
    if blob is not None:
        return blob
    work = store.work_dir(f"source-{model.name}")
    try:
        part = work / "file"
        kind.fetch(store, model, file, part)
        from gpulock.credentials import redact

        return publish(store, model, file, redact(model.source), part, hash_part(part, file),
                       resumed=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _auth(model: PinnedModel) -> dict[str, str]:
    """Tokens come from the environment only, and go only to their own hub."""
    if model.source.startswith("hf://"):
        token = os.environ.get("HF_TOKEN")
    elif model.source.startswith("ms://"):
        token = os.environ.get("MODELSCOPE_API_TOKEN")
    else:
        token = None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _url(model: PinnedModel, file: ModelFile, endpoint: str) -> str:
    if model.source.startswith("hf://"):
        return HubRepo.of(model.source).url(endpoint, model.commit or "", file.path)
    if model.source.startswith("ms://"):
        from gpulock.models import modelscope_endpoint

        repo = model.source.removeprefix("ms://")
        return (f"{modelscope_endpoint()}/api/v1/models/{repo}/repo?"
                f"Revision={quote(model.revision or 'master')}&FilePath={quote(file.path)}")
    return model.source
