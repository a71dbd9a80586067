"""Model sources beyond the hubs: each pins a model to exact files at lock time and brings
one file's bytes to sync, and is one module registered here by its scheme.

    file:///mnt/nfs/x, /mnt/nfs/x    a folder or file already mounted (PVC, NFS)   local.py
    s3://bucket/path/?endpoint=...   a folder (prefix) or one object               s3.py
    git+https://host/repo.git@rev    a repository at a commit (git+file:// too)    git.py
    ref://<project>/<model>          what another project on the store pinned      ref.py

Hugging Face, ModelScope and https:// keep their own paths through gpulock.models and
gpulock.models.views. Whatever a source returns is a `PinnedModel` that `PinnedModel.problem()`
checks before anything is written; whatever bytes it brings are hashed against the lock
before they become a blob, so a source never decides what the store holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from gpulock.manifest import Model
    from gpulock.models import ModelFile, PinnedModel
    from gpulock.store import Store

SCHEMES = ("file://", "/", "s3://", "git+https://", "git+http://", "git+file://", "ref://")


class ModelSource(Protocol):
    """One kind of model source."""

    def problem(self, source: str) -> str | None:
        """What is wrong with a manifest's source string of this kind, or None."""
        ...

    def pin(self, model: Model, store: Store) -> PinnedModel:
        """The model pinned to exact files (path, size, sha256) as the source holds it now;
        `store` is the one the project syncs into (ref:// reads other projects' pins there)."""
        ...

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
        """Write the pinned file's bytes to the new file `target` (the caller checks them)."""
        ...


def source_for(source: str) -> ModelSource | None:
    """The source kind for a model's source string; None for the hubs and https://."""
    if source.startswith(("file://", "/")):
        from gpulock.sources.local import LocalSource

        return LocalSource()
    if source.startswith("s3://"):
        from gpulock.sources.s3 import S3Source

        return S3Source()
    if source.startswith(("git+https://", "git+http://", "git+file://")):
        from gpulock.sources.git import GitModelSource

        return GitModelSource()
    if source.startswith("ref://"):
        from gpulock.sources.ref import RefSource

        return RefSource()
    return None


def select(model: Model, paths: list[str]) -> list[str]:
    """The paths the model's include / exclude globs choose (the hubs' own rules)."""
    from types import SimpleNamespace

    from gpulock.models import chosen_files

    listed = [SimpleNamespace(path=path) for path in paths]
    return [f.path for f in chosen_files(model, listed, f"model '{model.name}'")]


def pinned_file(path: str, local: Path) -> ModelFile:
    """The model file `path`, pinned by the sha256 and size of its bytes at `local`."""
    from gpulock.digests import hash_file
    from gpulock.models import ModelFile

    sha256, size = hash_file(local)
    return ModelFile(path=path, size=size, sha256=sha256)


def pinned_below(model: Model, root: Path, path: str, where: str) -> ModelFile:
    """The model file `path` below the folder `root` (a checkout, a share: `where` in
    words), pinned by its bytes, read as a regular file through real folders only."""
    from gpulock.digests import hash_stream
    from gpulock.models import ModelFile

    with _opened(model, root, path, where) as handle:
        sha256, size = hash_stream(handle)
    return ModelFile(path=path, size=size, sha256=sha256)


def copy_below(model: PinnedModel, root: Path, file: ModelFile, target: Path,
               where: str) -> None:
    """The pinned `file` below the folder `root` (`where` in words) copied into the new file
    `target`: read as a regular file through real folders only, and no more than one byte
    past the pinned size (the caller's hash check names a larger file)."""
    left = file.size + 1
    with _opened(model, root, file.path, where) as handle, target.open("xb") as out:
        while left > 0 and (chunk := handle.read(min(left, 1 << 20))):
            out.write(chunk)
            left -= len(chunk)


@contextmanager
def _opened(model: Model | PinnedModel, root: Path, path: str, where: str
            ) -> Iterator[BinaryIO]:
    from gpulock.errors import GpulockError
    from gpulock.safeopen import Unsafe, open_regular

    try:
        with open_regular(root, path) as handle:
            yield handle
    except Unsafe as exc:
        raise GpulockError(f"model '{model.name}': {path} in {where} is refused: {exc} "
                           "(gpulock reads regular files only, through no link)") from None
