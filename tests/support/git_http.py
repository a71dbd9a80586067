"""git's "dumb" HTTP protocol on 127.0.0.1: the files of a bare repository, served as they are
(after `git update-server-info`), so a test clones over git+http:// with no git server."""

from __future__ import annotations

import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.support.loopback import Loopback


class DumbGit(Loopback):
    """Serves `root`'s files; `redirect`, when set, sends every request there instead, and
    `stall` answers every request with one byte of a large body and then nothing for 20 s.

    `authorizations` holds the Authorization header of every request that carried one."""

    def __init__(self, root: Path, redirect: str | None = None, stall: bool = False) -> None:
        self.root = root
        self.redirect = redirect
        self.stall = stall
        self.authorizations: list[str] = []
        self.serve()

    def bare(self, work: Path, name: str) -> str:
        """A bare clone of the repository at `work` served as `name`; its URL."""
        target = self.root / name
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(target)], check=True)
        subprocess.run(["git", "update-server-info"], cwd=target, check=True)
        return f"{self.origin}/{name}"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if auth := handler.headers.get("Authorization"):
            self.authorizations.append(auth)
        path = unquote(urlsplit(handler.path).path)
        if self.stall:
            handler.send_response(200)
            handler.send_header("Content-Length", str(1 << 20))
            handler.end_headers()
            handler.wfile.write(b"#")
            handler.wfile.flush()
            time.sleep(20)
            return
        if self.redirect is not None:
            handler.send_response(302)
            handler.send_header("Location", f"{self.redirect}{handler.path}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        file = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() not in file.parents or not file.is_file():
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data = file.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(data)
