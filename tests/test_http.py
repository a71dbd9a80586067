"""The HTTP layer: pooled connections, proxies, compressed pages, page freshness, Retry-After.

Each runs the CLI against loopback servers that count what they were asked: the index counts
connections and requests, the proxy what it forwarded or tunnelled.
"""

from __future__ import annotations

import gzip
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpulock.http import MAX_BODY, bypassed
from tests import test_trust
from tests.support.dists import make_sdist, make_wheel
from tests.support.index_server import IndexServer
from tests.support.proxy import Proxy, login, serve_tls
from tests.test_trust import (
    JSON_PAGE,
    SECRET,
    _Canned,
    _secret_anywhere,
    gpulock,
    refused,
    setup,
    synced,
)

canary = test_trust.canary  # the fixture: nothing outside the store changed


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    server = Proxy()
    yield server
    server.close()


def _many(index: IndexServer, count: int = 30) -> None:
    """app, which needs dep0..dep{count-1}: a page and a metadata read for each."""
    deps = [f"dep{i}" for i in range(count)]
    make_wheel(index.folder, "app", "1.0", requires=deps)
    for dep in deps:
        make_wheel(index.folder, dep, "1.0")


# -- connections -----------------------------------------------------------------------------

def test_a_lock_and_sync_of_many_packages_reuse_a_handful_of_connections(make_index, project):
    index = make_index()
    _many(index, 60)
    setup(project, index.url, '"app"')
    project.lock()
    # 61 pages and 61 metadata reads on at most one connection per lock worker (16).
    assert index.connections <= 16 < len(index.requests) // 7, index.connections
    before = index.connections
    synced(project)
    assert index.connections - before <= 8  # sync --jobs 8: one per download thread


# -- proxies ---------------------------------------------------------------------------------

def test_lock_and_sync_go_through_the_proxy_and_only_through_it(make_index, project, proxy,
                                                                 monkeypatch):
    index = make_index()
    _many(index, 3)
    setup(project, index.url, '"app"')
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    project.lock()
    synced(project)
    assert len(index.requests) > 4
    assert len(proxy.forwarded) == len(index.requests)
    assert all(url.startswith(index.origin) for url in proxy.forwarded)
    # NO_PROXY names the index's host: nothing goes through the proxy any more.
    monkeypatch.setenv("no_proxy", "localhost, 127.0.0.1")
    asked = len(proxy.forwarded)
    project.lock("--upgrade")
    assert len(proxy.forwarded) == asked


def test_an_https_index_is_reached_through_a_connect_tunnel_trusting_ssl_cert_file(
        make_index, project, proxy, tmp_path, monkeypatch):
    index = make_index()
    _many(index, 3)
    cert = serve_tls(index.httpd, tmp_path / "tls")
    url = index.url.replace("http://", "https://")
    setup(project, url, '"app"')
    monkeypatch.setenv("HTTPS_PROXY", proxy.url())
    refused(project.gpulock("lock"), url.removesuffix("/simple"), "through the proxy",
            proxy.url(), "CERTIFICATE_VERIFY_FAILED")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    refused_tunnels = len(proxy.tunnels)
    project.lock()
    synced(project)
    assert len(index.requests) > 4
    # Every connection the index saw came through a tunnel.
    assert index.connections == len(proxy.tunnels) - refused_tunnels > 0
    assert not proxy.forwarded


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "https_proxy", "ALL_PROXY"])
def test_a_proxy_password_is_sent_but_never_printed_or_written(make_index, project, tmp_path,
                                                              monkeypatch, variable):
    index = make_index()
    _many(index, 2)
    url = index.url
    if variable == "https_proxy":
        serve_tls(index.httpd, tmp_path / "tls")
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "tls" / "index.pem"))
        url = url.replace("http://", "https://")
    setup(project, url, '"app"')
    proxy = Proxy(auth=("user", SECRET))
    try:
        monkeypatch.setenv(variable, proxy.url(login("user", SECRET)))
        results = [project.gpulock("lock"), gpulock(project, "sync"),
                   gpulock(project, "verify")]
        assert all(r.code == 0 for r in results), [r.err for r in results]
        assert not any(SECRET in r.out + r.err for r in results)
        assert proxy.forwarded or proxy.tunnels
        assert _secret_anywhere(tmp_path) == []
        # A wrong password: one sentence naming the proxy, without either password.
        monkeypatch.setenv(variable, proxy.url(login("user", f"wrong-{SECRET}")))
        err = refused(project.gpulock("lock", "--upgrade"), "through the proxy",
                      proxy.url(), "407")
        assert SECRET not in err and "wrong" not in err
    finally:
        proxy.close()


