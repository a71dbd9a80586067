"""Git LFS: a git model whose weights live in Git LFS is pinned and synced by its real bytes,
and a repository's `.lfsconfig` never sends git-lfs, or the credentials given for the
repository, to another host, never leaves a pointer in place of a file, never runs a command.

Real git and git-lfs, repositories over git+file:// and over HTTP on 127.0.0.1 (dumb git
with the Git LFS batch API beside it, `tests/support/lfs_server.py`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulock.sources.git import _include
from tests import test_trust
from tests.conftest import Project, Result
from tests.support.lfs_server import LfsGit, Recorder

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("git-lfs") is None,
                                reason="git and git-lfs are not both installed "
                                       "(apt-get install git git-lfs)")

canary = test_trust.canary  # the fixture: a folder beside the store that must stay unchanged
refused = test_trust.refused

WEIGHTS = bytes(range(256)) * 20  # kept in Git LFS: the repository holds a pointer


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
                          cwd=folder, capture_output=True, text=True, check=True).stdout


def _lfs_repo(repo: Path, lfsconfig: str | None = None,
              more: dict[str, bytes] | None = None) -> None:
    """A repository whose `*.bin` files are kept in Git LFS: `model.bin` (WEIGHTS) and the
    files `more` names, a config.json in git itself, and `.lfsconfig` when given."""
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "lfs", "install", "--local")
    _git(repo, "lfs", "track", "*.bin")
    for path, data in {"model.bin": WEIGHTS, "config.json": b"{}", **(more or {})}.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
    if lfsconfig is not None:
        (repo / ".lfsconfig").write_text(lfsconfig)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "weights")
    assert _git(repo, "show", "HEAD:model.bin").startswith("version https://git-lfs")


def _lose(repo: Path, data: bytes) -> None:
    """Delete the Git LFS object of `data` from `repo` (what git+file:// fetches from)."""
    oid = hashlib.sha256(data).hexdigest()
    (repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid).unlink()


def _write(project: Project, source: str, more: str = "") -> None:
    project.write(f'[project]\nname = "p"\npython = "3.11"\n[groups.main]\npackages = []\n'
                  f'[models.m]\nsource = "{source}"\n{more}')


def _store(project: Project, command: str, *args: str) -> Result:
    return project.gpulock(command, "--store", str(project.root / "store"), *args)


def _pinned_and_synced(project: Project, tmp_path: Path, path: str = "model.bin") -> None:
    """lock pins the real bytes of the model's `path` (not its pointer's); sync, from an
    empty cache (so the file is fetched again), lays them out; verify passes."""
    lock = project.lock()
    files = {f["path"]: f for f in lock.models[0].as_dict()["files"]}
    assert files[path]["size"] == len(WEIGHTS)
    assert files[path]["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    shutil.rmtree(tmp_path / "cache")
    result = _store(project, "sync", "--models-only", "--frozen")
    assert result.code == 0, result.err
    view = project.root / "store" / "v1" / "files" / "p" / "m"
    assert (view / path).read_bytes() == WEIGHTS
    assert (view / "config.json").read_bytes() == b"{}"
    checked = _store(project, "verify")
    assert checked.code == 0, checked.err + checked.out


def _served(tmp_path: Path, server: LfsGit, login: str = "deploy:hunter2@") -> str:
    """The repository at tmp_path/repo served by `server`: its git+ URL, with `login`."""
    url = server.bare(tmp_path / "repo", "repo.git")
    return f"git+{url.replace('://', f'://{login}')}"


# -- an LFS model's real bytes -------------------------------------------------------------

def test_an_lfs_model_over_file_is_pinned_and_synced_by_its_real_bytes(project: Project,
                                                                       tmp_path: Path):
    _lfs_repo(tmp_path / "repo")
    _write(project, f"git+{(tmp_path / 'repo').as_uri()}@main")
    _pinned_and_synced(project, tmp_path)


# Another "host" (port) that git-lfs is sent to: a hub's CDN named by the batch answer's
# download href, or a 307 redirect of the batch request itself. git-lfs goes there (the bytes
# are checked against their oid and then against the lock), without the credentials.
ELSEWHERE = {"the objects' href": "objects_at", "a redirect of the batch request": "batch_at"}


@pytest.mark.parametrize("how", ELSEWHERE.values(), ids=list(ELSEWHERE))
def test_lfs_credentials_reach_the_repositorys_host_and_no_other(how: str, project: Project,
                                                                tmp_path: Path):
    other = LfsGit(tmp_path / "served")
    server = LfsGit(tmp_path / "served", **{how: other.origin})
    _lfs_repo(tmp_path / "repo")
    _write(project, f"{_served(tmp_path, server)}@main")
    _pinned_and_synced(project, tmp_path)
    batches = [r for r in server.requests if r.path.endswith("/objects/batch")]
    assert batches and all(r.authorization for r in batches), server.requests
    assert other.requests, "git-lfs never went to the other host"
    assert [r for r in other.requests if r.authorization] == [], "credentials went elsewhere"


def test_an_lfs_server_that_drips_is_stopped_by_the_pull_s_deadline(
        project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A byte every 0.7 s never trips git-lfs's activity timeout (1 s); the pull as a whole
    # gets 30 x GPULOCK_STALL_TIMEOUT and its bytes' time at 1 KiB/s, then one sentence.
    monkeypatch.setenv("GPULOCK_STALL_TIMEOUT", "0.2")
    server = LfsGit(tmp_path / "served", drip=0.7)
    _lfs_repo(tmp_path / "repo")
    _write(project, f"{_served(tmp_path, server, login='')}@main")
    result = project.gpulock("lock")
    refused(result, "model 'm'", "git lfs took over", "was stopped")
    # The whole pull is stopped: git-lfs, which git started, is not left downloading.
    assert _running_in(tmp_path) == []


def test_a_terminated_lock_leaves_no_git_or_git_lfs_running(project: Project,
                                                              tmp_path: Path):
    # git runs in a process group of its own (Ctrl-C must not reach it half-way): SIGTERM,
    # which a stopped pod or `timeout` sends gpulock alone, stops it too.
    server = LfsGit(tmp_path / "served", drip=0.7)
    _lfs_repo(tmp_path / "repo")
    _write(project, f"{_served(tmp_path, server, login='')}@main")
    locking = subprocess.Popen([sys.executable, "-m", "gpulock", "lock", "--manifest",
                                str(project.manifest)], cwd=project.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any("lfs" in c for c in _running_in(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("lfs" in c for c in _running_in(tmp_path)), "git lfs never started"
    locking.send_signal(signal.SIGTERM)
    assert locking.wait(timeout=30) == -signal.SIGTERM
    time.sleep(0.5)  # killed processes leave /proc once reaped
    assert _running_in(tmp_path) == []


def _running_in(folder: Path) -> list[str]:
    """The processes whose working folder is below `folder`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(folder)):
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                             .decode(errors="replace"))
        except OSError:
            continue
    return found


SELECTIONS = {  # what the model takes of a repository whose other.bin's object is lost
    "exclude": ("", 'exclude = ["other.bin"]\n', "model.bin"),
    "subdirectory": ("#subdirectory=sub", "", "model.bin"),
}


@pytest.mark.parametrize("case", SELECTIONS, ids=list(SELECTIONS))
def test_only_the_lfs_files_a_model_selects_are_fetched(case: str, project: Project,
                                                        tmp_path: Path):
    fragment, more, path = SELECTIONS[case]
    other = b"other weights"
    repo = tmp_path / "repo"
    _lfs_repo(repo, more={"other.bin": other, "sub/model.bin": WEIGHTS,
                          "sub/config.json": b"{}"})
    _lose(repo, other)  # fetching it would fail: the model never asks for it
    _write(project, f"git+{repo.as_uri()}@main{fragment}", more)
    _pinned_and_synced(project, tmp_path, path)


def test_files_fetched_at_once_share_one_clone_and_one_lfs_pull(project: Project,
                                                                 tmp_path: Path):
    server = LfsGit(tmp_path / "served")
    _lfs_repo(tmp_path / "repo", more={f"w{i}.bin": bytes([i]) * 100_000 for i in range(7)})
    _write(project, f"{_served(tmp_path, server, login='')}@main")
    project.lock()
    shutil.rmtree(tmp_path / "cache")
    del server.requests[:]
    result = _store(project, "sync", "--models-only", "--frozen")  # 8 threads, 10 files
    assert result.code == 0, result.err
    assert [r.path for r in server.requests if r.path.endswith("/info/refs")] == [
        "/repo.git/info/refs"]
    assert len([r for r in server.requests if r.path.endswith("/objects/batch")]) == 1


def test_a_lost_lfs_object_is_refused_in_one_sentence(project: Project, tmp_path: Path,
                                                     canary: Any):
    repo = tmp_path / "repo"
    _lfs_repo(repo)
    _lose(repo, WEIGHTS)
    _write(project, f"git+{repo.as_uri()}@main")
    refused(project.gpulock("lock"), "model 'm'", "git lfs failed")
    assert not project.lock_path.exists()


def test_a_pointer_git_lfs_does_not_take_is_refused_never_pinned_as_the_file(
        project: Project, tmp_path: Path, canary: Any):
    repo = tmp_path / "repo"  # committed as it is (*.txt is no LFS file), no valid oid
    _lfs_repo(repo, more={"notes.txt": b"version https://git-lfs.github.com/spec/v1\n"
                                       b"oid sha256:nothex\nsize 5\n"})
    _write(project, f"git+{repo.as_uri()}@main")
    refused(project.gpulock("lock"), "model 'm'", "notes.txt", "a Git LFS pointer")
    assert not project.lock_path.exists()


# -- a hostile .lfsconfig ------------------------------------------------------------------

# What a repository's `.lfsconfig` may try ({elsewhere}: a recording server; {marker}: a file
# a command would create). git-lfs reads lfs.url, remote.*.lfsurl, lfs.pushurl,
# lfs.<url>.access and lfs.fetchinclude/exclude from it; gpulock's settings outrank them.
LFSCONFIGS = {
    "lfs.url": "[lfs]\n\turl = {elsewhere}/x\n",
    "remote.origin.lfsurl": '[remote "origin"]\n\tlfsurl = {elsewhere}/x\n',
    "lfs.url with basic access": '[lfs]\n\turl = {elsewhere}/x\n'
                                 '[lfs "{elsewhere}/x"]\n\taccess = basic\n',
    "lfs.fetchexclude": "[lfs]\n\tfetchexclude = *\n",
    "lfs.fetchinclude": "[lfs]\n\tfetchinclude = nothing/\n",
    "lfs.fetchinclude, a path no --include names": "[lfs]\n\tfetchinclude = nothing/\n",
    "a custom transfer agent": '[lfs]\n\tstandalonetransferagent = evil\n'
                               '[lfs "customtransfer.evil"]\n\tpath = sh\n'
                               "\targs = -c 'touch {marker}'\n",
    "all at once": "[lfs]\n\turl = {elsewhere}/x\n\tpushurl = {elsewhere}/push\n"
                   "\tfetchexclude = *\n\tstandalonetransferagent = evil\n"
                   '[remote "origin"]\n\tlfsurl = {elsewhere}/y\n'
                   '[lfs "customtransfer.evil"]\n\tpath = /usr/bin/touch\n\targs = {marker}\n',
}


@pytest.mark.parametrize("scheme", ["file", "http"])
@pytest.mark.parametrize("case", LFSCONFIGS, ids=list(LFSCONFIGS))
def test_a_repositorys_lfsconfig_never_moves_git_lfs_elsewhere_or_runs_a_command(
        case: str, scheme: str, project: Project, tmp_path: Path, canary: Any):
    elsewhere, marker = Recorder(), tmp_path / "marker"
    # A path with a comma makes gpulock pull every LFS file, by git-lfs's config alone.
    more = {"a,b.bin": b"ab"} if "no --include" in case else None
    _lfs_repo(tmp_path / "repo", LFSCONFIGS[case].format(elsewhere=elsewhere.origin,
                                                         marker=marker), more)
    if scheme == "file":
        _write(project, f"git+{(tmp_path / 'repo').as_uri()}@main")
    else:
        _write(project, f"{_served(tmp_path, LfsGit(tmp_path / 'served'))}@main")
    _pinned_and_synced(project, tmp_path)
    assert elsewhere.requests == [], "git-lfs took the repository's .lfsconfig's endpoint"
    assert not marker.exists(), "git-lfs ran the transfer agent the repository named"


def test_the_lfsconfig_transfer_agent_runs_when_git_config_names_it(tmp_path: Path):
    """The control of the test above: the agent the hostile `.lfsconfig` names does run
    when git's own config names it (so the marker would show it ran); git-lfs reads only a
    safe list of keys from `.lfsconfig`, and gpulock never hands git-lfs the file as config."""
    marker = tmp_path / "marker"
    _lfs_repo(tmp_path / "repo")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(tmp_path / "repo"), str(clone)], check=True,
                   env={**os.environ, "GIT_LFS_SKIP_SMUDGE": "1"})
    agent = LFSCONFIGS["a custom transfer agent"].format(marker=marker)
    (tmp_path / "agent.config").write_text(agent)
    subprocess.run(["git", "lfs", "pull"], cwd=clone, capture_output=True, check=False,
                   env={**os.environ, "GIT_CONFIG_GLOBAL": str(tmp_path / "agent.config")})
    assert marker.exists()


# -- which LFS files a pull names ----------------------------------------------------------

# File names git-lfs's --include could misread: wildmatch characters, commas, spaces, "!"/"#"
# (negation, comment in ignore files), a backslash, non-ASCII, the same name in folders.
NAMES = ["x.bin", "sub/x.bin", "sub/deep/y.bin", "b c.bin", "[1].bin", "sub/[1].bin",
         "w*.bin", "q?.bin", "a,b.bin", "!x.bin", "#x.bin", "back\\slash.bin", "\u00e9.bin",
         " lead.bin", "trail .bin"]


@pytest.fixture(scope="module")
def named_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("named") / "repo"
    _lfs_repo(repo, more={name: name.encode() for name in NAMES})
    return repo


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths=st.lists(st.sampled_from(NAMES), min_size=1, unique=True))
def test_the_include_of_a_pull_names_every_file_it_was_given(named_repo: Path,
                                                              paths: list[str]):
    include = _include(paths)
    listed = _git(named_repo, "lfs", "ls-files", "-n", *include).splitlines()
    assert set(paths) <= set(listed)  # ls-files filters as pull does, by the same --include
