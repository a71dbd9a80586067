"""Package indexes: what files a project has, wherever they are served from.

One `Index` per base URL: PEP 691 JSON or PEP 503 HTML over HTTP(S), a `file://` folder
laid out as a simple index, or a `file://` folder of wheels and sdists (pip's find-links).
Pages are cached with their HTTP validators (ETag, Last-Modified) and stay fresh for their
Cache-Control max-age (less their Age), as for pip and uv: a warm lock asks nothing for a fresh
page and revalidates a stale one instead of downloading it; `refresh` revalidates every page.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
)
from packaging.version import InvalidVersion, Version

from gpulock.cache import PAGES, Cache
from gpulock.credentials import redact, remember
from gpulock.errors import FetchError
from gpulock.http import Http

_ACCEPT = ("application/vnd.pypi.simple.v1+json, "
           "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01")
_ARCHIVE = re.compile(r"\.(whl|tar\.gz|zip)$")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class DistFile:
    """One downloadable file of a project, as an index lists it."""

    filename: str
    url: str
    index: str
    name: NormalizedName
    version: Version
    sha256: str | None = None
    size: int | None = None
    upload_time: str | None = None
    requires_python: str | None = None
    yanked: bool = False
    # None: the index does not advertise PEP 658 metadata; "" advertised without a hash.
    metadata_sha256: str | None = None

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")

    @property
    def local_path(self) -> Path | None:
        parts = urlsplit(self.url)
        return Path(unquote(parts.path)) if parts.scheme == "file" else None


Keep = Callable[[str], bool]  # filename -> can the target install it?


@dataclass
class Listing:
    """A project's files that passed `keep`, and the names of those that did not."""

    files: list[DistFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, keep: Keep | None, filename: str, url: str, index: str,
            **facts: object) -> None:
        # Filtering on the filename first matters: a torch page lists ~1000 files, of
        # which a handful fit the target, and parsing all of them was a lock's main cost.
        if keep is not None and not keep(filename):
            self.skipped.append(filename)
            return
        if "@" in url:  # a link with user:password: the lock keeps it bare, the login stays
            url = remember(url)  # in memory for the file's host
        dist = make_dist(filename, url, index, **facts)
        if dist is not None:
            self.files.append(dist)


@lru_cache(maxsize=65536)
def _version(text: str) -> Version:
    return Version(text)


def make_dist(filename: str, url: str, index: str, **facts: object) -> DistFile | None:
    """A DistFile from its filename, or None for files that are not wheels or sdists."""
    try:
        if filename.endswith(".whl"):
            parts = filename[:-4].split("-")
            if len(parts) not in (5, 6):
                raise InvalidWheelFilename(filename)
            name, version = canonicalize_name(parts[0]), _version(parts[1])
        elif filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
        else:
            return None
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return DistFile(filename=filename, url=url, index=index, name=name, version=version,
                    **facts)  # type: ignore[arg-type]


def _absolute(base: str, url: str) -> str:
    return url if url.startswith(("https://", "http://")) else urljoin(base, url)


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def parse_html(page: str, page_url: str, index: str, keep: Keep | None = None) -> Listing:
    parser = _LinkParser()
    parser.feed(page)
    listing = Listing()
    for attrs in parser.links:
        href = attrs.get("href")
        if not href:
            continue
        url, _, fragment = _absolute(page_url, href).partition("#")
        filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        sha256 = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
        if sha256 is not None and not _SHA256.fullmatch(sha256):
            raise ValueError(f"{filename!r} has a sha256 that is not 64 hex digits")
        meta = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        metadata_sha256 = None
        if meta is not None and meta != "false":
            metadata_sha256 = meta[len("sha256="):] if meta.startswith("sha256=") else ""
        listing.add(keep, filename, url, index, sha256=sha256,
                    requires_python=attrs.get("data-requires-python") or None,
                    yanked="data-yanked" in attrs, metadata_sha256=metadata_sha256)
    return listing


def parse_json(page: bytes, page_url: str, index: str, keep: Keep | None = None) -> Listing:
    """A PEP 691 page; ValueError names the first field that has a type the PEP does not allow."""
    data = json.loads(page)
    files = data.get("files", []) if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise ValueError("it is not a PEP 691 project page")
    listing = Listing()
    for entry in files:
        facts = _json_facts(entry)
        listing.add(keep, entry["filename"], _absolute(page_url, entry["url"]).partition("#")[0],
                    index, **facts)
    return listing


_JSON_FIELDS = {"filename": str, "url": str, "hashes": dict, "size": int, "upload-time": str,
                "requires-python": str}


def _json_facts(entry: object) -> dict[str, Any]:
    if not isinstance(entry, dict) or "filename" not in entry or "url" not in entry:
        raise ValueError("a file entry is not a table with a filename and a url")
    for key, kind in _JSON_FIELDS.items():
        if entry.get(key) is not None and not isinstance(entry[key], kind):
            raise ValueError(f"a file's {key!r} is not a {kind.__name__}")
    sha256 = entry.get("hashes", {}).get("sha256")
    if isinstance(sha256, str):
        sha256 = sha256.lower()
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise ValueError(f"{entry['filename']!r} has a sha256 that is not 64 hex digits")
    meta = entry.get("core-metadata", entry.get("dist-info-metadata", False))
    metadata_sha256 = None
    if isinstance(meta, dict):
        metadata_sha256 = str(meta.get("sha256", ""))
    elif meta is True:
        metadata_sha256 = ""
    return {"sha256": sha256, "size": entry.get("size"), "upload_time": entry.get("upload-time"),
            "requires_python": entry.get("requires-python") or None,
            "yanked": bool(entry.get("yanked", False)), "metadata_sha256": metadata_sha256}


