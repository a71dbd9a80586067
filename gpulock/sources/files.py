"""What the model sources share: choosing files by include / exclude, pinning a file by its
bytes, reading one from a folder through real folders only, a hub's listing checked, and
`FileSource`, the kind whose models are plain files: `files/<project>/<model>/`, or the
tree one archive unpacks to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from gpulock.errors import GpulockError
from gpulock.names import revision_problem
from gpulock.pins import ModelFile, ModelRequest, PinnedModel

if TYPE_CHECKING:
    from gpulock.store import Store


class FileSource:
    """A source whose models are laid out as plain files (every kind but the two hubs'):
    `write` brings one file's bytes, the rest is shared."""

    prefixes: tuple[str, ...] = ()
    named = ""
    default_revision: str | None = None
    commits = False
    git_ids = False
    one_file = False

    def revision_problem(self, revision: str) -> str | None:
        """What is wrong with a revision a model of this kind asks for, or None."""
        return revision_problem(revision)

    def write(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
        """Write the pinned file's bytes to the new file `target` (the caller checks them)."""
        raise NotImplementedError

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, streams: int) -> Path:
        """The pinned file's blob: written by `write`, published once its bytes are the
        lock's."""
        import shutil

        from gpulock.credentials import redact
        from gpulock.models.blobs import hash_part, publish, stored_blob

        blob = stored_blob(store, file)
        if blob is not None:
            return blob
        work = store.work_dir(f"source-{model.name}")
        try:
            part = work / "file"
            self.write(store, model, file, part)
            return publish(store, model, file, redact(model.source), part,
                           hash_part(part, file), resumed=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def cache(self, store: Store, project: str) -> Path:
        """The folder the project's models of this kind are laid out in."""
        return store.layout.file_cache(project)

    def exports(self, store: Store, project: str) -> dict[str, str]:
        """`$GPULOCK_FILES/<model>/<file>`, or the extracted tree itself."""
        return {"GPULOCK_FILES": str(self.cache(store, project))}

    def view(self, store: Store, project: str, model: PinnedModel) -> Path:
        """Where the synced model's files are: `files/<project>/<model>`."""
        return store.layout.file_view(project, model.name)

    def lay_out(self, store: Store, project: str, model: PinnedModel,
                blobs: dict[str, Path]) -> None:
        """Link each file to its blob (or the folder to its extracted tree)."""
        from gpulock.models.views import file_view

        file_view(store, self.view(store, project, model), model, blobs)

    def collect(self, store: Store, pinned: list[PinnedModel], remove: Remove) -> None:
        """Plain views need no collecting of their own: gc drops their dangling links."""

    def damage(self, store: Store) -> list[tuple[Path, str]]:
        """Plain views hold no index: verify checks their links as every view's."""
        return []


class Remove(Protocol):
    """What gc hands a source to collect its views with: `remove(path, label)` removes a
    path (never following it) and says so when labelled; in a dry run it only counts."""

    dry_run: bool

    def __call__(self, path: Path, label: str | None = None) -> bool: ...


def select(model: ModelRequest, paths: list[str]) -> list[str]:
    """The paths the model's include / exclude globs choose (the hubs' own rules)."""
    from types import SimpleNamespace

    listed = [SimpleNamespace(path=path) for path in paths]
    return [f.path for f in chosen_files(model, listed, f"model '{model.name}'")]


def chosen_files(model: ModelRequest, files: list[Any], where: str) -> list[Any]:
    """The repository files `include` / `exclude` select, by huggingface_hub's own rules."""
    from huggingface_hub.utils import filter_repo_objects

    chosen = list(filter_repo_objects(files, allow_patterns=list(model.include) or None,
                                      ignore_patterns=list(model.exclude) or None,
                                      key=lambda f: f.path))
    if not chosen:
        raise GpulockError(f"{where}: no file matches include={list(model.include)} "
                           f"exclude={list(model.exclude)}")
    return chosen


def check_listing(where: str, files: list[tuple[object, object, object]]) -> None:
    """Refuse a hub's listing whose paths, sizes or hashes have types no hub sends, or that
    names a path twice (a pagination that loops)."""
    seen: set[object] = set()
    for path, size, digest in files:
        if not (isinstance(path, str) and isinstance(size, int) and not isinstance(size, bool)
                and (digest is None or isinstance(digest, str))):
            raise GpulockError(f"{where}: the hub listed a file as {path!r:.200} of size "
                               f"{size!r:.40}, which is not a file listing; nothing was pinned")
        if path in seen:
            raise GpulockError(f"{where}: the hub listed {path!r} twice; nothing was pinned")
        seen.add(path)


def pinned_file(path: str, local: Path) -> ModelFile:
    """The model file `path`, pinned by the sha256 and size of its bytes at `local`."""
    from gpulock.digests import hash_file

    sha256, size = hash_file(local)
    return ModelFile(path=path, size=size, sha256=sha256)


def pinned_below(model: ModelRequest, root: Path, path: str, where: str) -> ModelFile:
    """The model file `path` below the folder `root` (a checkout, a share: `where` in
    words), pinned by its bytes, read as a regular file through real folders only."""
    from gpulock.digests import hash_stream

    with _opened(model.name, root, path, where) as handle:
        sha256, size = hash_stream(handle)
    return ModelFile(path=path, size=size, sha256=sha256)


def copy_below(model: PinnedModel, root: Path, file: ModelFile, target: Path,
               where: str) -> None:
    """The pinned `file` below the folder `root` (`where` in words) copied into the new file
    `target`: read as a regular file through real folders only, and no more than one byte
    past the pinned size (the caller's hash check names a larger file)."""
    left = file.size + 1
    with _opened(model.name, root, file.path, where) as handle, target.open("xb") as out:
        while left > 0 and (chunk := handle.read(min(left, 1 << 20))):
            out.write(chunk)
            left -= len(chunk)


@contextmanager
def _opened(name: str, root: Path, path: str, where: str) -> Iterator[BinaryIO]:
    from gpulock.safeopen import Unsafe, open_regular

    try:
        with open_regular(root, path) as handle:
            yield handle
    except Unsafe as exc:
        raise GpulockError(f"model '{name}': {path} in {where} is refused: {exc} "
                           "(gpulock reads regular files only, through no link)") from None
