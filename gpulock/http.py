"""A small, thread-safe HTTP/1.1 client with keep-alive, ranges and redirects.

Index pages, metadata ranges and file downloads all go through here. Each thread keeps
its own persistent connection per host (a lock resolves with many parallel workers, and
a new TLS handshake per request would dominate). Built on the standard library so that
no-op paths import nothing heavy and no third-party HTTP stack's churn reaches gpulock.
"""

from __future__ import annotations

import base64
import http.client
import os
import queue
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

from gpulock import __version__
from gpulock.credentials import Login, from_keyring, login_for, redact, remember
from gpulock.errors import FetchError

USER_AGENT = f"gpulock/{__version__}"
_RETRIES = 3
_STALL = 60.0  # seconds without a byte before a transfer is given up (GPULOCK_STALL_TIMEOUT)
_MIN_RATE = 1024  # bytes/s: slower than this over a whole stall period is given up too
MAX_BODY = 64 * 2**20  # what a page or metadata answer may hold; files are streamed
LISTING_LIMIT = 1_000_000  # entries a hub's or a bucket's listing may hold (see paced)


def stall_timeout() -> float:
    """Seconds a transfer may go without progress: $GPULOCK_STALL_TIMEOUT, else 60."""
    try:
        return max(0.1, float(os.environ.get("GPULOCK_STALL_TIMEOUT") or _STALL))
    except ValueError:
        return _STALL


T = TypeVar("T")


