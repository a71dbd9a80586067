"""Every byte gpulock fetches over HTTP(S): index pages, metadata ranges, wheels, model files.

Built on urllib3 (in gpulock's closure through botocore; chosen over httpx2 by measurement,
see the commit that made the switch): one pool of kept-alive connections per proxy, shared by
every thread and every `Http` of the process, so a lock's hundreds of requests to a host use
at most one connection per worker; proxies from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY less NO_PROXY
(as pip, uv and curl read them); certificates from SSL_CERT_FILE/SSL_CERT_DIR or the system's.
gpulock's rules sit on top: a stall timeout and a size cap on every body, credentials only to
their own host and never over plain http, redirects re-checked, 429/503 waited out for a
bounded Retry-After, and one-sentence errors that show URLs and proxies without passwords.
The library is imported on the first request: the no-op and env paths never load it.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import os
import queue
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urljoin, urlsplit

from gpulock import __version__
from gpulock.credentials import Login, from_keyring, login_for, redact, remember, shown
from gpulock.errors import FetchError

if TYPE_CHECKING:
    import urllib3

USER_AGENT = f"gpulock/{__version__}"
_RETRIES = 3
_STALL = 60.0  # seconds without a byte before a transfer is given up (GPULOCK_STALL_TIMEOUT)
MIN_RATE = 1024  # bytes/s: slower than this over a whole stall period is given up too
_WAIT_TOTAL = 60.0  # seconds one request may spend waiting out 429/503 Retry-After answers
MAX_BODY = 64 * 2**20  # what a page or metadata answer may hold; files are streamed
LISTING_LIMIT = 1_000_000  # entries a hub's or a bucket's listing may hold (see paced)
_REDIRECTS = (301, 302, 303, 307, 308)


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



class Body:
    """A response body read as bytes arrive, that gives up on a stalled or trickling server.

    Each read waits at most `stall` seconds for the next bytes (the socket's timeout), and each
    `stall` seconds must bring at least `MIN_RATE` bytes per second: a server sending one byte
    a second never trips a read timeout, but is given up all the same. The bytes are the body
    as sent (no decoding), so ranges and hashes are of the file itself.
    """

    def __init__(self, raw: urllib3.BaseHTTPResponse, url: str, stall: float,
                 label: str = "") -> None:
        self.raw, self.url, self.stall = raw, url, stall
        self.label = _label(label)
        self.ended = False
        self._since = time.monotonic()
        self._got = 0

    def read(self, size: int = 1 << 20) -> bytes:
        """At most `size` bytes of what has arrived; b"" at the end of the body."""
        from urllib3.exceptions import HTTPError, ReadTimeoutError

        try:
            chunk = self.raw.read1(size, decode_content=False)
        except ReadTimeoutError:
            raise FetchError(f"{self.label}{redact(self.url)} sent nothing for {self.stall:g} s "
                             "(GPULOCK_STALL_TIMEOUT); the transfer was stopped") from None
        except (HTTPError, OSError) as exc:
            raise FetchError(f"{self.label}{redact(self.url)}: the connection broke before the "
                             f"whole answer came ({_reason(exc)})") from None
        self.ended = self.ended or not chunk
        self._got += len(chunk)
        elapsed = time.monotonic() - self._since
        if elapsed >= self.stall:
            if self._got < MIN_RATE * elapsed:
                raise FetchError(f"{self.label}{redact(self.url)} sent only {self._got} bytes in "
                                 f"{elapsed:.0f} s (GPULOCK_STALL_TIMEOUT={self.stall:g}); "
                                 "the transfer was stopped")
            self._since, self._got = time.monotonic(), 0
        return chunk

    def read_all(self, limit: int = MAX_BODY) -> bytes:
        """The whole body; more than `limit` bytes is an error (a page, not a file)."""
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
    """Where an answer came from (after redirects), its status and lower-cased headers."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes = b""


class Http:
    """GET over HTTP(S) through the process's connection pools, with gpulock's rules on top.

    Cheap to make: the pools (and their TLS context) are made on the first request and shared
    by every `Http` of the process, so each host keeps its connections across them.
    """

    def __init__(self) -> None:
        self.timeout = stall_timeout()
        self.bytes_received = 0
        self._count_lock = threading.Lock()

    @contextmanager
    def stream(self, url: str, headers: dict[str, str] | None = None, label: str = ""
               ) -> Iterator[tuple[Response, Body]]:
        """Send GET and yield (status and headers, the open body), following redirects.

        `label` (a package or a model's file) starts any message about the transfer.
        """
        headers = dict(headers or {})
        for _ in range(10):
            response, raw = self._send(url, headers, label)
            if response.status in _REDIRECTS and "location" in response.headers:
                _release(raw, ended=False)
                target = urljoin(url, response.headers["location"])
                if urlsplit(target)[:2] != urlsplit(url)[:2]:
                    # A token for the hub must not travel to its CDN, anywhere else, or
                    # over plain http.
                    headers.pop("Authorization", None)
                url = target
                continue
            body = Body(raw, response.url, self.timeout, label)
            try:
                yield response, body
            finally:
                _release(raw, body.ended)
            return
        raise FetchError(f"{_label(label)}too many redirects fetching {redact(url)}")

    def get(self, url: str, headers: dict[str, str] | None = None, label: str = ""
            ) -> Response:
        """GET the whole body (inflated when the server gzipped it), at most MAX_BODY."""
        with self.stream(url, headers, label) as (response, raw):
            body = raw.read_all()
        with self._count_lock:
            self.bytes_received += len(body)
        if response.headers.get("content-encoding", "") in ("gzip", "x-gzip", "deflate"):
            body = _inflate(body, response.url)
        response.body = body
        return response

    def _send(self, url: str, headers: dict[str, str], label: str
              ) -> tuple[Response, urllib3.BaseHTTPResponse]:
        from urllib3 import Timeout
        from urllib3.exceptions import HTTPError, LocationValueError, ProxyError

        url = remember(url)  # credentials travel in the header, never in the request line
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"{_label(label)}cannot fetch {redact(url)}: unsupported scheme "
                             f"'{parts.scheme}'")
        request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        login = None if "Authorization" in headers else login_for(url)
        if login:
            request_headers["Authorization"] = _basic(login)
        proxy = proxy_for(url)
        pool = _pool(proxy, label)
        timeout = Timeout(connect=self.timeout, read=self.timeout)
        failures, waited = 0, 0.0
        while True:
            try:
                raw = pool.request("GET", url, headers=request_headers, timeout=timeout,
                                   preload_content=False, decode_content=False,
                                   redirect=False, retries=False)
            except LocationValueError as exc:
                raise FetchError(f"{_label(label)}cannot fetch {redact(url)}: "
                                 f"{_reason(exc)}") from None
            except (HTTPError, OSError) as exc:
                # A kept-alive connection the server has just closed fails here: once more;
                # a proxy that answered no is asked no more.
                failures += 1
                if failures >= _RETRIES or isinstance(exc, ProxyError):
                    raise FetchError(_failure(label, url, proxy, exc)) from None
                time.sleep(0.1 * failures)
                continue
            status = raw.status
            if status == 407 and proxy:  # a forward proxy's own answer, not the server's
                _release(raw, ended=False)
                raise FetchError(_failure(label, url, proxy, "it asks for a user and password "
                                          "(HTTP 407); check the proxy variable's URL"))
            wait = _retry_after(status, raw.headers) if status in (429, 503) else None
            if wait is not None and waited + wait <= _WAIT_TOTAL:
                _release(raw, ended=False)  # the server asked for a pause: wait it out
                time.sleep(wait)
                waited += max(wait, 1.0)  # counted as at least 1 s: a loop of zeros ends
                continue
            if status >= 500 and failures + 1 < _RETRIES:
                _release(raw, ended=False)
                failures += 1
                time.sleep(0.2 * failures)
                continue
            if status == 401 and "Authorization" not in request_headers:
                found = from_keyring(url)
                if found:  # keyring only when asked: a backend can be slow or prompt
                    _release(raw, ended=False)
                    request_headers["Authorization"] = _basic(found)
                    continue
            return Response(url=url, status=status, headers={
                k.lower(): v for k, v in raw.headers.itermerged()}), raw


