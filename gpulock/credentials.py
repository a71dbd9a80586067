"""Credentials for private indexes and file servers: in memory only, never in a file gpulock
writes or a line it prints.

They come, as pip and uv take them, from: user:password in a URL of gpu.toml (taken out of
the URL as the manifest is read, so the lock, the cache, the store and every message see the
bare URL), `~/.netrc` (or the file `$NETRC` names), and keyring when it is installed and a
server answers 401. A request gets the credentials of its own host only, so a redirect to a
CDN never carries the index's password.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from urllib.parse import unquote, urlsplit

Login = tuple[str, str]

_remembered: dict[tuple[str, str], Login] = {}  # (scheme://host:port, path) -> login
_lock = threading.Lock()
_netrc: dict[str, Login] | None = None


_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")  # up to the last '@': a password may hold one
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Schemes whose URLs carry `user:password@` (after git's "git+"); where the others' come from.
_LOGIN_SCHEMES = ("http", "https", "ssh", "git")
_KEYS_FROM = {"s3": "AWS keys come from AWS_* variables or a profile",
              "file": "they name a path on this machine",
              "hf": "a token comes from HF_TOKEN",
              "ms": "a token comes from MODELSCOPE_API_TOKEN"}


def redact(text: str) -> str:
    """`text` (a URL, a requirement, a message) with every URL's user:password left out."""
    return _USERINFO.sub("", text) if "@" in text else text


def shown(text: str) -> str:
    """A URL, or a requirement that ends in one (`name @ git+https://...`), as a message may
    quote it: redacted, and when `login_problem` finds it unclear where a login would end
    (a password holding '/', '?' or '#' hides the host from any parser), everything up to its
    last '@' (or, with none, its host) elided. Every URL a message quotes goes through here."""
    found = _SCHEME.search(text)
    if not found:  # no URL to read (`user:password@host` without its scheme): only the end
        return f"...@{text.rpartition('@')[2]}" if "@" in text else text
    head, url = text[:found.start()], text[found.start():]
    bare = redact(url)
    if login_problem(url) is None:
        return head + bare
    scheme, _, rest = bare.partition("://")
    tail = "@" + rest.rpartition("@")[2] if "@" in rest else rest[len(_authority(rest)):]
    return f"{head}{scheme}://...{tail}"


def login_problem(url: str) -> str | None:
    """What makes it unclear where `url`'s login ends, or puts one where its scheme takes
    none; None when neither. The one rule for every URL gpulock is given (gpu.toml, the
    environment, the command line), applied before any other check reads the URL; the
    answer never quotes it.

    http(s) (and git over them or ssh) carry `user:password@` before the host, which
    `redact` takes out; an '@' left past the host could end a password holding '/', '?' or
    '#' (no parser can tell), so it is refused, bar a git URL's `@revision`. Every other
    scheme (s3://: AWS keys come from the environment; file://, hf://, ms://, ref://) takes
    no login: '@' or ':' where its bucket, host or repository goes, or a ':' anywhere before
    an '@' (`user:password@`, wherever a '/' in either put it), is refused. An '@' in such
    a URL's path is a path's character: an S3 key may hold one."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    kind = scheme.lower().removeprefix("git+")
    if kind in _LOGIN_SCHEMES:
        if "@" not in rest:
            return None
        bare = redact(_repository(url) if scheme.lower().startswith("git+") else url)
        if "@" in bare.partition("://")[2] or not _port_read(bare):
            return ("holds an '@' past its host, which could end a password holding '/', "
                    "'?' or '#': percent-encode them in a password (%2F, %3F, %23) and an "
                    "'@' in a path (%40)")
        return None
    login = rest.rpartition("@")[0]
    if "@" in _authority(rest) or ":" in _authority(rest) or ":" in login:
        return (f"holds what may be a user name or password, which {kind}:// URLs never "
                f"carry ({_KEYS_FROM.get(kind, 'they name no login')})")
    return None


def _authority(rest: str) -> str:
    """The part of a URL after `scheme://` up to its path, query or fragment."""
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def _repository(url: str) -> str:
    """A git URL without its `@revision` and `#subdirectory=` (`git+https://h/r.git@v1`)."""
    base = url.partition("#")[0]
    scheme, sep, rest = base.partition("://")
    folder, slash, last = rest.rpartition("/")
    return f"{scheme}{sep}{folder}{slash}{last.partition('@')[0]}" if slash else base


def _port_read(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - raises for a port that is no number
    except ValueError:
        return False
    return True


def credentials_in(url: str) -> bool:
    """Whether `url` carries a user name or password."""
    return redact(url) != url


def remember(url: str) -> str:
    """Keep the URL's credentials (if any) for its host and path; return the bare URL."""
    if not credentials_in(url):
        return url
    parts = urlsplit(url)
    login = (unquote(parts.username or ""), unquote(parts.password or ""))
    with _lock:
        _remembered[(_origin(url), parts.path)] = login
    return redact(url)


