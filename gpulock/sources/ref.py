"""`ref://<project>/<model>`: the files another project on the same store pinned (seed
001's REFERENCE to a shared dataset). Pinned from that project's last sync, as the store
records it, so the lock holds the same files and hashes and sync downloads nothing while
the store has their blobs; a blob gone since is fetched from the other model's source."""

from __future__ import annotations

from pathlib import Path

from gpulock.errors import GpulockError
from gpulock.manifest import Model
from gpulock.models import ModelFile, PinnedModel, from_dict
from gpulock.store import Store
from gpulock.store.names import name_problem


def parts(source: str) -> tuple[str, str]:
    project, _, model = source.removeprefix("ref://").partition("/")
    return project, model


class RefSource:
    """Another project's pinned model."""

    def problem(self, source: str) -> str | None:
        project, model = parts(source)
        for what, name in (("project", project), ("model", model)):
            if problem := name_problem(name):
                return f"names a {what} {name!r} that {problem} (ref://<project>/<model>)"
        return None

    def pin(self, model: Model, store: Store) -> PinnedModel:
        other = referenced(store, model.name, model.source)
        return PinnedModel(name=model.name, source=model.source, revision=None,
                           commit=other.commit, include=(), exclude=(), files=other.files,
                           weights=other.weights, extract=model.extract)

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
        from gpulock.models.views import fetch_blob

        other = referenced(store, model.name, model.source)
        same = next((f for f in other.files if f.etag == file.etag), None)
        if same is None:
            raise GpulockError(f"model '{model.name}': {model.source} no longer pins "
                               f"{file.path}; lock this project again")
        blob = fetch_blob(store, other, same)
        with blob.open("rb") as source, target.open("xb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)


def referenced(store: Store, name: str, source: str) -> PinnedModel:
    """The model `source` names, as its project's last sync on the store pinned it."""
    from gpulock.store import roots

    project, model = parts(source)
    recorded = roots.project_models(store, project)
    if recorded is None:
        raise GpulockError(f"model '{name}': {source} names project '{project}', which has "
                           f"synced no models into the store {store.root}")
    for entry in recorded:
        if isinstance(entry, dict) and entry.get("name") == model:
            return from_dict(entry, f"{source} in {store.root}")
    raise GpulockError(f"model '{name}': project '{project}' has no model '{model}' in the "
                       f"store {store.root}")
