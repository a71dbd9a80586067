"""`ref://<project>/<model>`: the files another project on the same store pinned (seed
001's REFERENCE to a shared dataset). Pinned from that project's last sync, as the store
records it, so the lock holds the same files and hashes and sync downloads nothing while
the store has their blobs; a blob gone since is fetched from the source at the end of the
chain of refs (a project may reference one that references another).

A chain that comes back to a model it passed (a project referencing its own model, two
referencing each other) has no source at all: its files exist only as the store's blobs.
Refs are followed in a loop with the refs passed so far, so such a chain is one sentence
naming it, never a recursion; a lock refuses to pin one and a sync to record one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
        from gpulock.models.fetch import fetch_blob

        *_, other = _hops(store, model.name, model.source)
        same = next((f for f in other.files if f.etag == file.etag), None)
        if same is None:
            raise GpulockError(f"model '{model.name}': {model.source} no longer pins "
                               f"{file.path}; lock this project again")
        blob = fetch_blob(store, other, same)
        with blob.open("rb") as source, target.open("xb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)


class RefCycleError(GpulockError):
    """A chain of ref:// sources that comes back to a model it passed."""


def refuse_cycles(store: Store, project: str, models: Iterable[Model | PinnedModel]) -> None:
    """Refuse `project`'s ref:// models whose chain leads back to one of its own models (or
    into any cycle) before a lock pins them or a sync records them as the project's root.
    A link the store cannot follow (a project that synced no such model) ends the chain
    here: pin and fetch say what is wrong with it when they need it."""
    for model in models:
        if model.source.startswith("ref://"):
            try:
                for _ in _hops(store, model.name, model.source,
                               start=f"ref://{project}/{model.name}"):
                    pass
            except RefCycleError:
                raise
            except GpulockError:
                continue


def _hops(store: Store, name: str, source: str, start: str | None = None
          ) -> Iterator[PinnedModel]:
    """The pins along `source`'s chain of refs, first hop first, the last one's source not
    a ref (`start`, the asking model's own ref, counts as passed already)."""
    passed = [start] if start else []
    while source.startswith("ref://"):
        if source in passed:
            cycle = " -> ".join([*passed[passed.index(source):], source])
            raise RefCycleError(f"model '{name}': the ref:// sources {cycle} lead back to "
                                "themselves, so no source holds their files; point one of "
                                "them at where the files come from and sync that project")
        passed.append(source)
        other = referenced(store, name, source)
        yield other
        source = other.source


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
