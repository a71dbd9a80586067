"""git sources: `name @ git+URL@REV` resolved to a commit and checked out for building.

The lock records PEP 751 `vcs` entries (url, requested-revision, commit-id), so a moving
branch or tag never changes what `sync` builds. Checkouts are cached by commit.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gpulock.credentials import login_for, private, redact
from gpulock.errors import GpulockError

_SHA = re.compile(r"[0-9a-f]{40}")
_REDIRECT = re.compile(r"error: 30[12378]\b")


@dataclass(frozen=True)
class GitSource:
    url: str  # the repository, without git+ and @rev
    requested_revision: str | None
    commit: str
    subdirectory: str | None = None

    @property
    def requirement_url(self) -> str:
        url = f"git+{self.url}@{self.commit}"
        return f"{url}#subdirectory={self.subdirectory}" if self.subdirectory else url


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """`git+https://h/r.git@v1#subdirectory=x` -> ("https://h/r.git", "v1", "x")."""
    url = url.removeprefix("git+")
    url, _, fragment = url.partition("#")
    subdirectory = None
    for part in fragment.split("&"):
        if part.startswith("subdirectory="):
            subdirectory = part[len("subdirectory="):]
    parts = urlsplit(url)
    revision = None
    if "@" in parts.path:
        path, revision = parts.path.rsplit("@", 1)
        url = url[: url.index(parts.path)] + path
    return url, revision, subdirectory


# Transports git may use: a repository's config (or a URL rewrite) never picks `ext::` (runs
# a command) or `fd::`; these five are what gpu.toml's git URLs can name.
_PROTOCOLS = ("https", "http", "ssh", "git", "file")
_PATH = "/usr/bin:/bin:/usr/local/bin"
# What git gets of the user's environment besides HOME: how to reach the network (curl's
# proxy variables; it ignores upper-case HTTP_PROXY), whose certificates to trust, and the
# ssh agent for ssh:// repositories. Nothing that names a command or a repository.
_PASSED = ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
           "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH",
           "SSH_AUTH_SOCK")


def run_git(command: str, *args: str, repo: Path | None = None, url: str | None = None,
            settings: dict[str, str] | None = None, slack: float = 0.0) -> str:
    """Run `git command args...`, the one way gpulock runs git on someone else's repository.

    `repo` is a working tree gpulock cloned: git is told its `.git` and work tree, so it never
    looks for a repository (a folder of the checkout that looks like a bare repository, with
    its own config, is only files). Without `repo` git runs in an empty folder of its own.
    Settings (`_environment`, and `settings`) go in the environment. The run is stopped
    after 30 x GPULOCK_STALL_TIMEOUT plus `slack` seconds (git-lfs moving model weights is
    given their size at 1 KiB/s, the slowest rate any download may keep)."""
    from gpulock.http import stall_timeout

    stall = stall_timeout()
    env, credentials = _environment(command, url, settings or {}, stall)
    where = [f"--git-dir={repo / '.git'}", f"--work-tree={repo}"] if repo else []
    with tempfile.TemporaryDirectory(prefix="gpulock-git-") as empty:
        env["GIT_CEILING_DIRECTORIES"] = str(Path(empty).parent)
        if url and url.startswith("http://") and not private(url):
            env.update(_without_netrc(Path(empty)))
        try:
            result = _run_group(["git", *where, command, *args], repo or Path(empty), env,
                                30 * stall + slack)
        except FileNotFoundError:
            raise GpulockError("git is not installed, but the manifest names a git "
                               "repository") from None
        except subprocess.TimeoutExpired:
            raise GpulockError(f"git {command} took over {30 * stall + slack:g} s and was "
                               "stopped (30 x GPULOCK_STALL_TIMEOUT, and 1 s a KiB it "
                               "fetches)") from None
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        why = (" (a redirect: git is given credentials, so it follows none and they never "
               "reach another host)" if credentials and _REDIRECT.search(last[0]) else "")
        raise GpulockError(f"git {command} failed: {redact(last[0])}{why}")
    return result.stdout


# The process groups of the git commands running now (on any thread): an interrupted
# gpulock stops them all (Ctrl-C reaches only the main thread, and git's own group is not
# the terminal's).
_RUNNING: set[int] = set()
_RUNNING_LOCK = threading.Lock()


def stop_running() -> None:
    """Kill every git command's process group still running (on Ctrl-C, at exit)."""
    with _RUNNING_LOCK:
        groups = list(_RUNNING)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


