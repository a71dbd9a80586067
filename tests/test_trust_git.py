"""Trust: a git repository (a model's or a package's) and a lock naming its files.

git reads configuration, hooks and fsmonitor commands from whatever repository it finds; a
model repository is someone else's, so every git command gpulock runs names its repository
explicitly and turns off what could run code. A checkout's folders are read without following
links, and a model file's bytes are copied from a regular file reached through real folders.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpulock.safeopen import Unsafe, open_regular
from tests import test_trust
from tests.conftest import Project, Result
from tests.support.git_http import DumbGit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

canary = test_trust.canary  # the fixture: a folder beside the store that must stay unchanged
refused = test_trust.refused


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
                          cwd=folder, capture_output=True, text=True, check=True).stdout


def _commit(repo: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> str:
    """Commit `files` and symbolic `links` (path -> target) to `repo` (made if new)."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
    for path, data in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
    for path, target in (links or {}).items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, repo / path)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "c")
    return _git(repo, "rev-parse", "HEAD").strip()


def _bare_lookalike(marker: Path, worktree: Path) -> dict[str, bytes]:
    """Files that make a folder look like a bare repository to git's discovery, whose config
    runs a command (fsmonitor) and moves the work tree elsewhere."""
    config = (f'[core]\n\trepositoryformatversion = 0\n\tbare = false\n'
              f'\tworktree = {worktree}\n\tfsmonitor = "touch {marker}; false"\n'
              f'\thooksPath = {worktree}\n')
    return {"HEAD": b"ref: refs/heads/main\n", "config": config.encode(),
            "objects/.keep": b"", "refs/heads/.keep": b"", "weights.bin": os.urandom(5000)}


def _write(project: Project, models: str, packages: str = "") -> None:
    project.write(f'[project]\nname = "p"\npython = "3.11"\n'
                  f'[groups.main]\npackages = [{packages}]\n{models}')


def _sync(project: Project, *args: str) -> Result:
    return project.gpulock("sync", "--models-only", "--store", str(project.root / "store"),
                           *args)


def _view(project: Project, model: str) -> Path:
    return project.root / "store" / "v1" / "files" / "p" / model


def _links_in(folder: Path) -> list[str]:
    return [os.path.join(parent, name) for parent, dirs, names in os.walk(folder)
            for name in [*dirs, *names] if os.path.islink(os.path.join(parent, name))]


# -- 1. a repository's own configuration never reaches git --------------------------------

@pytest.mark.parametrize("scheme", ["file", "http"])
def test_a_bare_repository_lookalike_in_a_git_model_folder_runs_nothing(
        scheme: str, project: Project, tmp_path: Path, canary: Any):
    marker = tmp_path / "marker"
    repo = tmp_path / "repo"
    files = {f"sub/{path}": data for path, data in
             _bare_lookalike(marker, repo / "sub").items()}
    _commit(repo, files)
    if scheme == "file":
        url = repo.as_uri()
    else:
        server = DumbGit(tmp_path / "served")
        url = server.bare(repo, "repo.git")
    _write(project, f'[models.m]\nsource = "git+{url}@main#subdirectory=sub"\n')
    result = _sync(project)
    assert not marker.exists(), "git ran the repository's fsmonitor command"
    assert result.code == 0, result.err  # the look-alike's files are files like any other
    for path, data in files.items():
        assert (_view(project, "m") / path.removeprefix("sub/")).read_bytes() == data


