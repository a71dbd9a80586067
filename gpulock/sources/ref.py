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

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpulock.errors import GpulockError
from gpulock.names import name_problem
from gpulock.pins import ModelFile, ModelRequest, PinnedModel, model_from_table
from gpulock.sources.files import FileSource

if TYPE_CHECKING:
    from gpulock.store import Store

# What the registry lends this source (gpulock.sources): a pin checked by the rules of its
# own source, and the blob of a pinned file fetched from wherever its pin says.
Checked = Callable[[PinnedModel, str], PinnedModel]
Fetch = Callable[["Store", PinnedModel, ModelFile, int], Path]


def parts(source: str) -> tuple[str, str]:
    """The project and model a `ref://` source names."""
    project, _, model = source.removeprefix("ref://").partition("/")
    return project, model


class RefSource(FileSource):
    """Another project's pinned model."""

    prefixes = ("ref://",)
    named = "ref://"
    git_ids = True  # the referenced pin's files, hub ones by their git blob id too

    def __init__(self, checked: Checked, fetch_blob: Fetch) -> None:
        self.checked, self.fetch_blob = checked, fetch_blob

    def problem(self, source: str) -> str | None:
        """What is wrong with the project or model name, or None."""
        project, model = parts(source)
        for what, name in (("project", project), ("model", model)):
            if problem := name_problem(name):
                return f"names a {what} {name!r} that {problem} (ref://<project>/<model>)"
        return None

    def pin(self, model: ModelRequest, store: Store) -> PinnedModel:
        """The files the other project's last sync pinned, as it pinned them."""
        other = self.referenced(store, model.name, model.source)
        return PinnedModel(name=model.name, source=model.source, revision=None,
                           commit=other.commit, include=(), exclude=(), files=other.files,
                           weights=other.weights, extract=model.extract)

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, streams: int) -> Path:
        """The file's blob, fetched by the source at the end of the chain of refs, which
        checks it against the same hash (the ref pinned that file's own)."""
        from gpulock.models.blobs import stored_blob

        blob = stored_blob(store, file)
        if blob is not None:
            return blob
        *_, other = self.hops(store, model.name, model.source)
        same = next((f for f in other.files if f.etag == file.etag), None)
        if same is None:
            raise GpulockError(f"model '{model.name}': {model.source} no longer pins "
                               f"{file.path}; lock this project again")
        return self.fetch_blob(store, other, same, streams)

    def refuse_cycles(self, store: Store, project: str,
                      models: Iterable[ModelRequest | PinnedModel]) -> None:
        """Refuse `project`'s ref:// models whose chain leads back to one of its own models
        (or into any cycle) before a lock pins them or a sync records them as the project's
        root. A link the store cannot follow (a project that synced no such model) ends the
        chain here: pin and fetch say what is wrong with it when they need it."""
        for model in models:
            if model.source.startswith(self.prefixes):
                try:
                    for _ in self.hops(store, model.name, model.source,
                                       start=f"ref://{project}/{model.name}"):
                        pass
                except RefCycleError:
                    raise
                except GpulockError:
                    continue

    def hops(self, store: Store, name: str, source: str, start: str | None = None
             ) -> Iterator[PinnedModel]:
        """The pins along `source`'s chain of refs, first hop first, the last one's source
        not a ref (`start`, the asking model's own ref, counts as passed already)."""
        passed = [start] if start else []
        while source.startswith(self.prefixes):
            if source in passed:
                cycle = " -> ".join([*passed[passed.index(source):], source])
                raise RefCycleError(f"model '{name}': the ref:// sources {cycle} lead back to "
                                    "themselves, so no source holds their files; point one "
                                    "of them at where the files come from and sync that "
                                    "project")
            passed.append(source)
            other = self.referenced(store, name, source)
            yield other
            source = other.source

    def referenced(self, store: Store, name: str, source: str) -> PinnedModel:
        """The model `source` names, as its project's last sync on the store pinned it,
        checked by the rules of its own source."""
        from gpulock.store import roots

        project, model = parts(source)
        recorded = roots.project_models(store, project)
        if recorded is None:
            raise GpulockError(f"model '{name}': {source} names project '{project}', which "
                               f"has synced no models into the store {store.root}")
        for entry in recorded:
            if isinstance(entry, dict) and entry.get("name") == model:
                where = f"{source} in {store.root}"
                return self.checked(model_from_table(entry, where), where)
        raise GpulockError(f"model '{name}': project '{project}' has no model '{model}' in "
                           f"the store {store.root}")


class RefCycleError(GpulockError):
    """A chain of ref:// sources that comes back to a model it passed."""
