"""`s3://bucket/path/?endpoint=...`: a folder (every object under the prefix) or one
object, in AWS S3 or MinIO-likes; credentials from the usual AWS variables or profile.
Pinned by each object's size and the sha256 of its bytes (read once at lock time: S3's
ETag is no content hash for multipart uploads)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from gpulock.errors import GpulockError
from gpulock.manifest import Model
from gpulock.models import ModelFile, PinnedModel
from gpulock.sources import pinned_file, select
from gpulock.store import Store
from gpulock.store.substituters import CacheError
from gpulock.store.substituters.s3 import S3

_LIMIT = 1 << 40  # no one object of a model is a terabyte


class S3Source:
    """A prefix or an object in a bucket."""

    def problem(self, source: str) -> str | None:
        try:
            S3(source)
        except CacheError as exc:
            return str(exc).split(": ", 1)[-1]
        return None

    def pin(self, model: Model, store: Store) -> PinnedModel:
        bucket = S3(model.source)
        try:
            objects = bucket.listing()
        except CacheError as exc:
            raise GpulockError(f"model '{model.name}': {exc}") from None
        single = [name for name, _ in objects if name == ""]
        if single:  # the URL names one object: the model is that file
            folder, names = S3(_parent(model.source)), [bucket.prefix.rsplit("/", 1)[-1]]
        else:
            folder, names = bucket, select(model, [name for name, _ in objects])
        if not names:
            raise GpulockError(f"model '{model.name}': {bucket.url} holds no object")
        with tempfile.TemporaryDirectory(prefix="gpulock-s3-pin-") as tmp:
            files = [self._pin_object(model, folder, name, Path(tmp)) for name in names]
        return PinnedModel(name=model.name, source=model.source, revision=None, commit=None,
                           include=model.include, exclude=model.exclude, files=tuple(files),
                           extract=model.extract)

    def _pin_object(self, model: Model, folder: S3, name: str, tmp: Path) -> ModelFile:
        target = tmp / "object"
        try:
            if not folder.download(name, target, _LIMIT):
                raise GpulockError(f"model '{model.name}': {folder.url} lost {name} while "
                                   "it was pinned")
            return pinned_file(name, target)
        except CacheError as exc:
            raise GpulockError(f"model '{model.name}': {exc}") from None
        finally:
            target.unlink(missing_ok=True)

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
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


def _parent(source: str) -> str:
    """The URL of the folder holding the object a URL names."""
    base, _, query = source.partition("?")
    parent = base.rstrip("/").rsplit("/", 1)[0]
    return f"{parent}?{query}" if query else parent