def test_a_bare_repository_lookalike_in_the_working_folder_is_not_read(
        project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    marker = tmp_path / "marker"
    real, other = tmp_path / "real", tmp_path / "other"
    commit = _commit(real, {"config.json": b"{}"})
    _commit(other, {"config.json": b'{"other": 1}'})
    here = tmp_path / "here"
    for path, data in _bare_lookalike(marker, here).items():
        (here / path).parent.mkdir(parents=True, exist_ok=True)
        (here / path).write_bytes(data)
    with (here / "config").open("a") as config:  # would send gpulock to another repository
        config.write(f'[url "{other.as_uri()}"]\n\tinsteadOf = {real.as_uri()}\n')
    monkeypatch.chdir(here)
    _write(project, f'[models.m]\nsource = "git+{real.as_uri()}@main"\n')
    result = _sync(project)
    assert result.code == 0, result.err
    assert project.lock_path.exists() and commit in project.lock_path.read_text()
    assert (_view(project, "m") / "config.json").read_bytes() == b"{}"
    assert not marker.exists()


def test_git_credentials_never_follow_a_redirect_to_another_host(project: Project,
                                                                  tmp_path: Path):
    repo = tmp_path / "repo"
    _commit(repo, {"config.json": b"{}"})
    serving = DumbGit(tmp_path / "served")
    serving.bare(repo, "repo.git")
    redirecting = DumbGit(tmp_path / "empty", redirect=serving.origin)
    host = redirecting.origin.removeprefix("http://")
    _write(project, f'[models.m]\nsource = "git+http://deploy:hunter2@{host}/repo.git@main"\n')
    result = _sync(project)
    assert redirecting.authorizations, "the repository's own host was sent no credentials"
    assert serving.authorizations == []
    refused(result, "model 'm'", "redirect")
    assert "hunter2" not in result.err + result.out


class _Private(DumbGit):
    """A repository that asks for a login (401, Basic) where a request brings none."""

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.headers.get("Authorization"):
            super()._handle(handler)
            return
        handler.send_response(401)
        handler.send_header("WWW-Authenticate", 'Basic realm="git"')
        handler.send_header("Content-Length", "0")
        handler.end_headers()


def test_a_netrc_password_never_reaches_git_over_plain_http(project: Project, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    repo = tmp_path / "repo"
    _commit(repo, {"config.json": b"{}"})
    server = _Private(tmp_path / "served")
    server.bare(repo, "repo.git")
    # curl reads 127.1 as 127.0.0.1 and finds that host's netrc login; gpulock's rule sees
    # a plain http:// host 127.1, where a netrc password (it names a host, not a scheme)
    # must not travel in clear text. git's curl reads ~/.netrc itself: the rule must reach it.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine 127.0.0.1 login deploy password hunter2\n")
    (home / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NETRC", raising=False)
    port = server.origin.rsplit(":", 1)[1]
    _write(project, f'[models.m]\nsource = "git+http://127.1:{port}/repo.git@main"\n')
    result = project.gpulock("lock")
    assert server.authorizations == []
    refused(result, "model 'm'")
    assert "hunter2" not in result.err + result.out


def test_git_reaches_a_repository_through_the_proxy_the_environment_names(
        project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.support.proxy import Proxy

    repo = tmp_path / "repo"
    _commit(repo, {"config.json": b"{}"})
    server = DumbGit(tmp_path / "served")
    url = server.bare(repo, "repo.git")
    proxy = Proxy()
    try:
        monkeypatch.setenv("http_proxy", proxy.url())  # curl reads only the lower-case one
        _write(project, f'[models.m]\nsource = "git+{url}@main"\n')
        assert project.gpulock("lock").code == 0
        assert any(sent.startswith(f"{url}/") for sent in proxy.forwarded), proxy.forwarded
    finally:
        proxy.close()


def test_a_git_server_that_stalls_is_given_up_after_the_stall_timeout(
        project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPULOCK_STALL_TIMEOUT", "1")
    server = DumbGit(tmp_path / "empty", stall=True)
    _write(project, f'[models.m]\nsource = "git+{server.origin}/repo.git@main"\n')
    refused(project.gpulock("lock"), "model 'm'", "too slow")


# -- 2. a subdirectory is a real folder of the checkout -----------------------------------

SUBDIRECTORIES = {
    "a link to another checkout": ("sub", "{elsewhere}", "a symbolic link"),
    "a link to .git": ("sub", ".git", "a symbolic link"),
    "a link to a plain folder": ("sub", "{plain}", "a symbolic link"),
    "a link inside a real folder": ("a/sub", "../b", "a symbolic link"),
    "the clone's .git": (".git", None, "'.git'"),
    "a folder that is not there": ("nothere", None, "is not there"),
    "a file": ("file.txt", None, "not a folder"),
}


@pytest.mark.parametrize("case", SUBDIRECTORIES, ids=list(SUBDIRECTORIES))
def test_a_git_model_subdirectory_that_is_not_a_real_folder_is_refused(
        case: str, project: Project, tmp_path: Path, canary: Any):
    subdirectory, target, words = SUBDIRECTORIES[case]
    elsewhere = tmp_path / "elsewhere"
    _commit(elsewhere, {"secret.txt": b"another checkout's file"})
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "secret.txt").write_bytes(b"outside")
    repo = tmp_path / "repo"
    links = {subdirectory: target.format(elsewhere=elsewhere, plain=plain)} if target else {}
    _commit(repo, {"file.txt": b"x", "b/weights.bin": b"w"}, links)
    _write(project, f'[models.m]\nsource = "git+{repo.as_uri()}@main'
                    f'#subdirectory={subdirectory}"\n')
    refused(_sync(project), "model 'm'", repr(subdirectory), words)
    assert not project.lock_path.exists()
    assert not (project.root / "store" / "v1" / "blobs").exists()


def test_a_package_subdirectory_that_is_a_link_is_refused(project: Project, tmp_path: Path,
                                                          canary: Any):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "setup.py").parent.mkdir(parents=True)
    (elsewhere / "setup.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w')\n")
    repo = tmp_path / "repo"
    _commit(repo, {"README": b"x"}, {"pkg": str(elsewhere)})
    _write(project, "", packages=f'"app @ git+{repo.as_uri()}@main#subdirectory=pkg"')
    refused(project.gpulock("lock"), "'pkg'", "a symbolic link")
    assert not (tmp_path / "marker").exists()


# -- 3. a hand-edited lock never reads through a link --------------------------------------

def _edit_model(project: Project, commit: str, files: list[dict[str, Any]]) -> None:
    data = tomllib.loads(project.lock_path.read_text())
    model = data["tool"]["gpulock"]["models"][0]
    model["commit"] = commit
    model["files"] = files
    project.lock_path.write_text(tomli_w.dumps(data))


def _hostile_commit(project: Project, tmp_path: Path) -> tuple[Path, str]:
    """A repository locked at a clean commit, and a later commit holding links out of it."""
    repo = tmp_path / "repo"
    _commit(repo, {"weights.bin": b"w" * 100})
    _write(project, f'[models.m]\nsource = "git+{repo.as_uri()}@main"\n')
    assert project.gpulock("lock").code == 0
    outside = project.root / "canary"
    hostile = _commit(repo, {}, {"notes.md": str(outside / "notes.md"),
                                 "nested": str(outside / "nested")})
    return outside, hostile


def test_a_hand_edited_lock_naming_a_link_in_a_git_checkout_is_refused(
        project: Project, tmp_path: Path, canary: Any):
    outside, hostile = _hostile_commit(project, tmp_path)
    data = (outside / "notes.md").read_bytes()
    _edit_model(project, hostile, [{"path": "notes.md", "size": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest()}])
    refused(_sync(project, "--frozen"), "model 'm'", "notes.md", "a symbolic link")
    assert stat.S_IMODE((outside / "notes.md").stat().st_mode) != 0o444
    assert _links_in(project.root / "store" / "v1" / "blobs") == []


def test_a_wrong_hash_through_a_linked_folder_never_prints_the_outside_files_hash(
        project: Project, tmp_path: Path, canary: Any):
    outside, hostile = _hostile_commit(project, tmp_path)
    data = (outside / "nested" / "weights.bin").read_bytes()
    _edit_model(project, hostile, [{"path": "nested/weights.bin", "size": len(data),
                                    "sha256": "0" * 64}])
    line = refused(_sync(project, "--frozen"), "model 'm'", "nested/weights.bin")
    assert hashlib.sha256(data).hexdigest() not in line


def test_a_model_file_that_differs_from_the_lock_names_only_the_expected_hash(
        project: Project, tmp_path: Path):
    repo = tmp_path / "repo"
    _commit(repo, {"weights.bin": b"w" * 100})
    _write(project, f'[models.m]\nsource = "git+{repo.as_uri()}@main"\n')
    lock = project.lock()
    commit = str(lock.models[0].commit)
    _edit_model(project, commit, [{"path": "weights.bin", "size": 100, "sha256": "1" * 64}])
    line = refused(_sync(project, "--frozen"), "model 'm'", "weights.bin", "1" * 64)
    assert hashlib.sha256(b"w" * 100).hexdigest() not in line


# -- the one way a source's file is opened -------------------------------------------------

_NAMES = st.sampled_from(["a", "b", ".git"])
# Links to folders and files inside the root, above it, outside it, to nothing, to itself.
_LINK_TARGETS = st.one_of(st.sampled_from(["a", "b"]),  # a sibling, most often
                          st.sampled_from(["../a", "a/b", "../../outside", "{outside}",
                                           "{outside}/b", "nowhere", ".", ".."]))
_PATHS = st.lists(st.one_of(_NAMES, _NAMES, st.sampled_from([".", "..", ""])), min_size=1,
                  max_size=3)


def _entries(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.tuples(st.just("file"), st.binary(max_size=8)),
                     st.tuples(st.just("link"), _LINK_TARGETS),
                     st.tuples(st.just("fifo")))
    if depth == 0:
        return leaf
    folder = st.tuples(st.just("dir"), st.dictionaries(_NAMES, _entries(depth - 1),
                                                       max_size=3))
    return st.one_of(leaf, folder, folder)


# A root with a folder `a`, a `b` that is most often a link (to `a`, often), and maybe more.
_TREES = st.builds(lambda a, b, more: {"a": ("dir", a), "b": b, **more},
                   st.dictionaries(_NAMES, _entries(1), min_size=1, max_size=3),
                   st.one_of(st.tuples(st.just("link"), _LINK_TARGETS), _entries(2)),
                   st.dictionaries(st.just(".git"), _entries(1), max_size=1))


def _build(folder: Path, tree: dict[str, Any], outside: Path) -> None:
    folder.mkdir(exist_ok=True)
    for name, entry in tree.items():
        path = folder / name
        if entry[0] == "file":
            path.write_bytes(entry[1])
        elif entry[0] == "link":
            os.symlink(entry[1].format(outside=outside), path)
        elif entry[0] == "fifo":
            os.mkfifo(path)
        else:
            _build(path, entry[1], outside)


def _expected(tree: dict[str, Any], parts: list[str]) -> bytes | None:
    """The model's answer: bytes only for a file reached through real folders."""
    entry: Any = ("dir", tree)
    for part in parts:
        entry = entry[1].get(part, ("none",)) if entry[0] == "dir" else ("none",)
    return entry[1] if entry[0] == "file" else None


_INSIDE = {"a": ("dir", {"a": ("file", b"inside")})}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_TREES, parts=_PATHS)
@example(tree={**_INSIDE, "b": ("link", "a")}, parts=["b", "a"])  # a linked folder
@example(tree={**_INSIDE, "b": ("link", "a/a")}, parts=["b"])  # a link to a file inside
@example(tree={**_INSIDE, "b": ("link", "{outside}")}, parts=["b", "a"])
@example(tree={**_INSIDE, "b": ("fifo",)}, parts=["b"])
@example(tree=_INSIDE, parts=["a", "a"])  # the plain file is read
def test_a_source_file_is_read_only_as_a_regular_file_below_real_folders(
        tree: dict[str, Any], parts: list[str]):
    with tempfile.TemporaryDirectory() as tmp:
        outside = Path(tmp) / "outside"
        _build(outside, {"a": ("file", b"SECRET"), "b": ("file", b"SECRET")}, outside)
        root = Path(tmp) / "root"
        _build(root, tree, outside)
        try:
            with open_regular(root, "/".join(parts)) as handle:
                found: bytes | None = handle.read()
        except Unsafe:
            found = None
        assert found == _expected(tree, parts)
