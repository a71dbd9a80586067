"""A fake Hugging Face Hub on 127.0.0.1 that the real huggingface_hub client talks to.

Repositories are commits of files; a branch points at a commit and can move. Serves the API
calls a lock makes (`/api/{models,datasets}/{repo}/revision/{rev}`, `/tree/{rev}` paginated
with `Link: rel="next"`), answers with the `X-Error-Code` headers the client turns into
RepositoryNotFound / RevisionNotFound / GatedRepo errors, and keeps a request log.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.loopback import Loopback


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    kind: str = "model"  # or "dataset"
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored in LFS
    gated: bool = False

    def commit(self, files: dict[str, bytes], branch: str = "main", lfs: set[str] = frozenset()
               ) -> str:
        sha = hashlib.sha1(json.dumps(sorted((p, hashlib.sha256(d).hexdigest())
                                             for p, d in files.items())).encode()
                           + str(len(self.commits)).encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.branches[branch] = sha
        self.lfs |= set(lfs) | {p for p, d in files.items() if len(d) > 1024}
        return sha


@dataclass
class FakeHub(Loopback):
    repos: dict[str, Repo] = field(default_factory=dict)
    token: str = "hf_secret_token"
    page_size: int = 1000
    requests: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)  # files served by /resolve/
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (file, Range header)
    slow: float = 0.0  # seconds of sleep per 256 KiB sent by /resolve/
    trickle: float = 0.0  # seconds between single bytes sent by /resolve/ (a stalling hub)
    # A hostile hub: ("revision" | "tree", the JSON it would send) -> the JSON it sends.
    rewrite: Callable[[str, Any], Any] | None = None
    api_silence: float = 0.0  # seconds the API waits before it answers (a silent hub)
    endless: bool = False  # the tree's next page is always the first one again
    # Where LFS bodies live, as the Hub's CDN: `/resolve/` answers 302 to `{cdn}/{sha256}`
    # (with the X-Linked headers the Hub sends), and the server at `cdn` sends the bytes.
    cdn: str = ""
    # id(content) -> (the content, kept alive so that its id stays its own; its hash)
    _etags: dict[tuple[int, int, bool], tuple[bytes, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.serve()

    def repo(self, repo_id: str, kind: str = "model", gated: bool = False) -> Repo:
        return self.repos.setdefault(f"{kind}:{repo_id}", Repo(kind=kind, gated=gated))

    # -- serving --------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        self.requests.append(handler.path)
        query = parse_qs(parts.query)
        for kind in ("model", "dataset"):
            prefix = f"/api/{kind}s/"
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            repo_id, action, revision = "/".join(rest[:2]), rest[2:3], "/".join(rest[3:])
            repo = self.repos.get(f"{kind}:{repo_id}")
            if repo is None:
                return self._error(handler, 404, "RepoNotFound", "Repository not found")
            if repo.gated and handler.headers.get("Authorization") != f"Bearer {self.token}":
                return self._error(handler, 403, "GatedRepo", "Access to this repo is gated")
            commit = repo.branches.get(revision, revision if revision in repo.commits else None)
            if commit is None:
                return self._error(handler, 404, "RevisionNotFound", "Invalid rev id")
            files = repo.commits[commit]
            if action == ["revision"]:
                return self._json(handler, self._rewritten("revision", {
                    "id": repo_id, "sha": commit, "private": False,
                    "siblings": [{"rfilename": p} for p in files]}))
            if action == ["tree"]:
                return self._tree(handler, repo, files, query)
        return self._resolve(handler, path)

    def _resolve(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        """`/{repo}/resolve/{rev}/{file}` (models) and `/datasets/{repo}/resolve/...`."""
        kind = "model"
        if path.startswith("/datasets/"):
            kind, path = "dataset", path[len("/datasets"):]
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, 404, "EntryNotFound", "not found")
        repo = self.repos.get(f"{kind}:{parts[0]}/{parts[1]}")
        if repo is None:
            return self._error(handler, 404, "RepoNotFound", "Repository not found")
        if repo.gated and handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(handler, 403, "GatedRepo", "Access to this repo is gated")
        commit = repo.branches.get(parts[3], parts[3] if parts[3] in repo.commits else None)
        file = "/".join(parts[4:])
        if commit is None or file not in repo.commits[commit]:
            return self._error(handler, 404, "EntryNotFound", "Entry not found")
        data = repo.commits[commit][file]
        etag = self._etag(data, file in repo.lfs)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if file in repo.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        if self.cdn and file in repo.lfs:
            self.resolved.append(file)
            handler.send_response(302)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Location", f"{self.cdn}/{etag}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        status, body = 200, data
        wanted = handler.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            start = int(first or 0)
            end = int(last) if last else len(data) - 1
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.resolved.append(file)
        self.ranges.append((file, wanted or ""))
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        step = 1 if self.trickle else 256 * 1024
        for start in range(0, len(body), step):
            if self.trickle:
                handler.wfile.flush()
                time.sleep(self.trickle)
            if self.slow:
                time.sleep(self.slow)  # per 256 KiB: a large file takes seconds
            try:
                handler.wfile.write(body[start:start + step])
            except (BrokenPipeError, ConnectionResetError):
                return

    def _etag(self, data: bytes, lfs: bool) -> str:
        """A file's sha256 (LFS) or git blob sha1, computed once per content: a hub hashing
        256 MiB on each request (0.2 s) would be what a download benchmark measures."""
        key = (id(data), len(data), lfs)
        if key not in self._etags:
            self._etags[key] = (data, hashlib.sha256(data).hexdigest() if lfs
                                else git_blob_sha1(data))
        return self._etags[key][1]

    def _tree(self, handler: BaseHTTPRequestHandler, repo: Repo, files: dict[str, bytes],
              query: dict[str, list[str]]) -> None:
        entries: list[dict[str, object]] = []
        folders = sorted({"/".join(p.split("/")[:i]) for p in files
                          for i in range(1, p.count("/") + 1)})
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f}
                    for f in folders]
        for path in sorted(files):
            data = files[path]
            entry: dict[str, object] = {"type": "file", "oid": self._etag(data, False),
                                        "size": len(data), "path": path}
            if path in repo.lfs:
                entry["lfs"] = {"oid": self._etag(data, True), "size": len(data),
                                "pointerSize": 134}
            entries.append(entry)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start: start + self.page_size]
        headers = {}
        if self.endless:
            headers["Link"] = f'<{self.url}{handler.path}>; rel="next"'
        elif start + self.page_size < len(entries):
            base = handler.path.split("?", 1)[0]
            headers["Link"] = (f'<{self.url}{base}?recursive=True&cursor='
                               f'{start + self.page_size}>; rel="next"')
        self._json(handler, self._rewritten("tree", page), headers)

    def _rewritten(self, kind: str, value: Any) -> Any:
        return self.rewrite(kind, value) if self.rewrite else value

    def _json(self, handler: BaseHTTPRequestHandler, value: object,
              headers: dict[str, str] | None = None) -> None:
        time.sleep(self.api_silence)
        body = json.dumps(value).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        for key, item in (headers or {}).items():
            handler.send_header(key, item)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str,
               message: str) -> None:
        body = json.dumps({"error": message}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
