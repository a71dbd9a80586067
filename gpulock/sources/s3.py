"""`s3://bucket/path/?endpoint=...`: a folder (every object under the prefix) or one
object, in AWS S3 or MinIO-likes; credentials from the usual AWS variables or profile.
Pinned by each object's size and the sha256 of its bytes (read once at lock time: S3's
ETag is no content hash for multipart uploads). Objects are read as the substituter reads
them (`gpulock.store.substituters.s3`): no further than the size the listing or the lock
gives; a key that is no safe relative path, or a size past what a model file may hold, is
refused before any object is read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpulock.errors import GpulockError
from gpulock.names import path_problem
from gpulock.pins import FILE_LIMIT, ModelFile, ModelRequest, PinnedModel
from gpulock.sources.files import FileSource, pinned_file, select

if TYPE_CHECKING:
    from gpulock.store import Store
    from gpulock.store.substituters.s3 import S3


class S3Source(FileSource):
    """A prefix or an object in a bucket."""

    prefixes = ("s3://",)
    named = "s3://"

    def problem(self, source: str) -> str | None:
        """What is wrong with the bucket URL, or None."""
        from gpulock.store.substituters.backend import CacheError
        from gpulock.store.substituters.s3 import S3

        try:
            S3(source)
        except CacheError as exc:
            return str(exc).split(": ", 1)[-1]
        return None

    def pin(self, model: ModelRequest, store: Store) -> PinnedModel:
        """Every chosen object, hashed as it is read once."""
        from gpulock.store.substituters.backend import CacheError
        from gpulock.store.substituters.s3 import S3

        bucket = S3(model.source)
        try:
            objects = bucket.listing()
        except CacheError as exc:
            raise GpulockError(f"model '{model.name}': {exc}") from None
        sizes = dict(objects)
        if not sizes:
            raise GpulockError(f"model '{model.name}': {bucket.url} holds no object")
        if "" in sizes:  # the URL names one object: the model is that file
            name = bucket.prefix.rsplit("/", 1)[-1]
            folder, sizes, names = S3(_parent(model.source)), {name: sizes[""]}, [name]
        else:
            folder, names = bucket, select(model, list(sizes))
        _refuse_unsafe(model, bucket, sizes, names)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gpulock-s3-pin-") as tmp:
            files = [self._pin_object(model, folder, name, sizes[name], Path(tmp))
                     for name in names]
        return PinnedModel(name=model.name, source=model.source, revision=None, commit=None,
                           include=model.include, exclude=model.exclude, files=tuple(files),
                           extract=model.extract)

    def _pin_object(self, model: ModelRequest, folder: S3, name: str, size: int, tmp: Path
                    ) -> ModelFile:
        from gpulock.store.substituters.backend import CacheError

        target = tmp / "object"
        try:
            if not folder.download(name, target, size):
                raise GpulockError(f"model '{model.name}': {folder.url} lost {name} while "
                                   "it was pinned")
            return pinned_file(name, target)
        except CacheError as exc:
            raise GpulockError(f"model '{model.name}': {exc}") from None
        finally:
            target.unlink(missing_ok=True)

    def write(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
        """The object's bytes, read no further than the pinned size."""
        from gpulock.store.substituters.backend import CacheError
        from gpulock.store.substituters.s3 import S3

        bucket = S3(model.source)
        if len(model.files) == 1 and bucket.prefix.rsplit("/", 1)[-1] == file.path:
            bucket = S3(_parent(model.source))  # the source names the object itself
        try:
            found = bucket.download(file.path, target, file.size)
        except CacheError as exc:
            raise GpulockError(f"model '{model.name}': {exc}") from None
        if not found:
            raise GpulockError(f"model '{model.name}': {file.path} is gone from {bucket.url}; "
                               "the lock pinned it")


def _refuse_unsafe(model: ModelRequest, bucket: S3, sizes: dict[str, int],
                   names: list[str]) -> None:
    """Refuse, before any object is read, a chosen key that is no relative path the store
    may lay out (the hubs' rule for their file names), or a size no model file has (a
    download would be planned for it)."""
    for name in names:
        shown = repr(name) if len(name) <= 200 else f"{name[:200]!r}..."
        if problem := path_problem(name):
            raise GpulockError(f"model '{model.name}': {bucket.url} lists the object {shown}, "
                               f"whose name {problem}; nothing was pinned")
        if not 0 <= sizes[name] <= FILE_LIMIT:
            raise GpulockError(f"model '{model.name}': {bucket.url} lists the object {shown} "
                               f"as {sizes[name]:,} bytes, not 0 to {FILE_LIMIT:,}; nothing "
                               "was pinned")


def _parent(source: str) -> str:
    """The URL of the folder holding the object a URL names."""
    base, _, query = source.partition("?")
    parent = base.rstrip("/").rsplit("/", 1)[0]
    return f"{parent}?{query}" if query else parent