class Index:
    """The files an index serves for a project name."""

    def __init__(self, url: str, http: Http, cache: Cache, refresh: bool = False) -> None:
        self.url = url.rstrip("/")
        self.http = http
        self.cache = cache
        self.refresh = refresh  # revalidate even pages still fresh (lock --refresh, --upgrade)
        self.pages_fetched = 0
        self.pages_revalidated = 0

    def files(self, name: str, keep: Keep | None = None) -> Listing:
        name = canonicalize_name(name)
        if self.url.startswith("file://"):
            return self._local_files(name, keep)
        return self._remote_files(name, keep)

    def _local_files(self, name: NormalizedName, keep: Keep | None) -> Listing:
        root = Path(unquote(urlsplit(self.url).path))
        if not root.is_dir():
            raise FetchError(f"index {self.url} is not a folder")
        page = root / name / "index.html"
        if page.is_file():
            return parse_html(page.read_text(encoding="utf-8"), page.as_uri(), self.url, keep)
        listing = Listing()
        for path in sorted(root.iterdir()):
            if _ARCHIVE.search(path.name) and _project_of(path.name) == name:
                listing.add(keep, path.name, path.resolve().as_uri(), self.url)
        return listing

    def _remote_files(self, name: NormalizedName, keep: Keep | None) -> Listing:
        url = f"{self.url}/{name}/"
        cached = self._cached_page(url)
        if cached and not self.refresh and cached[0].get("expires", 0) > time.time():
            return self._parse(*cached, url, keep)
        headers = {"Accept": _ACCEPT, "Accept-Encoding": "gzip"}
        if cached:
            if cached[0].get("etag"):
                headers["If-None-Match"] = cached[0]["etag"]
            if cached[0].get("last_modified"):
                headers["If-Modified-Since"] = cached[0]["last_modified"]
        response = self.http.get(url, headers)
        if response.status == 304 and cached:
            self.pages_revalidated += 1
            cached[0]["expires"] = _expiry(response.headers)
            self._store_page(url, *cached)
            return self._parse(*cached, url, keep)
        if response.status == 404:
            return Listing()
        if response.status in (401, 403):
            from gpulock.credentials import private

            where = ("its URL, ~/.netrc or keyring" if private(self.url) else
                     "its URL (netrc and keyring passwords are sent over https only)")
            raise FetchError(f"index {redact(self.url)} refused access to '{name}' "
                             f"(HTTP {response.status}); check the credentials in {where}")
        if response.status != 200:
            raise FetchError(f"index {redact(self.url)} answered HTTP {response.status} "
                             f"for '{name}'")
        self.pages_fetched += 1
        head = {
            "url": response.url,
            "content_type": response.headers.get("content-type", ""),
            "etag": response.headers.get("etag"),
            "last_modified": response.headers.get("last-modified"),
            "expires": _expiry(response.headers),
        }
        self._store_page(url, head, response.body)
        return self._parse(head, response.body, url, keep)

    def _cached_page(self, url: str) -> tuple[dict[str, Any], bytes] | None:
        # One JSON line of HTTP facts, then the body as served: no re-escaping of
        # megabytes of JSON on every store.
        raw = self.cache.get_bytes(PAGES, url)
        if raw is None or b"\n" not in raw:
            return None
        head, _, body = raw.partition(b"\n")
        try:
            return json.loads(head), body
        except ValueError:
            return None

    def _store_page(self, url: str, head: dict[str, Any], body: bytes) -> None:
        self.cache.put_bytes(PAGES, url, json.dumps(head).encode() + b"\n" + body)

    def _parse(self, head: dict[str, Any], body: bytes, url: str, keep: Keep | None
               ) -> Listing:
        page_url = head.get("url") or url
        try:
            if "json" in head.get("content_type", ""):
                return parse_json(body, page_url, self.url, keep)
            return parse_html(body.decode("utf-8", "replace"), page_url, self.url, keep)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise FetchError(f"index {redact(self.url)} served an unreadable page for "
                             f"{url}: {str(exc) or type(exc).__name__}") from None


def _project_of(filename: str) -> str | None:
    try:
        if filename.endswith(".whl"):
            return canonicalize_name(filename.split("-", 1)[0])
        return parse_sdist_filename(filename)[0]
    except (InvalidSdistFilename, InvalidVersion):
        return None


def _expiry(headers: dict[str, str]) -> float:
    """Until when a page is fresh: its max-age from now, less the Age a CDN has held it."""
    control = headers.get("cache-control", "").lower()
    if "no-cache" in control or "no-store" in control:
        return 0.0
    match = re.search(r"(?:^|[,\s])max-age=(\d+)", control)
    if not match:
        return 0.0
    age = headers.get("age", "").strip()
    return time.time() + int(match.group(1)) - (int(age) if age.isdigit() else 0)
