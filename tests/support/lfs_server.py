"""Git LFS on 127.0.0.1: a repository served over git's dumb HTTP with the Git LFS batch API
beside it, and a server that only records what reaches it.

The batch API is a POST of JSON to `<repo>.git/info/lfs/objects/batch`; its answer gives each
object's download `href` (here the object's file in the served repository, on this server or,
with `objects_at`, on another one, as a hub's CDN would be)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.support.git_http import DumbGit
from tests.support.loopback import Loopback

_BATCH = "/info/lfs/objects/batch"
_JSON = "application/vnd.git-lfs+json"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorization: str | None


def _record(requests: list[Request], handler: BaseHTTPRequestHandler) -> None:
    requests.append(Request(handler.command, unquote(urlsplit(handler.path).path),
                            handler.headers.get("Authorization")))


def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"",
            content_type: str = _JSON) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Recorder(Loopback):
    """Answers every request 404 and keeps it in `requests`: a host nothing should reach."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.serve()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        _record(self.requests, handler)
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        _answer(handler, 404)


class LfsGit(DumbGit):
    """A repository over dumb HTTP and its Git LFS objects over the batch API.

    `objects_at` is the origin the batch answer's hrefs name (this server's by default);
    `batch_at`, when set, answers the batch request with a 307 redirect to that origin;
    `drip`, when set, sends an object's bytes one at a time, that many seconds apart.
    `requests` keeps every request: method, path and Authorization header."""

    def __init__(self, root: Path, objects_at: str | None = None,
                 batch_at: str | None = None, drip: float | None = None) -> None:
        self.requests: list[Request] = []
        self.objects_at = objects_at
        self.batch_at = batch_at
        self.drip = drip
        super().__init__(root)

    def bare(self, work: Path, name: str) -> str:
        """A bare clone of `work` served as `name`, with its Git LFS objects; its URL."""
        url = super().bare(work, name)
        shutil.copytree(work / ".git" / "lfs" / "objects", self.root / name / "lfs" / "objects")
        return url

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        _record(self.requests, handler)
        path = unquote(urlsplit(handler.path).path)
        if handler.command == "POST" and path.endswith(_BATCH) and self.batch_at:
            handler.rfile.read(int(handler.headers["Content-Length"]))
            handler.send_response(307)
            handler.send_header("Location", f"{self.batch_at}{handler.path}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif handler.command == "POST" and path.endswith(_BATCH):
            self._batch(handler, path[: -len(_BATCH)])
        elif self.drip and "/lfs/objects/" in path:
            self._drip(handler, self.drip, (self.root / path.lstrip("/")).read_bytes())
        else:
            super()._handle(handler)

    @staticmethod
    def _drip(handler: BaseHTTPRequestHandler, seconds: float, data: bytes) -> None:
        """`data` a byte at a time: never idle long enough to look stalled, never done."""
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for byte in data:  # ends when the client hangs up (or after len(data) bytes)
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(seconds)

    def _batch(self, handler: BaseHTTPRequestHandler, repo: str) -> None:
        asked = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        origin = self.objects_at or self.origin
        objects = []
        for item in asked["objects"]:
            oid = item["oid"]
            href = f"{origin}{repo}/lfs/objects/{oid[:2]}/{oid[2:4]}/{oid}"
            objects.append({"oid": oid, "size": item["size"],
                            "actions": {"download": {"href": href}}})
        _answer(handler, 200, json.dumps({"transfer": "basic", "objects": objects}).encode())