def test_a_proxy_that_cannot_be_reached_fails_the_lock_in_one_sentence_naming_it(
        make_index, project, monkeypatch):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    setup(project, index.url, '"app"')
    gone = Proxy()
    dead = gone.url(login("user", SECRET))
    gone.close()
    monkeypatch.setenv("HTTP_PROXY", dead)
    err = refused(project.gpulock("lock"), f"cannot fetch {index.url}/app/",
                  f"through the proxy {dead.replace(f'user:{SECRET}@', '')}")
    assert SECRET not in err and not index.requests
    monkeypatch.setenv("NO_PROXY", "*")
    project.lock()


@pytest.mark.parametrize("entry, host, port, expected", [
    ("example.com", "example.com", None, True),
    ("example.com", "www.example.com", 443, True),
    (".example.com", "example.com", None, True),
    ("*.example.com", "a.b.example.com", None, True),
    ("example.com", "wwwexample.com", None, False),
    ("example.com:8080", "example.com", 8080, True),
    ("example.com:8080", "example.com", 443, False),
    ("10.0.0.0/8", "10.1.2.3", None, True),
    ("10.0.0.0/8", "11.1.2.3", None, False),
    ("127.0.0.1", "127.0.0.1", 5000, True),
    ("::1", "::1", None, True),
    ("[::1]:3", "::1", 3, True),
    ("[::1]:3", "::1", 4, False),
    ("fd00::/8", "fd12::1", None, True),
    ("*", "anything.example", None, True),
    ("", "example.com", None, False),
    (" a.example , b.example ", "b.example", None, True),
])
def test_no_proxy_names_hosts_as_curl_and_uv_read_it(entry, host, port, expected):
    assert bypassed(host, port, entry) is expected


_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@given(st.lists(_label, min_size=1, max_size=4), st.lists(_label, max_size=3),
       st.sampled_from(["", ".", "*."]), _label)
def test_a_no_proxy_domain_covers_itself_and_its_subdomains_and_nothing_else(
        domain, sub, prefix, other):
    name = ".".join(domain)
    assert bypassed(".".join([*sub, name]), None, prefix + name)
    assert not bypassed(other + name, None, prefix + name) or other.endswith(".")
    assert not bypassed(name, None, prefix + name + "x")


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_a_no_proxy_network_covers_exactly_its_addresses(address, prefix):
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    assert bypassed(str(address), None, str(network))
    outside = int(network.broadcast_address) + 1
    if outside < 2**32:
        assert not bypassed(str(ipaddress.ip_address(outside)), None, str(network))


# -- answers ---------------------------------------------------------------------------------

class _Pages(IndexServer):
    """An index whose pages carry `page_headers` (and are gzipped when the client asks), and
    whose first answer for each page in `throttle` is 429 with `throttle[path]` Retry-After."""

    page_headers: dict[str, str]
    throttle: dict[str, str]

    def _handle(self, handler: Any) -> None:
        path = handler.path
        if path in self.throttle and not any(p == path for p, _ in self.requests):
            self.requests.append((path, ""))
            handler.send_response(429)
            handler.send_header("Retry-After", self.throttle[path])
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        super()._handle(handler)

    def _send(self, handler: Any, path: str, status: int, body: bytes, kind: str | None,
              headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if path.startswith("/simple/"):
            headers.update(self.page_headers)
            if status == 200 and "gzip" in handler.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body)
                headers["Content-Encoding"] = "gzip"
        super()._send(handler, path, status, body, kind, headers)


def _pages(tmp_path: Any, headers: dict[str, str] | None = None,
           throttle: dict[str, str] | None = None) -> _Pages:
    server = _Pages(tmp_path / "pages")
    server.page_headers, server.throttle = headers or {}, throttle or {}
    return server


def test_pages_are_asked_for_as_pep_691_json_and_read_gzipped(project, tmp_path):
    index = _pages(tmp_path)
    try:
        make_wheel(index.folder, "app", "1.0", requires=["dep"])
        make_wheel(index.folder, "dep", "1.0")
        setup(project, index.url, '"app"')
        assert project.pins() == {"app": "1.0", "dep": "1.0"}
        page = index._page("app", as_json=True)
        assert 0 < index.bytes_sent["/simple/app/"] < len(page)
    finally:
        index.close()


def test_a_page_that_inflates_past_the_bound_is_refused_in_one_sentence(project, canary):
    bomb = gzip.compress(b" " * (MAX_BODY + 1), compresslevel=9)
    server = _Canned(bomb, JSON_PAGE, {"Content-Encoding": "gzip"})
    try:
        setup(project, server.url, '"app"')
        refused(project.gpulock("lock"), server.url.removesuffix("/simple"),
                f"more than {MAX_BODY // 2**20} MiB (once inflated)")
    finally:
        server.close()


