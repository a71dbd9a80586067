"""git sources: `name @ git+URL@REV` resolved to a commit and checked out for building.

The lock records PEP 751 `vcs` entries (url, requested-revision, commit-id), so a moving
branch or tag never changes what `sync` builds. Checkouts are cached by commit.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gpulock.credentials import login_for, redact
from gpulock.errors import GpulockError

_SHA = re.compile(r"[0-9a-f]{40}")


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


def _git(*args: str, cwd: Path | None = None, url: str | None = None) -> str:
    """Run git; credentials for `url` (gpu.toml's or ~/.netrc's) go in an environment-only
    setting scoped to that URL, never on the command line or into the clone's config."""
    env = {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin",
           "HOME": os.environ.get("HOME", "/")}
    login = login_for(url) if url and url.startswith(("https://", "http://")) else None
    if login and url:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.{url}.extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"})
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                check=False, env=env)
    except FileNotFoundError:
        raise GpulockError("git is not installed, but the manifest has a git+ requirement"
                           ) from None
    if result.returncode != 0:
        raise GpulockError(f"git {args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout


def resolve(url: str) -> GitSource:
    """Pin a git+ URL's revision (branch, tag, short or full sha) to a commit."""
    repo, revision, subdirectory = split_url(url)
    if revision and _SHA.fullmatch(revision):
        return GitSource(repo, revision, revision, subdirectory)
    try:
        patterns = [revision, f"{revision}^{{}}"] if revision else ["HEAD"]
        listing = _git("ls-remote", "--", repo, *patterns, url=repo)
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
            _git("clone", "--quiet", "--no-checkout", "--", repo, tmp, url=repo)
            try:
                commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}",
                              cwd=Path(tmp)).strip()
            except GpulockError:
                raise GpulockError(f"git repository {redact(repo)} has no revision "
                                   f"'{revision}'") from None
        return GitSource(repo, revision, commit, subdirectory)
    if "HEAD" not in refs:
        raise GpulockError(f"git repository {redact(repo)} has no HEAD")
    return GitSource(repo, None, refs["HEAD"], subdirectory)


def checkout(source: GitSource, cache_root: Path) -> Path:
    """A working tree of the source's commit, cloned once into the cache."""
    dest = cache_root / "git" / source.commit
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
        try:
            _git("clone", "--quiet", "--", source.url, str(tmp / "tree"), url=source.url)
            _git("checkout", "--quiet", source.commit, cwd=tmp / "tree")
            with contextlib.suppress(OSError):  # another process published it first
                (tmp / "tree").rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / source.subdirectory if source.subdirectory else dest
