"""Model sources: each kind pins a model to exact files at lock time, brings a pinned file's
bytes into the blob store at sync, lays out the view its clients read, and tells gc which
of its views are live and verify what is wrong with them. One module per kind, registered
here by scheme, in one list:

    hf://org/name, hf://datasets/org/name  a Hugging Face repository  hf.py    hf/ (HF_HUB_CACHE)
    ms://owner/name                 a ModelScope repository      ms.py     modelscope/<project>/
    https://host/file (http://)     one file from a web server   https.py  files/<project>/<model>
    s3://bucket/path/?endpoint=...  a prefix or one object       s3.py     files/...
    git+https://host/repo.git@rev   a repository at a commit     git.py    files/...
    file:///mnt/nfs/x, /mnt/nfs/x   a mounted folder or file     local.py  files/...
    ref://<project>/<model>         another project's pin        ref.py    files/...

Whatever a source pins is checked by `PinnedModel.problem` against the general rules and
its own kind's (`checked`, `pin`) before anything is written; whatever bytes it brings are
hashed against the lock before they become a blob, so a source never decides what the
store holds. What the kinds share is in files.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gpulock.credentials import shown
from gpulock.errors import GpulockError, LockfileError
from gpulock.pins import ModelFile, ModelRequest, PinnedModel, SourceRules, model_from_table
from gpulock.sources.git import GitModelSource
from gpulock.sources.hf import HfSource
from gpulock.sources.https import HttpsSource
from gpulock.sources.local import LocalSource
from gpulock.sources.ms import MsSource
from gpulock.sources.ref import RefSource
from gpulock.sources.s3 import S3Source

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gpulock.sources.files import Remove
    from gpulock.store import Store


class ModelSource(SourceRules, Protocol):
    """One kind of model source."""

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The schemes (or `/`) its source strings start with."""
        ...

    @property
    def named(self) -> str:
        """How a message names them: the ones a manifest is told to use."""
        ...

    @property
    def default_revision(self) -> str | None:
        """What a model that names no revision follows."""
        ...

    def pin(self, model: ModelRequest, store: Store) -> PinnedModel:
        """The model pinned to exact files (path, size, hash) as the source holds it now;
        `store` is the one the project syncs into (ref:// reads other projects' pins there)."""
        ...

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, streams: int) -> Path:
        """The pinned file's blob in the store, brought from the source and checked against
        the lock when the store lacks it; a large file may come over `streams` connections."""
        ...

    def cache(self, store: Store, project: str) -> Path:
        """The folder the project's models of this kind are laid out in."""
        ...

    def exports(self, store: Store, project: str) -> dict[str, str]:
        """The variables that point a process at `cache` (`gpulock env`)."""
        ...

    def view(self, store: Store, project: str, model: PinnedModel) -> Path:
        """Where the synced model's files are."""
        ...

    def lay_out(self, store: Store, project: str, model: PinnedModel,
                blobs: dict[str, Path]) -> None:
        """Lay out the model's view of its files' `blobs` (path -> blob)."""
        ...

    def collect(self, store: Store, pinned: list[PinnedModel], remove: Remove) -> None:
        """Remove (through `remove`) the views of its kind that none of `pinned` needs."""
        ...

    def damage(self, store: Store) -> list[tuple[Path, str]]:
        """What is wrong with the files of its views that its clients read as an index and
        trust, as (path, problem): for verify, which only reads."""
        ...


def source_for(source: str) -> ModelSource | None:
    """The kind of source a source string names, or None when gpulock reads no such kind."""
    return next((kind for kind in SOURCES if source.startswith(kind.prefixes)), None)


def kind_of(source: str) -> ModelSource:
    """The kind of a source that was checked when it was read (a manifest, a lock, a root)."""
    kind = source_for(source)
    if kind is None:
        raise GpulockError(f"{shown(source)!r} is not a model source gpulock reads")
    return kind


def requested_revision(model: ModelRequest) -> str | None:
    """The revision a model asks for; hub repositories follow their default branch."""
    kind = source_for(model.source)
    return model.revision or (kind.default_revision if kind else None)


def checked(pinned: PinnedModel, where: str) -> PinnedModel:
    """`pinned`, read from `where` (a lock, a GC root), refused in one sentence when it
    breaks a rule of its own kind of source or the general ones."""
    problem = pinned.problem(source_for(pinned.source) or _UNKNOWN)
    if problem:
        raise LockfileError(f"{where}: model {pinned.name!r} {problem}; it was refused before "
                            "anything was written (run 'gpulock lock' to rewrite the lock)")
    return pinned


def model_roots(store: Store, running: Iterable[object] = ()) -> list[PinnedModel]:
    """The pins each project's last sync laid out (roots/models/), and those of `running`
    syncs, typed and checked: what gc keeps and verify expects the store to hold. A root
    that breaks a rule stops the reader, never counts as pinning nothing."""
    from gpulock.store import roots

    where = "a model root"
    return [checked(model_from_table(entry, where), where)
            for entry in [*roots.model_roots(store), *running]]


def pin(model: ModelRequest, store: Store) -> PinnedModel:
    """Pin a manifest's model to exact files; refuse what a hub or server answered when a
    file name, commit or hash could not be laid out safely in a store."""
    kind = kind_of(model.source)
    pinned = kind.pin(model, store)
    problem = pinned.problem(kind)
    if problem:
        where = f"model '{model.name}' ({model.source}@{pinned.revision})" if pinned.revision \
            else f"model '{model.name}' ({model.source})"
        raise GpulockError(f"{where}: refused, as what the server answered {problem}; "
                           "nothing was pinned")
    return pinned


def fetch_blob(store: Store, model: PinnedModel, file: ModelFile, streams: int = 1) -> Path:
    """One pinned file's blob, fetched from the model's source when the store lacks it (a
    large one over up to `streams` connections)."""
    return kind_of(model.source).fetch(store, model, file, streams)


def refuse_cycles(store: Store, project: str,
                  models: Iterable[ModelRequest | PinnedModel]) -> None:
    """Refuse `project`'s ref:// models whose chain of refs leads back into itself."""
    _REF.refuse_cycles(store, project, models)


class _Unknown:
    """The rules of a source no kind reads: every pin of it is refused."""

    commits = git_ids = one_file = False

    def problem(self, source: str) -> str | None:
        return f"is not {SCHEMES}"

    def revision_problem(self, revision: str) -> str | None:
        return None


_UNKNOWN = _Unknown()
_REF = RefSource(checked, fetch_blob)
# The one list of model sources, in the order their schemes are tried and named.
SOURCES: tuple[ModelSource, ...] = (HfSource(), MsSource(), HttpsSource(), S3Source(),
                                    GitModelSource(), LocalSource(), _REF)
SCHEMES = ", ".join(kind.named for kind in SOURCES[:-1]) + f" or {SOURCES[-1].named}"
