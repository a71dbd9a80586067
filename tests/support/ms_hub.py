"""A fake ModelScope hub on 127.0.0.1 for the real modelscope client (MODELSCOPE_ENDPOINT).

Answers `repo/files` (the file list with Sha256) and `repo?FilePath=` (the bytes), and 404s
`/api/v1/repos/internalAccelerationInfo` as a hub without acceleration does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.loopback import Loopback


@dataclass
class FakeModelScope(Loopback):
    repos: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)  # id->rev->files
    served: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.serve()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        segments = path.strip("/").split("/")
        if segments[:3] != ["api", "v1", "models"] or len(segments) < 6:
            return self._send(handler, 404, {"Code": 10010205001, "Message": "not found"})
        repo_id = "/".join(segments[3:5])
        revision = query.get("Revision", ["master"])[0]
        files = self.repos.get(repo_id, {}).get(revision)
        if files is None:
            return self._send(handler, 404, {"Code": 10010205001, "Success": False,
                                             "Message": f"model {repo_id} not found"})
        if segments[5:] == ["repo", "files"]:
            listing = [{"Name": p.rsplit("/", 1)[-1], "Path": p, "Type": "blob",
                        "Size": len(d), "Sha256": hashlib.sha256(d).hexdigest()}
                       for p, d in sorted(files.items())]
            return self._send(handler, 200, {"Code": 200, "Success": True,
                                             "Data": {"Files": listing}})
        if segments[5:] == ["repo"] and "FilePath" in query:
            name = query["FilePath"][0]
            if name not in files:
                return self._send(handler, 404, {"Code": 404, "Message": "file not found"})
            self.served.append(name)
            return self._send(handler, 200, files[name], "application/octet-stream")
        return self._send(handler, 404, {"Code": 404, "Message": "not found"})

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: object,
              kind: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
