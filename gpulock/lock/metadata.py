"""Core metadata (name, version, Requires-Dist) of the files a lock may pin.

The order of sources is the cheap-first order of DESIGN.md: PEP 658 `.metadata` files when
the index advertises them (or, probed once per host, when it serves them unadvertised),
else HTTP range requests on the wheel's zip central directory (a few KB even for an 800 MB
torch wheel), else a full streamed download that also yields the file's hash. Sdists use
their PKG-INFO when it is reliable (Metadata 2.2+, Requires-Dist not dynamic), else they
are built once with uv. Results are cached by URL and hash: an index file never changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import urlsplit

from packaging.version import Version

from gpulock import untrusted
from gpulock.build import Builder
from gpulock.cache import FACTS, METADATA, Cache
from gpulock.credentials import redact
from gpulock.errors import FetchError
from gpulock.http import Http
from gpulock.lock.index import DistFile

_TAIL = 64 * 1024
_BEHIND = 64 * 1024
_CHUNK = 1024 * 1024
# The most a METADATA of at most untrusted.TEXT_MAX bytes takes compressed: deflate's stored
# blocks add 5 bytes to each 64 KiB of incompressible text.
_PACKED_MAX = untrusted.TEXT_MAX + 2**16


@dataclass(frozen=True)
class CoreMetadata:
    name: str
    version: str
    requires_dist: tuple[str, ...]
    requires_python: str | None
    metadata_version: str
    dynamic: tuple[str, ...]

    @property
    def reliable_for_sdist(self) -> bool:
        """Whether an sdist's PKG-INFO may stand in for its built wheel's METADATA (PEP 643)."""
        dynamic = {d.lower() for d in self.dynamic}
        return (Version(self.metadata_version) >= Version("2.2")
                and "requires-dist" not in dynamic and "requires-python" not in dynamic)


def parse_core_metadata(raw: bytes) -> CoreMetadata:
    message = BytesParser().parsebytes(raw, headersonly=True)
    return CoreMetadata(
        name=message.get("Name", ""),
        version=message.get("Version", ""),
        requires_dist=tuple(message.get_all("Requires-Dist") or ()),
        requires_python=message.get("Requires-Python"),
        metadata_version=message.get("Metadata-Version", "1.0"),
        dynamic=tuple(message.get_all("Dynamic") or ()),
    )


class _Ranges:
    """Byte ranges of one file, fetched on demand and kept.

    A miss also takes the bytes just before it: wheels end with their .dist-info members
    followed by the central directory, so reading the directory brings METADATA along.
    """

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, tail: bytes) -> None:
        self.fetch, self.size = fetch, size
        self.blocks: list[tuple[int, bytes]] = [(size - len(tail), tail)]
        self.fetched = len(tail)

    def get(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        for offset, block in self.blocks:
            if offset <= start and end <= offset + len(block):
                return block[start - offset: end - offset]
        first = max(0, start - _BEHIND)
        block = self.fetch(first, min(self.size, max(end, start + 16 * 1024)))
        self.blocks.append((first, block))
        self.fetched += len(block)
        return block[start - first: end - first]


def _zip_metadata(ranges: _Ranges, where: str) -> bytes:
    """The top-level `*.dist-info/METADATA` member, reading only the bytes it needs.

    zipfile would build an object per member (12,000 for torch) just to read one; this
    walks the central directory records with struct and decompresses the one it wants.
    """
    tail = ranges.blocks[0][1]
    at = tail.rfind(b"PK\x05\x06")
    if at < 0:
        raise FetchError(f"{where} is not a valid wheel: no zip end record")
    cd_size, cd_offset = struct.unpack_from("<II", tail, at + 12)
    if 0xFFFFFFFF in (cd_size, cd_offset):
        locator = tail[at - 20: at]
        if len(locator) != 20 or locator[:4] != b"PK\x06\x07":
            raise FetchError(f"{where} is not a valid wheel: broken zip64 end record")
        (record_at,) = struct.unpack_from("<Q", locator, 8)
        record = ranges.get(record_at, record_at + 56)
        cd_size, cd_offset = struct.unpack_from("<QQ", record, 40)
    directory = ranges.get(cd_offset, cd_offset + cd_size)
    pos = 0
    while pos + 46 <= len(directory):
        if directory[pos: pos + 4] != b"PK\x01\x02":
            raise FetchError(f"{where} is not a valid wheel: corrupt central directory")
        method = struct.unpack_from("<H", directory, pos + 10)[0]
        csize, usize = struct.unpack_from("<II", directory, pos + 20)
        nlen, elen, clen = struct.unpack_from("<HHH", directory, pos + 28)
        offset = struct.unpack_from("<I", directory, pos + 42)[0]
        name = directory[pos + 46: pos + 46 + nlen]
        if name.endswith(b".dist-info/METADATA") and name.count(b"/") == 1:
            extra = directory[pos + 46 + nlen: pos + 46 + nlen + elen]
            usize, csize, offset = _zip64_sizes(extra, usize, csize, offset)
            what = f"the METADATA of {where}"
            if csize > _PACKED_MAX:  # never fetched: deflate cannot make it small enough
                raise untrusted.too_large(what)
            header = ranges.get(offset, offset + 30 + 1024 + csize)
            if header[:4] != b"PK\x03\x04":
                raise FetchError(f"{where} is not a valid wheel: bad local header")
            lnlen, lelen = struct.unpack_from("<HH", header, 26)
            start = offset + 30 + lnlen + lelen
            return untrusted.inflated(ranges.get(start, start + csize), method, usize, what)
        pos += 46 + nlen + elen + clen
    raise FetchError(f"{where} is not a valid wheel: it has no .dist-info/METADATA")


def _zip64_sizes(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """A central directory record's sizes and offset, read from its zip64 field where the
    record says 0xFFFFFFFF."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        if kind == 1:
            fields = iter(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            if usize == 0xFFFFFFFF:
                usize = next(fields)
            if csize == 0xFFFFFFFF:
                csize = next(fields)
            if offset == 0xFFFFFFFF:
                offset = next(fields)
            break
        pos += 4 + length
    return usize, csize, offset


def _metadata_member(archive: zipfile.ZipFile, where: str) -> bytes:
    names = [n for n in archive.namelist()
             if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
    if len(names) != 1:
        raise FetchError(f"{where} is not a valid wheel: it has {len(names)} "
                         ".dist-info/METADATA files")
    return untrusted.zip_member(archive, names[0], f"the METADATA of {where}")


class MetadataSource:
    """Reads core metadata and file facts (sha256, size), caching both."""

    def __init__(self, http: Http, cache: Cache) -> None:
        self.http = http
        self.cache = cache
        self._no_probe_hosts: set[str] = set()
        self._lock = threading.Lock()
        self.range_bytes = 0
        self.full_downloads = 0

    # -- wheels ---------------------------------------------------------------------------

    def wheel(self, dist: DistFile) -> CoreMetadata:
        key = f"{dist.url}#{dist.sha256 or ''}"
        raw = self.cache.get_bytes(METADATA, key)
        if raw is None:
            raw = self._fetch_wheel_metadata(dist)
            self.cache.put_bytes(METADATA, key, raw)
        return parse_core_metadata(raw)

    def _fetch_wheel_metadata(self, dist: DistFile) -> bytes:
        if dist.local_path is not None:
            try:
                with dist.local_path.open("rb") as handle:
                    size = handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, size - _TAIL))

                    def read(start: int, end: int) -> bytes:
                        handle.seek(start)
                        return handle.read(end - start)

                    ranges = _Ranges(read, size, handle.read())
                    return _zip_metadata(ranges, str(dist.local_path))
            except (OSError, struct.error) as exc:
                raise FetchError(f"cannot read {dist.local_path}: {exc}") from None
        host = urlsplit(dist.url).netloc
        if dist.metadata_sha256 is not None or host not in self._no_probe_hosts:
            raw = self._pep658(dist)
            if raw is not None:
                return raw
            with self._lock:
                self._no_probe_hosts.add(host)
        return self._ranged(dist)

    def _pep658(self, dist: DistFile) -> bytes | None:
        response = self.http.get(dist.url + ".metadata")
        if response.status != 200:
            return None
        if len(response.body) > untrusted.TEXT_MAX:
            raise untrusted.too_large(f"{redact(dist.url)}.metadata")
        expected = dist.metadata_sha256
        if expected and hashlib.sha256(response.body).hexdigest() != expected:
            raise FetchError(f"{redact(dist.url)}.metadata does not match the index's hash "
                             f"(expected sha256 {expected})")
        return response.body

    def _ranged(self, dist: DistFile) -> bytes:
        with self.http.stream(dist.url, {"Range": f"bytes=-{_TAIL}"}) as (response, body):
            if response.status == 200:
                # The server ignores ranges and sends the whole file: stream it to disk,
                # hashing on the way, so the download at least pays for the lock's hash.
                with tempfile.TemporaryFile() as handle:
                    digest, size = hashlib.sha256(), 0
                    while chunk := body.read(_CHUNK):
                        digest.update(chunk)
                        handle.write(chunk)
                        size += len(chunk)
                    self._remember_facts(dist, digest.hexdigest(), size)
                    with self._lock:
                        self.full_downloads += 1
                    try:
                        with zipfile.ZipFile(handle) as archive:
                            return _metadata_member(archive, redact(dist.url))
                    except zipfile.BadZipFile as exc:
                        raise FetchError(f"{redact(dist.url)} is not a valid wheel: "
                                         f"{exc}") from None
            if response.status != 206:
                raise FetchError(f"cannot read the metadata of {dist.filename}: HTTP "
                                 f"{response.status} from {redact(dist.url)}")
            tail = body.read_all()
            total = int(response.headers.get("content-range", "*/0").rsplit("/", 1)[1])

        def fetch(start: int, end: int) -> bytes:
            response = self.http.get(dist.url, {"Range": f"bytes={start}-{end - 1}"})
            if response.status != 206:
                raise FetchError(f"{redact(dist.url)} stopped answering range requests "
                                 f"(HTTP {response.status})")
            return response.body

        ranges = _Ranges(fetch, total, tail)
        try:
            raw = _zip_metadata(ranges, redact(dist.url))
        except struct.error as exc:
            raise FetchError(f"{redact(dist.url)} is not a valid wheel: {exc}") from None
        with self._lock:
            self.range_bytes += ranges.fetched
        return raw

    # -- file facts -----------------------------------------------------------------------

    def facts(self, dist: DistFile) -> tuple[str, int]:
        """The file's sha256 and size, downloading it once when the index gave neither."""
        if dist.sha256 and dist.size is not None:
            return dist.sha256, dist.size
        cached = self.cache.get_json(FACTS, dist.url)
        if cached and (not dist.sha256 or cached["sha256"] == dist.sha256):
            return cached["sha256"], cached["size"]
        if dist.local_path is not None:
            sha256, size = _hash_local(dist.local_path)
        elif dist.sha256:
            sha256, size = dist.sha256, self._remote_size(dist)
        else:
            sha256, size = self._hash_remote(dist)
        if dist.sha256 and sha256 != dist.sha256:
            raise FetchError(f"{dist.filename}: the file at {redact(dist.url)} has sha256 "
                             f"{sha256}, but the index says {dist.sha256}")
        self._remember_facts(dist, sha256, size)
        return sha256, size

    def _remember_facts(self, dist: DistFile, sha256: str, size: int) -> None:
        self.cache.put_json(FACTS, dist.url, {"sha256": sha256, "size": size})

    def _remote_size(self, dist: DistFile) -> int:
        response = self.http.get(dist.url, {"Range": "bytes=0-0"})
        if response.status == 206 and "/" in response.headers.get("content-range", ""):
            return int(response.headers["content-range"].rsplit("/", 1)[1])
        if response.status == 200:
            return len(response.body)
        raise FetchError(f"cannot size {dist.filename}: HTTP {response.status} from "
                         f"{redact(dist.url)}")

    def _hash_remote(self, dist: DistFile) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with self.http.stream(dist.url) as (response, body):
            if response.status != 200:
                raise FetchError(f"cannot download {dist.filename}: HTTP {response.status} "
                                 f"from {redact(dist.url)}")
            while chunk := body.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        with self._lock:
            self.full_downloads += 1
        return digest.hexdigest(), size

    # -- sdists and source trees ----------------------------------------------------------

    def sdist(self, dist: DistFile, builder: Builder) -> CoreMetadata:
        sha256, _ = self.facts(dist)
        key = f"sdist:{sha256}:{builder.metadata_key}"
        raw = self.cache.get_bytes(METADATA, key)
        if raw is None:
            with tempfile.TemporaryDirectory(prefix="gpulock-sdist-") as tmp:
                path = self._download(dist, Path(tmp))
                raw = _pkg_info(path, f"{dist.filename} ({redact(dist.url)})")
                if raw is None or not parse_core_metadata(raw).reliable_for_sdist:
                    raw = builder.metadata(path, dist.filename)
            self.cache.put_bytes(METADATA, key, raw)
        return parse_core_metadata(raw)

    def _download(self, dist: DistFile, folder: Path) -> Path:
        if dist.local_path is not None:
            return dist.local_path
        target = folder / dist.filename
        with self.http.stream(dist.url) as (response, body), target.open("wb") as out:
            if response.status != 200:
                raise FetchError(f"cannot download {dist.filename}: HTTP {response.status} "
                                 f"from {redact(dist.url)}")
            shutil.copyfileobj(body, out, _CHUNK)
        return target


def _hash_local(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc}") from None
    return digest.hexdigest(), path.stat().st_size


def _pkg_info(sdist: Path, where: str) -> bytes | None:
    """The top-level PKG-INFO of an sdist archive, if it has one."""
    what = f"the PKG-INFO of {where}"
    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as archive:
                names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/PKG-INFO", n)]
                return untrusted.zip_member(archive, names[0], what) if names else None
        with tarfile.open(sdist) as archive:
            for member in archive:
                if re.fullmatch(r"[^/]+/PKG-INFO", member.name) and member.isfile():
                    return untrusted.tar_member(archive, member, what)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise FetchError(f"cannot read {where}: {exc}") from None
    return None