def _release(raw: urllib3.BaseHTTPResponse, ended: bool) -> None:
    """Hand the connection back to the pool: as it is when the body was read to its end,
    else closed (a connection with unread bytes on it would garble the next answer)."""
    if not ended:
        raw.close()
    raw.release_conn()


# -- proxies ---------------------------------------------------------------------------------

def proxy_for(url: str) -> str | None:
    """The proxy a request for `url` goes through: HTTPS_PROXY for https, HTTP_PROXY for http,
    else ALL_PROXY (lower-case names first), unless NO_PROXY names its host, as pip, uv and
    curl read them. Loopback is proxied too unless NO_PROXY says otherwise, as for curl."""
    from urllib.request import getproxies_environment

    found = getproxies_environment()
    parts = urlsplit(url)
    proxy = found.get(parts.scheme) or found.get("all")
    if not proxy or bypassed(parts.hostname or "", parts.port, found.get("no", "")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY (comma-separated) names `host`: '*'; a domain, with or without a
    leading '.' or '*.', which covers its subdomains; an IP address or CIDR network; any of
    them with ':port' (IPv6 in brackets) to cover that port only."""
    host = host.lower().rstrip(".")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        name, want = _entry(entry)
        if not name or (want is not None and want != port):
            continue
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                return True
            continue
        except ValueError:
            pass
        name = name.removeprefix("*").removeprefix(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _entry(entry: str) -> tuple[str, int | None]:
    """A NO_PROXY entry's host (or network) and port, if it names one."""
    if entry.startswith("["):  # [v6]:port or [v6]
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return host, int(port) if re.fullmatch(r"[0-9]{1,5}", port) else None


_pools: dict[tuple[str | None, str, str], urllib3.PoolManager] = {}
_pools_lock = threading.Lock()


def _pool(proxy: str | None, label: str) -> urllib3.PoolManager:
    """The process's connection pools through `proxy` (None: direct), made on first use.

    Made anew when the certificate variables change (a test, or a long-lived process). At
    most 64 idle connections are kept per host; more are opened when more threads ask at once.
    """
    import ssl

    import urllib3
    from urllib3.exceptions import HTTPError

    key = (proxy, os.environ.get("SSL_CERT_FILE", ""), os.environ.get("SSL_CERT_DIR", ""))
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            # The default context reads SSL_CERT_FILE and SSL_CERT_DIR, else the system's.
            options: dict[str, Any] = {"num_pools": 64, "maxsize": 64, "block": False,
                                       "ssl_context": ssl.create_default_context()}
            if proxy is None:
                pool = urllib3.PoolManager(**options)
            else:
                try:
                    pool = urllib3.ProxyManager(redact(proxy), proxy_headers=_proxy_login(proxy),
                                                proxy_ssl_context=options["ssl_context"],
                                                **options)
                except (HTTPError, ValueError) as exc:
                    raise FetchError(f"{_label(label)}the proxy {shown(proxy)} cannot be used: "
                                     f"{_reason(exc)}") from None
            _pools[key] = pool
        return pool


def _proxy_login(proxy: str) -> dict[str, str]:
    """The Proxy-Authorization a proxy URL's user:password asks for (sent to the proxy only)."""
    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    return {"Proxy-Authorization": _basic((unquote(parts.username),
                                           unquote(parts.password or "")))}


# -- answers and failures ----------------------------------------------------------------------

def _retry_after(status: int, headers: Any) -> float | None:
    """The pause a 429 or 503 asks for, in seconds (Retry-After: seconds or an HTTP date); a
    429 without one gets a second; None when a 503 names none (retried as any 5xx)."""
    value = headers.get("retry-after", "").strip()
    if re.fullmatch(r"[0-9]{1,9}", value):  # str.isdigit() takes '²', which float() refuses
        return float(value)
    if value:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return 1.0 if status == 429 else None


def _label(label: str) -> str:
    return f"{label}: " if label else ""


def _reason(exc: BaseException) -> str:
    """An exception's words: a proxy error's cause, without urllib3's connection repr and
    without any URL's password (a proxy's, say)."""
    while isinstance(getattr(exc, "original_error", None), BaseException):
        exc = exc.original_error  # type: ignore[attr-defined]
    text = re.sub(r"^\w+\(host='[^']*', port=\d+\): ", "", str(exc))
    return redact(text) or type(exc).__name__


def _failure(label: str, url: str, proxy: str | None, why: BaseException | str) -> str:
    through = f" through the proxy {shown(proxy)}" if proxy else ""
    reason = why if isinstance(why, str) else _reason(why)
    return f"{_label(label)}cannot fetch {redact(url)}{through}: {reason}"


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