def _lock_then_add_other(project, index) -> int:
    """Lock a project of `app`, then again with `other` added: the second lock reads app's
    page from the cache (how freshly depends on the page's Cache-Control). The bytes of
    app's page the first lock was sent."""
    make_wheel(index.folder, "app", "1.0")
    make_wheel(index.folder, "other", "1.0")
    setup(project, index.url, '"app"')
    project.lock()
    sent = index.bytes_sent["/simple/app/"]
    setup(project, index.url, '"app", "other"')
    project.lock()
    return sent


def test_a_page_fresh_for_its_max_age_is_not_asked_for_until_refresh(project, tmp_path):
    index = _pages(tmp_path, {"Cache-Control": "max-age=600, public", "Age": "60"})
    try:
        _lock_then_add_other(project, index)
        pages = [p for p, _ in index.requests if p == "/simple/app/"]
        assert len(pages) == 1  # fresh: the second lock asked nothing for it
        make_wheel(index.folder, "app", "2.0")
        assert project.pins("--refresh")["app"] == "1.0"  # revalidated; the pin is kept
        assert project.pins("--upgrade")["app"] == "2.0"
        pages = [p for p, _ in index.requests if p == "/simple/app/"]
        assert len(pages) == 3
    finally:
        index.close()


def test_a_stale_page_is_revalidated_not_downloaded_again(project, tmp_path):
    index = _pages(tmp_path, {"Cache-Control": "max-age=600", "Age": "600"})
    try:
        sent = _lock_then_add_other(project, index)
        assert [p for p, _ in index.requests].count("/simple/app/") == 2
        assert index.bytes_sent["/simple/app/"] == sent  # answered 304
    finally:
        index.close()


@pytest.mark.parametrize("after", ["1", "\u00b2", "soon"], ids=["seconds", "superscript", "words"])
def test_a_429_is_waited_out_for_its_retry_after_and_asked_again(after, project, tmp_path):
    # A Retry-After that is not plain digits or a date (str.isdigit() takes '²', which
    # float() refuses) is a second's pause, as for a 429 that names none.
    index = _pages(tmp_path, throttle={"/simple/app/": after})
    try:
        make_wheel(index.folder, "app", "1.0")
        setup(project, index.url, '"app"')
        assert project.pins() == {"app": "1.0"}
        assert [p for p, _ in index.requests].count("/simple/app/") == 2
    finally:
        index.close()


def test_a_retry_after_past_the_bound_fails_at_once_in_one_sentence(project, tmp_path):
    import time

    index = _pages(tmp_path, throttle={"/simple/app/": "3600"})
    try:
        make_wheel(index.folder, "app", "1.0")
        setup(project, index.url, '"app"')
        started = time.monotonic()
        refused(project.gpulock("lock"), index.origin, "HTTP 429", "'app'")
        assert time.monotonic() - started < 30
    finally:
        index.close()


# -- the resolver's walk -----------------------------------------------------------------------

def test_a_resolver_walking_down_a_packages_versions_has_the_next_ones_read_ahead(
        make_index, project, tmp_path):
    from packaging.requirements import Requirement

    from gpulock import manifest
    from gpulock.build import Builder
    from gpulock.cache import Cache
    from gpulock.http import Http
    from gpulock.lock.finder import _AHEAD, IndexFinder
    from gpulock.lock.index import Index
    from gpulock.lock.metadata import MetadataSource

    index = make_index()
    for version in range(1, 14):
        if version == 8:  # an sdist: its metadata may need a build, never read ahead
            make_sdist(index.folder, "app", f"{version}.0")
        else:
            make_wheel(index.folder, "app", f"{version}.0")
    setup(project, index.url, '"app"')
    spec = manifest.load(project.manifest)
    http, cache = Http(), Cache(tmp_path / "walk-cache")
    finder = IndexFinder(spec.target, Index(index.url, http, cache), {},
                         MetadataSource(http, cache), {}, Builder(spec.target.python))
    try:
        finder.prefetch([Requirement("app")])
        listed = list(finder.candidates("app"))
        finder.dependencies(listed[0])
        assert listed[1].source not in finder._metadata  # one version asked: no walk yet
        finder.dependencies(listed[1])  # a second one: the resolver is walking down
        ahead = listed[2:2 + _AHEAD]
        assert {c.source for c in ahead if c.source.is_wheel} <= set(finder._metadata)
        sdist = next(c for c in ahead if not c.source.is_wheel)
        assert sdist.source not in finder._metadata
        assert listed[2 + _AHEAD].source not in finder._metadata
    finally:
        finder.close()