atexit.register(stop_running)


def _run_group(command: list[str], cwd: Path, env: dict[str, str], timeout: float
               ) -> subprocess.CompletedProcess[str]:
    """`command` in a process group of its own, the whole group killed when it overruns or
    gpulock is interrupted: git runs git-lfs, which a kill of git alone left downloading."""
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, encoding="utf-8", errors="surrogateescape",
                          start_new_session=True) as process:
        with _RUNNING_LOCK:
            _RUNNING.add(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=5)  # a descendant that left the group keeps
            raise                              # the pipes open: not waited on for long
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process.pid)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _environment(command: str, url: str | None, settings: dict[str, str], stall: float
                 ) -> tuple[dict[str, str], bool]:
    """git's whole environment, and whether it holds credentials. Settings given here
    outrank every config file, and no `ps` shows them: no hooks, no fsmonitor command, no
    implicit bare repository, no submodules, only the five transports of gpu.toml's URLs,
    git's HTTP given up after GPULOCK_STALL_TIMEOUT below 1 KiB/s. Credentials for `url`
    (gpu.toml's or ~/.netrc's) are a header scoped to that URL, and with them git follows
    no redirect (a redirected git sends its headers on to the new host)."""
    seconds = str(max(1, round(stall)))
    config = {"safe.bareRepository": "explicit", "core.fsmonitor": "false",
              "core.hooksPath": "/dev/null", "submodule.recurse": "false",
              "protocol.allow": "never", **{f"protocol.{p}.allow": "always" for p in _PROTOCOLS},
              "http.lowSpeedLimit": "1024", "http.lowSpeedTime": seconds,
              "lfs.activitytimeout": seconds}
    headers = _auth_headers(url, settings)
    if headers:
        config["http.followRedirects"] = "false"
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_PROTOCOL_FROM_USER": "0", "GIT_LITERAL_PATHSPECS": "1",
           "GIT_NO_REPLACE_OBJECTS": "1", "PATH": _PATH, "HOME": os.environ.get("HOME", "/"),
           **{name: os.environ[name] for name in _PASSED if name in os.environ}}
    if command != "lfs":  # a user's `git lfs install` filter would fetch LFS files unasked
        env["GIT_LFS_SKIP_SMUDGE"] = "1"
    elif lfs := shutil.which("git-lfs"):
        env["PATH"] = f"{os.path.dirname(lfs)}:{_PATH}"
    pairs = [*config.items(), *settings.items(), *headers]
    env["GIT_CONFIG_COUNT"] = str(len(pairs))
    for i, (key, value) in enumerate(pairs):
        env.update({f"GIT_CONFIG_KEY_{i}": key, f"GIT_CONFIG_VALUE_{i}": value})
    return env, bool(headers)


