"""Reading small text that comes from outside: bounded, and any failure one sentence.

An index's wheels and sdists, a project's pyproject.toml and a build backend's output hand
gpulock archive members and TOML it did not write. Each is read here:
- an archive member (METADATA, PKG-INFO, pyproject.toml) is refused when its header declares
  more than `TEXT_MAX`, and at most `TEXT_MAX + 1` bytes are ever inflated whatever the header
  says (headers lie: a 1 MiB wheel can hold a METADATA that inflates to 1 GiB);
- TOML is parsed with every failure tomllib has, nesting deeper than Python's recursion
  limit included, turned into one sentence naming the file.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

from gpulock.errors import GpulockError
from gpulock.manifest_hash import tomllib

# Core metadata, PKG-INFO and pyproject.toml are text people write: the largest METADATA on
# PyPI carry a long README as their description and stay under a few MiB (torch's: 38 KB).
# More than this is a decompression bomb or a mistake: read whole, it would fill memory and
# land in the lock cache.
TEXT_MAX = 16 * 2**20
# Why a zip member cannot be read: corrupt (BadZipFile, zlib.error, EOFError), encrypted
# (RuntimeError) or compressed by a method zipfile lacks (NotImplementedError).
_ZIP_ERRORS = (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError,
               NotImplementedError)


def too_large(what: str, limit: int = TEXT_MAX) -> GpulockError:
    """The one sentence for a member or file larger than `limit`."""
    return GpulockError(f"{what} is larger than {limit // 2**20} MiB once inflated, more than "
                        "any real one holds; it was refused and nothing of it was kept")


def bounded(stream: IO[bytes], what: str, declared: int = 0) -> bytes:
    """All of `stream`, refused when its header `declared` more than TEXT_MAX bytes (0: it
    has no header) or when it gives more than that (at most TEXT_MAX + 1 bytes are read)."""
    if declared > TEXT_MAX:
        raise too_large(what)
    data = stream.read(TEXT_MAX + 1)
    if len(data) > TEXT_MAX:
        raise too_large(what)
    return data


def zip_member(archive: zipfile.ZipFile, name: str, what: str) -> bytes:
    """The member `name` of `archive`, bounded (see `bounded`)."""
    try:
        info = archive.getinfo(name)
        with archive.open(info) as stream:
            return bounded(stream, what, info.file_size)
    except _ZIP_ERRORS as exc:
        raise GpulockError(f"{what} cannot be read: {exc}") from None


def tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, what: str) -> bytes:
    """The regular file `member` of `archive`, bounded (see `bounded`)."""
    try:
        stream = archive.extractfile(member)
        if stream is None:
            raise GpulockError(f"{what} is not a regular file")
        with stream:
            return bounded(stream, what, member.size)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise GpulockError(f"{what} cannot be read: {exc}") from None


def inflated(data: bytes, method: int, declared: int, what: str) -> bytes:
    """A zip member's raw `data` (stored, method 0, or deflated, method 8), bounded (see
    `bounded`): for members read by byte ranges, without zipfile."""
    if declared > TEXT_MAX:
        raise too_large(what)
    if method == 0:
        plain = data
    elif method == 8:
        try:
            plain = zlib.decompressobj(-15).decompress(data, TEXT_MAX + 1)
        except zlib.error as exc:
            raise GpulockError(f"{what} cannot be inflated: {exc}") from None
    else:
        raise GpulockError(f"{what} uses zip compression method {method}, which gpulock "
                           "does not read")
    if len(plain) > TEXT_MAX:
        raise too_large(what)
    return plain


def toml(text: str, what: str) -> dict[str, Any]:
    """`text` parsed as TOML; one sentence naming `what` when it is not (tomllib recurses
    once per nested array or inline table: a deep one raises RecursionError)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GpulockError(f"{what} is not valid TOML: {exc}") from None
    except RecursionError:
        raise GpulockError(f"{what} nests arrays or inline tables too deeply to be "
                           "read") from None


def toml_file(path: Path, what: str) -> dict[str, Any]:
    """The TOML file at `path` (at most `TEXT_MAX` bytes of UTF-8), parsed (see `toml`)."""
    try:
        with path.open("rb") as handle:
            raw = bounded(handle, what)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GpulockError(f"{what} cannot be read: {exc}") from None
    return toml(text, what)
