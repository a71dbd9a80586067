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
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import urlsplit

from packaging.version import Version

from gpulock.cache import Cache
from gpulock.errors import FetchError, GpulockError
from gpulock.http import Http, redact
from gpulock.index import DistFile

_TAIL = 64 * 1024
_CHUNK = 1024 * 1024


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


class RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file that fetches only the bytes read.

    zipfile seeks to the end-of-central-directory, reads the central directory, then one
    member: with the tail prefetched that is two or three small requests.
    """

    def __init__(self, http: Http, url: str, size: int, tail: bytes) -> None:
        super().__init__()
        self.http, self.url, self.size = http, url, size
        self.pos = 0
        self.blocks: dict[int, bytes] = {size - len(tail): tail}
        self.bytes_fetched = len(tail)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if self.pos >= end:
            return b""
        data = self._cached(self.pos, end)
        if data is None:
            # Read ahead a little: the local header is followed by the member's data.
            fetch_end = min(self.size, max(end, self.pos + 16 * 1024))
            response = self.http.get(self.url, {"Range": f"bytes={self.pos}-{fetch_end - 1}"})
            if response.status != 206:
                raise FetchError(f"{redact(self.url)} stopped answering range requests "
                                 f"(HTTP {response.status})")
            self.blocks[self.pos] = response.body
            self.bytes_fetched += len(response.body)
            data = response.body[: end - self.pos]
        self.pos += len(data)
        return data

    def _cached(self, start: int, end: int) -> bytes | None:
        for offset, block in self.blocks.items():
            if offset <= start and end <= offset + len(block):
                return block[start - offset: end - offset]
        return None


def _metadata_member(archive: zipfile.ZipFile, where: str) -> bytes:
    names = [n for n in archive.namelist()
             if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
    if len(names) != 1:
        raise FetchError(f"{where} is not a valid wheel: it has {len(names)} "
                         ".dist-info/METADATA files")
    return archive.read(names[0])


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
        raw = self.cache.get_bytes("metadata", key)
        if raw is None:
            raw = self._fetch_wheel_metadata(dist)
            self.cache.put_bytes("metadata", key, raw)
        return parse_core_metadata(raw)

    def _fetch_wheel_metadata(self, dist: DistFile) -> bytes:
        if dist.local_path is not None:
            try:
                with zipfile.ZipFile(dist.local_path) as archive:
                    return _metadata_member(archive, str(dist.local_path))
            except (OSError, zipfile.BadZipFile) as exc:
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
            tail = body.read()
            total = int(response.headers.get("content-range", "*/0").rsplit("/", 1)[1])
        remote = RangeFile(self.http, dist.url, total, tail)
        try:
            with zipfile.ZipFile(remote) as archive:
                raw = _metadata_member(archive, redact(dist.url))
        except zipfile.BadZipFile as exc:
            raise FetchError(f"{redact(dist.url)} is not a valid wheel: {exc}") from None
        with self._lock:
            self.range_bytes += remote.bytes_fetched
        return raw

    # -- file facts -----------------------------------------------------------------------

    def facts(self, dist: DistFile) -> tuple[str, int]:
        """The file's sha256 and size, downloading it once when the index gave neither."""
        if dist.sha256 and dist.size is not None:
            return dist.sha256, dist.size
        cached = self.cache.get_json("facts", dist.url)
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
        self.cache.put_json("facts", dist.url, {"sha256": sha256, "size": size})

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
        key = f"sdist:{sha256}:{builder.key}"
        raw = self.cache.get_bytes("metadata", key)
        if raw is None:
            with tempfile.TemporaryDirectory(prefix="gpulock-sdist-") as tmp:
                path = self._download(dist, Path(tmp))
                raw = _pkg_info(path)
                if raw is None or not parse_core_metadata(raw).reliable_for_sdist:
                    raw = builder.metadata(path, dist.filename)
            self.cache.put_bytes("metadata", key, raw)
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


def _pkg_info(sdist: Path) -> bytes | None:
    """The top-level PKG-INFO of an sdist archive, if it has one."""
    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as archive:
                names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/PKG-INFO", n)]
                return archive.read(names[0]) if names else None
        with tarfile.open(sdist) as archive:
            for member in archive:
                if re.fullmatch(r"[^/]+/PKG-INFO", member.name) and member.isfile():
                    handle = archive.extractfile(member)
                    return handle.read() if handle else None
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise FetchError(f"cannot read {sdist.name}: {exc}") from None
    return None


@dataclass(frozen=True)
class Builder:
    """Builds a wheel from source with uv, for the target's interpreter and a group's settings."""

    python: str
    isolation: bool = True
    env: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return hashlib.sha256(repr((self.python, self.isolation, self.env)).encode()).hexdigest()

    def interpreter(self) -> str:
        """The target's CPython when this machine has it, else the running one.

        Metadata rarely depends on the minor version; when the target interpreter is absent
        (a lock made on a laptop) the running interpreter is the honest fallback.
        """
        from gpulock.interpreter import find_python

        return find_python(self.python) or sys.executable

    def metadata(self, source: Path, label: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="gpulock-build-") as out:
            wheel = self.build(source, Path(out), label)
            with zipfile.ZipFile(wheel) as archive:
                return _metadata_member(archive, wheel.name)

    def build(self, source: Path, out: Path, label: str) -> Path:
        command = [_uv(), "build", "--wheel", "--out-dir", str(out), "--python",
                   self.interpreter(), "--no-python-downloads"]
        if not self.isolation:
            command.append("--no-build-isolation")
        command.append(str(source))
        env = {**os.environ, **dict(self.env)}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wheels = sorted(out.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
            raise GpulockError(f"building {label} failed (uv build exited "
                               f"{result.returncode}); its last lines:",
                               details=["  " + line for line in tail])
        return wheels[0]


def _uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()