def _without_netrc(home: Path) -> dict[str, str]:
    """A HOME without `.netrc` for git on a plain http:// repository: git's curl and git-lfs
    read ~/.netrc themselves and would send its password in clear text, which gpulock's own
    rule (`credentials.private`) refuses. The user's global git config is still read."""
    real = Path(os.environ.get("HOME", "/"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or real / ".config") / "git" / "config"
    found = [path for path in (real / ".gitconfig", xdg) if path.is_file()]
    return {"HOME": str(home), "GIT_CONFIG_GLOBAL": str(found[0]) if found else os.devnull}


def _auth_headers(url: str | None, settings: dict[str, str]) -> list[tuple[str, str]]:
    """`http.<url>.extraHeader` settings with the login for `url`, for it and for the Git
    LFS endpoint `settings` name (`lfs.url`, on the same host) when that is not below it."""
    login = login_for(url) if url and url.startswith(("https://", "http://")) else None
    if not (login and url):
        return []
    token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    scopes = [url]
    lfs = settings.get("lfs.url", "")
    same_host = urlsplit(lfs)[:2] == urlsplit(url)[:2]
    if same_host and not lfs.startswith(url.rstrip("/") + "/"):
        scopes.append(lfs)
    return [(f"http.{scope}.extraHeader", f"Authorization: Basic {token}") for scope in scopes]


def resolve(url: str) -> GitSource:
    """Pin a git+ URL's revision (branch, tag, short or full sha) to a commit."""
    repo, revision, subdirectory = split_url(url)
    if revision and _SHA.fullmatch(revision):
        return GitSource(repo, revision, revision, subdirectory)
    try:
        patterns = [revision, f"{revision}^{{}}"] if revision else ["HEAD"]
        listing = run_git("ls-remote", "--", repo, *patterns, url=repo)
    except GpulockError as exc:
        raise GpulockError(f"cannot reach git repository {redact(repo)}: {exc}") from None
    refs = dict(line.split("\t")[::-1] for line in listing.splitlines() if "\t" in line)
    if revision:
        # An annotated tag's peeled commit (`^{}`) is the one to build.
        for name in (f"refs/tags/{revision}^{{}}", f"refs/tags/{revision}",
                     f"refs/heads/{revision}", revision):
            if name in refs:
                return GitSource(repo, revision, refs[name], subdirectory)
        with tempfile.TemporaryDirectory(prefix="gpulock-git-") as tmp:
            run_git("clone", "--quiet", "--no-checkout", "--", repo, tmp, url=repo)
            try:
                commit = run_git("rev-parse", "--verify", "--end-of-options",
                                 f"{revision}^{{commit}}", repo=Path(tmp)).strip()
            except GpulockError:
                raise GpulockError(f"git repository {redact(repo)} has no revision "
                                   f"'{revision}'") from None
        return GitSource(repo, revision, commit, subdirectory)
    if "HEAD" not in refs:
        raise GpulockError(f"git repository {redact(repo)} has no HEAD")
    return GitSource(repo, None, refs["HEAD"], subdirectory)


def checkout_root(source: GitSource, cache_root: Path) -> Path:
    """A working tree of the source's commit (the whole repository), cloned once into the
    cache; git's smudge filters are off, so Git LFS files are still pointers."""
    dest = cache_root / "git" / source.commit
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with held(dest):
        if dest.is_dir():  # cloned while this one waited
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
        try:
            run_git("clone", "--quiet", "--no-checkout", "--", source.url, str(tmp / "tree"),
                    url=source.url)
            run_git("checkout", "--quiet", "--detach", source.commit, repo=tmp / "tree")
            with contextlib.suppress(OSError):  # another process published it first
                (tmp / "tree").rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


@contextlib.contextmanager
def held(checkout: Path) -> Iterator[None]:
    """The checkout (made or not) held by the caller alone among this host's threads and
    processes (flock on `<checkout>.lock` beside it): eight files of one repository fetched
    at once make one clone and one `git lfs pull`, not eight side by side. It only saves
    work: the clone is published by a rename, and every byte read is checked afterwards."""
    fd = os.open(f"{checkout}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        if not os.environ.get("GPULOCK_NO_FLOCK"):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def subdirectory_of(root: Path, source: GitSource) -> Path:
    """The source's `#subdirectory=` in the checkout at `root` (the root itself if none): a
    real folder of the checkout, reached through real folders, never `.git` or through a
    link (a link leads out of the repository: to another checkout, to `.git`, anywhere)."""
    from gpulock.safeopen import Unsafe, check_folder

    if not source.subdirectory:
        return root
    where = f"the subdirectory {source.subdirectory!r} of {redact(source.url)}"
    if any(part.lower() == ".git" for part in source.subdirectory.split("/")):
        raise GpulockError(f"{where} names '.git', git's own folder, not the repository's")
    try:
        return check_folder(root, source.subdirectory)
    except Unsafe as exc:
        raise GpulockError(f"{where} is not a folder of the repository: {exc}") from None


def checkout(source: GitSource, cache_root: Path) -> Path:
    """The source's folder (its subdirectory, checked) in a checkout of its commit."""
    return subdirectory_of(checkout_root(source, cache_root), source)