def with_credentials(url: str) -> str:
    """`url` with the login gpu.toml gave for it put back, for a uv child process that reads
    it from its environment (never from its command line, which `ps` shows); uv reads
    ~/.netrc itself."""
    origin, path = _origin(url), urlsplit(url).path
    with _lock:
        under = [(prefix, login) for (where, prefix), login in _remembered.items()
                 if where == origin and path.startswith(prefix)]
    if not under:
        return url
    user, password = max(under, key=lambda item: len(item[0]))[1]
    from urllib.parse import quote

    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return parts._replace(netloc=netloc).geturl()


def login_for(url: str) -> Login | None:
    """The credentials to send with a request for `url`: those remembered for its host (for
    the longest path it lies under, when there are several), else ~/.netrc's for its host."""
    origin, path = _origin(url), urlsplit(url).path
    with _lock:
        same = [(prefix, login) for (where, prefix), login in _remembered.items()
                if where == origin]
    if same:
        under = [item for item in same if path.startswith(item[0])]
        return max(under or same, key=lambda item: len(item[0]))[1]
    host = urlsplit(url).hostname or ""
    if not private(url):
        return None
    logins = _netrc_logins()
    return logins.get(host) or logins.get("default")


def private(url: str) -> bool:
    """Whether a password from netrc or keyring may travel to `url`: they name hosts, not
    ports or schemes (as for curl and pip), so they go only over https, or to this machine,
    never in clear text to an http:// link or redirect."""
    parts = urlsplit(url)
    return bool(parts.hostname) and (parts.scheme == "https" or _loopback(parts.hostname or ""))


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def from_keyring(url: str) -> Login | None:
    """Credentials keyring holds for this URL or its host, when keyring is installed."""
    if not private(url):
        return None
    try:
        import keyring  # type: ignore[import-not-found]
    except ImportError:
        return None
    parts = urlsplit(url)
    for service in (f"{parts.scheme}://{parts.netloc}{parts.path}", parts.hostname or ""):
        try:
            found = keyring.get_credential(service, None)
        except Exception:  # a keyring backend may fail in any way: it is only a fallback
            return None
        if found is not None and found.username:
            return found.username, found.password or ""
    return None


def forget() -> None:
    """Drop every remembered login and the netrc read (a long-lived process, or tests)."""
    global _netrc
    with _lock:
        _remembered.clear()
        _netrc = None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


def _netrc_logins() -> dict[str, Login]:
    """Hosts and logins of the netrc file, read once; an unreadable file is a warning."""
    global _netrc
    if _netrc is not None:
        return _netrc
    import netrc

    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    found: dict[str, Login] = {}
    if os.path.isfile(path):
        try:
            parsed = netrc.netrc(path)
            for host, (login, _account, password) in parsed.hosts.items():
                found[host] = (login or "", password or "")
        except OSError as exc:
            print(f"warning: {path} cannot be read ({exc.strerror}); its credentials are not "
                  "used", file=sys.stderr)
        except netrc.NetrcParseError as exc:  # its message quotes the token: never print it
            print(f"warning: {path} cannot be parsed (line {exc.lineno}); its credentials are "
                  "not used", file=sys.stderr)
    _netrc = found
    return found
