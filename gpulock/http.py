"""A small, thread-safe HTTP/1.1 client with keep-alive, ranges and redirects.

Index pages, metadata ranges and file downloads all go through here. Each thread keeps
its own persistent connection per host (a lock resolves with many parallel workers, and
a new TLS handshake per request would dominate). Built on the standard library so that
no-op paths import nothing heavy and no third-party HTTP stack's churn reaches gpulock.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from gpulock import __version__
from gpulock.errors import FetchError

USER_AGENT = f"gpulock/{__version__}"
_RETRIES = 3
_TIMEOUT = 60.0


def redact(url: str) -> str:
    """The URL with any user:password removed, for messages and logs."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


@dataclass
class Response:
    url: str
    status: int
    headers: dict[str, str]
    body: bytes = b""


class Http:
    def __init__(self, timeout: float = _TIMEOUT) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._ssl = ssl.create_default_context()
        self.bytes_received = 0
        self._count_lock = threading.Lock()

    def _connection(self, scheme: str, netloc: str, fresh: bool) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str], http.client.HTTPConnection] = getattr(
            self._local, "pool", None) or {}
        self._local.pool = pool
        key = (scheme, netloc)
        conn = pool.get(key)
        if conn is not None and fresh:
            conn.close()
            conn = None
        if conn is None:
            host = netloc.rsplit("@", 1)[-1]
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(host, timeout=self.timeout)
            pool[key] = conn
        return conn

    @contextmanager
    def stream(self, url: str, headers: dict[str, str] | None = None
               ) -> Iterator[tuple[Response, http.client.HTTPResponse]]:
        """Send GET and yield (status and headers, the open body), following redirects."""
        headers = dict(headers or {})
        for _ in range(10):
            response, raw = self._send(url, headers)
            if response.status in (301, 302, 303, 307, 308) and "location" in response.headers:
                raw.read()
                target = urljoin(url, response.headers["location"])
                if urlsplit(target).netloc != urlsplit(url).netloc:
                    # A token for the hub must not travel to its CDN or anywhere else.
                    headers.pop("Authorization", None)
                url = target
                continue
            try:
                yield response, raw
            finally:
                # Leave the connection reusable only when the body was fully consumed.
                if not raw.isclosed():
                    raw.close()
                    self._connection(*urlsplit(url)[:2], fresh=True)
            return
        raise FetchError(f"too many redirects fetching {redact(url)}")

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        """GET the whole body (decompressed when the server gzipped it)."""
        with self.stream(url, headers) as (response, raw):
            body = raw.read()
        with self._count_lock:
            self.bytes_received += len(body)
        encoding = response.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        response.body = body
        return response

    def _send(self, url: str, headers: dict[str, str]
              ) -> tuple[Response, http.client.HTTPResponse]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"cannot fetch {redact(url)}: unsupported scheme '{parts.scheme}'")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            request_headers["Authorization"] = "Basic " + base64.b64encode(
                token.encode()).decode()
        last_error: Exception | None = None
        for attempt in range(_RETRIES):
            conn = self._connection(parts.scheme, parts.netloc, fresh=attempt > 0)
            try:
                conn.request("GET", path, headers=request_headers)
                raw = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                # A keep-alive connection the server already closed fails here: retry fresh.
                last_error = exc
                conn.close()
                time.sleep(0.1 * attempt)
                continue
            response = Response(url=url, status=raw.status,
                                headers={k.lower(): v for k, v in raw.getheaders()})
            if raw.status >= 500 and attempt + 1 < _RETRIES:
                raw.read()
                last_error = FetchError(f"HTTP {raw.status}")
                time.sleep(0.2 * (attempt + 1))
                continue
            return response, raw
        reason = getattr(last_error, "reason", None) or last_error
        raise FetchError(f"cannot fetch {redact(url)}: {reason}")
