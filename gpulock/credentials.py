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


def redact(text: str) -> str:
    """`text` (a URL, a requirement, a message) with every URL's user:password left out."""
    return _USERINFO.sub("", text) if "@" in text else text


def shown(url: str) -> str:
    """A URL as an error message may quote it: redacted, and when an '@' is left (a password
    holding '/', '?' or '#' hides the host from any parser) everything up to it elided."""
    bare = redact(url)
    scheme, sep, rest = bare.partition("://")
    if not sep or "@" not in rest:
        return bare
    return f"{scheme}://...@{rest.rpartition('@')[2]}"


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