def paced(produce: Callable[[], Iterable[T]], what: str,
          distinct: Callable[[T], object] | None = None, server: str = "the hub") -> list[T]:
    """Every item of `produce()` (a hub client's call or a paginated listing of a hub or a
    bucket), read on a daemon thread: the clients take no stall timeout of gpulock's, so
    their answers are given up here when no item arrives for twice GPULOCK_STALL_TIMEOUT,
    when the whole answer takes 30 times that, past LISTING_LIMIT items, or (with
    `distinct`, which names an item in words) at the first item seen twice, as a pagination
    that loops sends. `server` names who answered, in the messages."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1024)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in produce():
                if stop.is_set():
                    return
                items.put(("item", item))
            items.put(("end", None))
        except BaseException as exc:  # re-raised on the caller's thread
            items.put(("error", exc))

    threading.Thread(target=run, daemon=True, name="gpulock-paced").start()
    wait = 2 * stall_timeout()
    # A hub that drips a page every so often is given up too: the whole answer has
    # 30 x GPULOCK_STALL_TIMEOUT (30 min by default, for listings of 100,000s of files).
    deadline = time.monotonic() + 30 * stall_timeout()
    out: list[T] = []
    seen: set[object] = set()
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                kind, value = items.get(timeout=max(0.0, min(wait, left)))
            except queue.Empty:
                took = (f"took over {30 * stall_timeout():g} s (30 x GPULOCK_STALL_TIMEOUT)"
                        if left <= wait else f"sent nothing for {wait:g} s "
                        "(2 x GPULOCK_STALL_TIMEOUT)")
                raise FetchError(f"{what}: {server} {took}; stopped") from None
            if kind == "end":
                return out
            if kind == "error":
                raise value
            if distinct is not None:
                key = distinct(value)
                if key in seen:
                    raise FetchError(f"{what}: {server} listed {key} twice; stopped")
                seen.add(key)
            out.append(value)
            if len(out) > LISTING_LIMIT:
                raise FetchError(f"{what}: the answer goes on past {LISTING_LIMIT:,} entries; "
                                 "stopped")
    finally:
        stop.set()


class Stream(Protocol):
    """What Body reads: http.client's response, or another whose read1 returns the bytes
    that have arrived (at least one, none at the end) and raises TimeoutError on a stall."""

    def read1(self, size: int, /) -> bytes:
        ...


class Body:
    """A response body read as bytes arrive, that gives up on a stalled or trickling server.

    http.client's read(n) waits for all n bytes, so a server sending one byte a second would
    never time out: this reads what has arrived (read1), and checks that each `stall` seconds
    brought at least `_MIN_RATE` bytes per second.
    """

    def __init__(self, raw: Stream, url: str, stall: float, label: str = "") -> None:
        self.raw, self.url, self.stall = raw, url, stall
        self.label = f"{label}: " if label else ""
        self._since = time.monotonic()
        self._got = 0

    def read(self, size: int = 1 << 20) -> bytes:
        try:
            chunk = self.raw.read1(size)
        except TimeoutError:
            raise FetchError(f"{self.label}{redact(self.url)} sent nothing for {self.stall:g} s "
                             "(GPULOCK_STALL_TIMEOUT); the transfer was stopped") from None
        self._got += len(chunk)
        elapsed = time.monotonic() - self._since
        if elapsed >= self.stall:
            if self._got < _MIN_RATE * elapsed:
                raise FetchError(f"{self.label}{redact(self.url)} sent only {self._got} bytes in "
                                 f"{elapsed:.0f} s (GPULOCK_STALL_TIMEOUT={self.stall:g}); "
                                 "the transfer was stopped")
            self._since, self._got = time.monotonic(), 0
        return chunk

    def read_all(self, limit: int = MAX_BODY) -> bytes:
        chunks, size = [], 0
        while chunk := self.read():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FetchError(f"{self.label}{redact(self.url)} sent more than "
                                 f"{limit // 2**20} MiB where a page was expected")
        return b"".join(chunks)


@dataclass
class Response:
    url: str
    status: int
    headers: dict[str, str]
    body: bytes = b""


class Http:
    """GET over HTTP(S) with one kept-alive connection per thread and host."""

    def __init__(self) -> None:
        self.timeout = stall_timeout()
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
    def stream(self, url: str, headers: dict[str, str] | None = None, label: str = ""
               ) -> Iterator[tuple[Response, Body]]:
        """Send GET and yield (status and headers, the open body), following redirects.

        `label` (a package or a model's file) starts any message about the transfer.
        """
        headers = dict(headers or {})
        for _ in range(10):
            response, raw = self._send(url, headers)
            if response.status in (301, 302, 303, 307, 308) and "location" in response.headers:
                raw.read()
                target = urljoin(url, response.headers["location"])
                if urlsplit(target)[:2] != urlsplit(url)[:2]:
                    # A token for the hub must not travel to its CDN, anywhere else, or
                    # over plain http.
                    headers.pop("Authorization", None)
                url = target
                continue
            try:
                yield response, Body(raw, url, self.timeout, label)
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
            body = raw.read_all()
        with self._count_lock:
            self.bytes_received += len(body)
        if response.headers.get("content-encoding", "") in ("gzip", "deflate"):
            body = _inflate(body, url)
        response.body = body
        return response

    def _send(self, url: str, headers: dict[str, str]
              ) -> tuple[Response, http.client.HTTPResponse]:
        url = remember(url)  # credentials travel in the header, never in the request line
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"cannot fetch {redact(url)}: unsupported scheme '{parts.scheme}'")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        login = None if "Authorization" in headers else login_for(url)
        if login:
            request_headers["Authorization"] = _basic(login)
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
            if raw.status == 401 and "Authorization" not in request_headers:
                found = from_keyring(url)
                if found:  # keyring only when asked: a backend can be slow or prompt
                    raw.read()
                    request_headers["Authorization"] = _basic(found)
                    continue
            return response, raw
        reason = getattr(last_error, "reason", None) or last_error
        raise FetchError(f"cannot fetch {redact(url)}: {reason}")


def _basic(login: Login) -> str:
    return "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()


def _inflate(body: bytes, url: str) -> bytes:
    """A gzip or zlib body inflated, at most MAX_BODY bytes of it (a small bomb stays small)."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # | 32: gzip or zlib header
    try:
        plain = inflater.decompress(body, MAX_BODY)
    except zlib.error as exc:
        raise FetchError(f"{redact(url)} sent a compressed body that cannot be read: "
                         f"{exc}") from None
    if inflater.unconsumed_tail:
        raise FetchError(f"{redact(url)} sent more than {MAX_BODY // 2**20} MiB (once "
                         "inflated) where a page was expected")
    return plain
