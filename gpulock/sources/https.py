"""`https://host/path/file` (and http://): one file, hashed at lock time, downloaded at sync
(resumable, in ranges when large) and checked against that hash; laid out as
`files/<project>/<model>/<file>`, or as the tree it unpacks to with `extract = true`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from gpulock.errors import GpulockError
from gpulock.names import url_problem
from gpulock.pins import FILE_LIMIT, ModelFile, ModelRequest, PinnedModel
from gpulock.sources.files import FileSource

if TYPE_CHECKING:
    from gpulock.store import Store


class HttpsSource(FileSource):
    """One file a web server serves."""

    prefixes = ("https://", "http://")
    named = "https://"
    one_file = True

    def problem(self, source: str) -> str | None:
        """What is wrong with the URL, or None."""
        return url_problem(source)

    def pin(self, model: ModelRequest, store: Store) -> PinnedModel:
        """The file as the server sends it now, by size and sha256."""
        return _pin(model)

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, streams: int) -> Path:
        """The file's blob, downloaded from its URL (no token is sent anywhere)."""
        from gpulock.models.download import download

        return download(store, model, file, model.source, {}, streams)


def _pin(model: ModelRequest) -> PinnedModel:
    from urllib.parse import unquote, urlsplit

    from gpulock.credentials import redact
    from gpulock.http import Http

    digest, size = hashlib.sha256(), 0
    with Http().stream(model.source) as (response, body):
        if response.status != 200:
            raise GpulockError(f"model '{model.name}': {redact(model.source)} answered HTTP "
                               f"{response.status}")
        while chunk := body.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            if size > FILE_LIMIT:  # a body without end: refused, never hashed forever
                raise GpulockError(f"model '{model.name}': {redact(model.source)} sent more "
                                   f"than {FILE_LIMIT:,} bytes, past any model file")
    name = unquote(urlsplit(model.source).path.rsplit("/", 1)[-1]) or "download"
    return PinnedModel(name=model.name, source=model.source, revision=None, commit=None,
                       include=(), exclude=(),
                       files=(ModelFile(path=name, size=size, sha256=digest.hexdigest()),),
                       extract=model.extract)
