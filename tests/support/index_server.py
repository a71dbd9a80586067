"""A PEP 503 (HTML) and PEP 691 (JSON) package index on 127.0.0.1, for tests.

Serves files from folders, can advertise and serve PEP 658 `.metadata`, honours Range
(206) unless told not to, sends ETags and answers If-None-Match with 304, and counts every
request and every byte it sent per path, so tests can assert what a lock really fetched.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from tests.support.loopback import Loopback


@dataclass
class IndexServer(Loopback):
    folder: Path
    json_api: bool = True
    ranges: bool = True
    hashes: bool = True
    advertise_metadata: bool = False
    serve_metadata: bool = False
    yanked: set[str] = field(default_factory=set)
    requires_python: dict[str, str] = field(default_factory=dict)  # filename -> specifier
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, range header)
    bytes_sent: Counter[str] = field(default_factory=Counter)
    slow: float = 0.0  # seconds of sleep per 256 KiB of a response body
    trickle: float = 0.0  # seconds between single bytes of a file's body (a stalling server)
    auth: tuple[str, str] | None = None  # Basic credentials every request must carry
    authorizations: list[str] = field(default_factory=list)  # Authorization headers seen

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.serve()

    @property
    def url(self) -> str:
        return f"{self.origin}/simple"

    def file_requests(self, filename: str) -> list[str]:
        return [r for p, r in self.requests if p == f"/files/{filename}"]

    # -- serving --------------------------------------------------------------------------

    def _project_files(self, project: str) -> list[Path]:
        found = []
        for path in sorted(self.folder.iterdir()):
            try:
                if path.name.endswith(".whl"):
                    name = parse_wheel_filename(path.name)[0]
                elif path.name.endswith((".tar.gz", ".zip")):
                    name = parse_sdist_filename(path.name)[0]
                else:
                    continue
            except ValueError:
                continue
            if name == project:
                found.append(path)
        return found

    def _page(self, project: str, as_json: bool) -> bytes:
        files = self._project_files(project)
        if as_json:
            entries = []
            for path in files:
                entry: dict[str, object] = {"filename": path.name, "url": f"/files/{path.name}",
                                            "hashes": {}, "size": path.stat().st_size}
                if self.hashes:
                    entry["hashes"] = {"sha256": _sha256(path)}
                if path.name in self.yanked:
                    entry["yanked"] = "broken release"
                if path.name in self.requires_python:
                    entry["requires-python"] = self.requires_python[path.name]
                if self.advertise_metadata and path.name.endswith(".whl"):
                    entry["core-metadata"] = {"sha256": hashlib.sha256(
                        _wheel_metadata(path)).hexdigest()}
                entries.append(entry)
            return json.dumps({"meta": {"api-version": "1.1"}, "name": project,
                               "files": entries}).encode()
        links = []
        for path in files:
            href = f"/files/{path.name}"
            if self.hashes:
                href += "#sha256=" + _sha256(path)
            attrs = f' href="{html.escape(href)}"'
            if path.name in self.yanked:
                attrs += ' data-yanked=""'
            if path.name in self.requires_python:
                attrs += f' data-requires-python="{html.escape(self.requires_python[path.name])}"'
            if self.advertise_metadata and path.name.endswith(".whl"):
                digest = hashlib.sha256(_wheel_metadata(path)).hexdigest()
                attrs += f' data-core-metadata="sha256={digest}"'
            links.append(f"<a{attrs}>{html.escape(path.name)}</a>")
        return ("<!DOCTYPE html><html><body>" + "\n".join(links) + "</body></html>").encode()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append((path, handler.headers.get("Range", "")))
        self.authorizations.append(handler.headers.get("Authorization", ""))
        if self.auth and handler.headers.get("Authorization") != "Basic " + base64.b64encode(
                ":".join(self.auth).encode()).decode():
            return self._send(handler, path, 401, b"credentials needed", "text/plain",
                              {"WWW-Authenticate": 'Basic realm="index"'})
        if path.startswith("/simple/") and path.endswith("/"):
            project = canonicalize_name(path[len("/simple/"):-1])
            as_json = self.json_api and "json" in handler.headers.get("Accept", "")
            body = self._page(project, as_json)
            if not self._project_files(project):
                return self._send(handler, path, 404, b"not found", "text/plain")
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if handler.headers.get("If-None-Match") == etag:
                return self._send(handler, path, 304, b"", None, {"ETag": etag})
            kind = "application/vnd.pypi.simple.v1+json" if as_json else "text/html"
            return self._send(handler, path, 200, body, kind, {"ETag": etag})
        if path.startswith("/files/"):
            name = path[len("/files/"):]
            if name.endswith(".metadata"):
                wheel = self.folder / name[: -len(".metadata")]
                if self.serve_metadata and wheel.is_file():
                    return self._send(handler, path, 200, _wheel_metadata(wheel), "text/plain")
                return self._send(handler, path, 404, b"not found", "text/plain")
            target = self.folder / name
            if not target.is_file():
                return self._send(handler, path, 404, b"not found", "text/plain")
            size = target.stat().st_size
            wanted = handler.headers.get("Range")
            with target.open("rb") as handle:
                if wanted and self.ranges:
                    start, end = _parse_range(wanted, size)
                    handle.seek(start)
                    return self._send(handler, path, 206, handle.read(end + 1 - start),
                                      "application/octet-stream",
                                      {"Content-Range": f"bytes {start}-{end}/{size}"})
                return self._send(handler, path, 200, handle.read(), "application/octet-stream")
        return self._send(handler, path, 404, b"not found", "text/plain")

    def _send(self, handler: BaseHTTPRequestHandler, path: str, status: int, body: bytes,
              kind: str | None, headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        if kind:
            handler.send_header("Content-Type", kind)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if self.trickle and path.startswith("/files/"):
            for offset in range(len(body)):
                try:
                    handler.wfile.write(body[offset:offset + 1])
                    handler.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                time.sleep(self.trickle)
            return
        step = 256 * 1024
        for offset in range(0, len(body), step):
            handler.wfile.write(body[offset:offset + step])
            if self.slow:
                handler.wfile.flush()
                time.sleep(self.slow)
        self.bytes_sent[path] += len(body)


def _parse_range(header: str, size: int) -> tuple[int, int]:
    spec = header.split("=", 1)[1]
    first, _, last = spec.partition("-")
    if not first:
        return max(0, size - int(last)), size - 1
    return int(first), min(size - 1, int(last)) if last else size - 1


def _wheel_metadata(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's sha256, memoised: pages are rebuilt per request and wheels can be large."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]
