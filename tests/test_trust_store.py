"""Trust in the store's own files (issue 18, "someone who can write to the shared volume"):
a FIFO, a link or a hand-edited manifest found where gpulock keeps its files never hangs a
command, never leaks a file from outside the store, and never crashes one with a traceback.

Every hang case runs the CLI in its own process with a timeout, so a regression fails here
instead of hanging the suite; each one is then reported by `verify` and mended by
`verify --repair` (or by the next sync, for the view files it rewrites anyway).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulock.errors import GpulockError
from gpulock.safeopen import Unsafe, read_json, read_small
from gpulock.store import ENTRY_MANIFEST, Store
from tests import test_trust
from tests.conftest import Project, Result, dead_writers_part
from tests.support.dists import make_wheel
from tests.test_trust import refused, setup, synced
from tests.test_trust_cache import _signed, _synced

canary = test_trust.canary  # the fixture: nothing outside the store changed

HANG = 60  # seconds: a tiny project syncs in a few; a FIFO waited on never returns
WEIGHTS = os.urandom(40_000)


def run(project: Project, *args: str, timeout: int = HANG) -> Result:
    """The CLI in its own process, so that a command blocked on a FIFO fails the test."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gpulock", *args, "--manifest", str(project.manifest),
             "--store", str(project.root / "store")],
            capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        pytest.fail(f"'gpulock {' '.join(args)}' hung for {timeout}s on a planted file")
    return Result(done.returncode, done.stdout, done.stderr)


def v1(project: Project) -> Path:
    return project.root / "store" / "v1"


def entry(project: Project, name: str) -> Path:
    return next((v1(project) / "pkgs").glob(f"*-{name}-*"))


def plant_fifo(path: Path) -> None:
    if os.path.lexists(path):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def without_env(project: Project) -> None:
    """Remove the project's generations: its next sync reads every entry again."""
    shutil.rmtree(v1(project) / "envs" / "m")


def damaged(project: Project, *words: str) -> str:
    """`verify` names the damage (and does not hang): its report."""
    result = run(project, "verify")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    for word in words:
        assert word in result.err, (word, result.err)
    return result.err


def repaired(project: Project) -> None:
    result = run(project, "verify", "--repair")
    assert result.code == 0, result.err
    assert run(project, "verify").code == 0


# -- a plain https:// model file: its download lock and its xxh3 record ---------------------

@pytest.fixture
def weights(make_index, project: Project) -> str:
    """A project with one http:// model file, locked: its sha256."""
    index = make_index()
    make_wheel(index.folder, "dep", "1.0")
    (index.folder / "weights.bin").write_bytes(WEIGHTS)
    url = index.url.replace("/simple", "/files/weights.bin")
    setup(project, index.url, '"dep"', f'[models.w]\nsource = "{url}"\n')
    assert project.gpulock("lock").code == 0
    return hashlib.sha256(WEIGHTS).hexdigest()


def test_a_fifo_planted_as_a_downloads_lock_file_fails_the_sync_and_repair_removes_it(
        project: Project, weights: str, canary: Callable[[], None]):
    guard = v1(project) / "tmp" / "models" / f"{weights}.lock"
    plant_fifo(guard)
    refused(run(project, "sync"), f"{weights}.lock", "FIFO", "gpulock verify --repair")
    damaged(project, f"tmp/models/{weights}.lock")
    repaired(project)
    assert not os.path.lexists(guard) or stat.S_ISREG(os.lstat(guard).st_mode)
    synced(project)
    canary()


def test_a_fifo_planted_as_a_model_files_xxh3_record_is_damage_to_verify_fast(
        project: Project, weights: str):
    synced(project)
    record = v1(project) / "blobs" / "xxh3" / weights[:2] / weights[2:]
    plant_fifo(record)
    result = run(project, "verify", "--fast")
    assert result.code == 1 and weights in result.err and "FIFO" in result.err, result.err
    assert run(project, "verify", "--fast", "--repair").code == 0
    assert stat.S_ISREG(os.lstat(record).st_mode)
    assert run(project, "verify", "--fast").code == 0


# -- package entries: the manifest and scripts/ -----------------------------------------------

def test_a_fifo_planted_as_an_entrys_manifest_is_damage_never_a_hang(
        make_index, project: Project, canary: Callable[[], None]):
    index = make_index()
    make_wheel(index.folder, "dep", "1.0")
    setup(project, index.url, '"dep"')
    synced(project)
    manifest = entry(project, "dep") / ENTRY_MANIFEST
    plant_fifo(manifest)
    damaged(project, entry(project, "dep").name, "manifest")
    repaired(project)  # its generation's lock names the wheel it came from
    plant_fifo(manifest)
    without_env(project)
    refused(run(project, "sync"), "store entry", entry(project, "dep").name, "is damaged",
            "gpulock verify --repair")
    canary()


@pytest.fixture
def scripted(make_index, project: Project) -> tuple[Path, str]:
    """A project whose wheel ships a .data/scripts/ file, synced: its entry, and its
    index's URL (which also serves `dep`, for `grown`)."""
    index = make_index()
    make_wheel(index.folder, "tool", "1.0", files={
        "tool/__init__.py": b"",
        "tool-1.0.data/scripts/tool-run": b"#!python\nprint('tool')\n"})
    make_wheel(index.folder, "dep", "1.0")
    setup(project, index.url, '"tool"')
    synced(project)
    return entry(project, "tool"), index.url


def grown(project: Project, index_url: str) -> None:
    """The project with one more package: its next sync builds a new generation beside
    the current one (whose lock still names every wheel, for `verify --repair`)."""
    setup(project, index_url, '"tool", "dep"')


def _everything_under(folder: Path) -> Iterator[bytes]:
    for parent, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield path.read_bytes()


@pytest.mark.parametrize("plant", ["link to a secret", "fifo"])
def test_a_link_or_fifo_in_an_entrys_scripts_is_damage_and_never_copied_into_bin(
        plant: str, project: Project, scripted: tuple[Path, str], tmp_path: Path):
    tool = scripted[0]
    secret = tmp_path / "secret"
    secret.write_bytes(b"the secret " + os.urandom(16).hex().encode())
    secret.chmod(0o600)
    planted = tool / "scripts" / "leak"
    if plant == "fifo":
        plant_fifo(planted)
    else:
        os.symlink(secret, planted)
    without_env(project)
    refused(run(project, "sync"), "store entry", tool.name, "scripts/leak",
            "gpulock verify --repair")
    assert not any(secret.read_bytes() in data for data in _everything_under(v1(project)))
    assert not list((v1(project) / "envs").rglob("leak"))
    damaged(project, tool.name, "scripts/leak")
    repaired(project)  # fetched again from the origin its manifest keeps
    synced(project)
    assert not list((v1(project) / "envs").rglob("leak"))


# -- a manifest of the wrong shape --------------------------------------------------------------

def _edit(project: Project, name: str, change: Callable[[dict[str, Any]], Any]) -> None:
    manifest = entry(project, name) / ENTRY_MANIFEST
    data = json.loads(manifest.read_text())
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(change(data)))


WRONG = {
    "a list": lambda d: [],
    "a script that is a number": lambda d: {**d, "scripts": [1]},
    "no name": lambda d: {k: v for k, v in d.items() if k != "name"},
    "real_dirs a string": lambda d: {**d, "real_dirs": "site"},
    "a script whose module is code": lambda d: {
        **d, "scripts": [["tool-x", "os; os.system('touch /tmp/pwned') #", "main", "console"]]},
    "a built wheel named with a path": lambda d: {
        **d, "built": {"filename": "../x.whl", "sha256": "0" * 64, "size": 1}},
}


@pytest.mark.parametrize("wrong", WRONG, ids=list(WRONG))
def test_an_entry_manifest_of_the_wrong_shape_is_one_sentence_never_a_traceback(
        wrong: str, project: Project, scripted: tuple[Path, str],
        canary: Callable[[], None]):
    tool, index_url = scripted
    _edit(project, "tool", WRONG[wrong])
    grown(project, index_url)
    refused(project.gpulock("sync", "--store", str(project.root / "store")), "store entry",
            tool.name, "is damaged", "gpulock verify --repair")
    assert sorted(p.name for p in (v1(project) / "envs" / "m").iterdir()) == ["current",
                                                                           "gen-1"]
    damaged(project, tool.name)
    repaired(project)
    synced(project)
    canary()


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=8)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_FIELDS = ("name", "version", "scripts", "real_dirs", "origin", "built")


@pytest.fixture(scope="module")
def one_entry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str, dict[str, Any]]:
    """A store with one entry folder and a sound manifest to mutate."""
    store = Store(tmp_path_factory.mktemp("prop") / "store").open()
    key = "a" * 64 + "-demo-1.0"
    (store.entry_path(key)).mkdir()
    sound = {"name": "demo", "version": "1.0", "built": None, "real_dirs": ["torch/lib"],
             "scripts": [["demo", "demo.cli", "main", "console"]],
             "origin": {"name": "demo-1.0-py3-none-any.whl", "size": 10, "sha256": "b" * 64,
                        "url": "https://example.org/demo-1.0-py3-none-any.whl"}}
    return store, key, sound


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), value=_JSON, whole=st.none() | _JSON)
def test_any_entry_manifest_is_an_entry_of_the_right_types_or_one_damage_sentence(
        one_entry: tuple[Store, str, dict[str, Any]], field: str, value: Any, whole: Any):
    store, key, sound = one_entry
    data = {**sound, field: value} if whole is None else whole
    (store.entry_path(key) / ENTRY_MANIFEST).write_text(json.dumps(data))
    try:
        got = store.entry(key)
    except GpulockError as exc:
        assert str(exc).startswith(f"store entry {store.entry_path(key)} is damaged")
        assert str(exc).endswith("run 'gpulock verify --repair'")
        return
    assert isinstance(got.name, str) and isinstance(got.version, str)
    assert all(isinstance(d, str) for d in got.real_dirs)
    for name, module, attr, section in got.scripts:
        assert isinstance(name, str) and section in ("console", "gui")
        assert re.fullmatch(r"[\w.]+", module) and re.fullmatch(r"[\w.]+", attr)
    origin = store.origin(key)
    assert origin is None or (isinstance(origin.size, int) and isinstance(origin.url, str))


# -- push: an origin of the wrong shape --------------------------------------------------------

BAD_ORIGINS = {
    "size a string": {"size": "big"},
    "url a dict": {"url": {"host": "127.0.0.1"}},
    "sha256 a path": {"sha256": "../../etc/passwd"},
    "url ftp": {"url": "ftp://127.0.0.1/dep-1.0-py3-none-any.whl"},
}


@pytest.mark.parametrize("bad", BAD_ORIGINS, ids=list(BAD_ORIGINS))
def test_push_skips_an_entry_whose_origin_has_the_wrong_shape_and_names_it(
        bad: str, make_index, project: Project, tmp_path: Path):
    store, cache, secret = _synced(make_index, project, tmp_path)
    dep = next((store / "v1" / "pkgs").glob("*-dep-*"))
    manifest = dep / ENTRY_MANIFEST
    data = json.loads(manifest.read_text())
    data["origin"].update(BAD_ORIGINS[bad])
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(data))
    result = project.gpulock("push", "--store", str(store), "--key", str(secret))
    refused(result, "dep 1.0", dep.name, "gpulock verify --repair")
    assert f"{dep.name}.json" not in _signed(cache)
    assert project.gpulock("verify", "--store", str(store), "--repair").code == 0
    assert project.gpulock("push", "--store", str(store), "--key", str(secret)).code == 0
    assert f"{dep.name}.json" in _signed(cache)


# -- model views sync rewrites: the Hugging Face ref and tree, modelscope's .msc/.mdl ----------

def _hf_view(project: Project) -> Path:
    return v1(project) / "hf" / "models--org--m"


def _ms_view(project: Project) -> Path:
    return v1(project) / "modelscope" / "m" / "org" / "m"


VIEW_FILES: dict[str, Callable[[Project], Path]] = {
    "hf ref": lambda p: _hf_view(p) / "refs" / "main",
    "hf tree": lambda p: next((_hf_view(p) / "trees").glob("*.json")),
    "ms .msc": lambda p: _ms_view(p) / ".msc",
    "ms .mdl": lambda p: _ms_view(p) / ".mdl",
}


@pytest.mark.parametrize("what", VIEW_FILES, ids=list(VIEW_FILES))
def test_a_fifo_planted_as_a_view_file_sync_rewrites_is_replaced_never_waited_on(
        what: str, hub, modelscope, make_index, project: Project):
    hub.repo("org/m").commit({"config.json": b"{}"})
    modelscope.repos["org/m"] = {"master": {"config.json": b"{}"}}
    setup(project, make_index().url, models='[models.h]\nsource = "hf://org/m"\n'
          '[models.s]\nsource = "ms://org/m"\n')
    synced(project)
    planted = VIEW_FILES[what](project)
    plant_fifo(planted)
    assert run(project, "gc").code == 0  # gc reads refs too
    result = run(project, "sync")
    assert result.code == 0, result.err
    assert stat.S_ISREG(os.lstat(planted).st_mode)
    assert run(project, "verify").code == 0


def test_a_fifo_planted_as_a_claimed_partials_ranges_record_is_not_waited_on(
        make_index, project: Project):
    from gpulock.models.ranges import PARALLEL_FROM

    big = os.urandom(PARALLEL_FROM + 1)
    index = make_index()
    (index.folder / "big.bin").write_bytes(big)
    url = index.url.replace("/simple", "/files/big.bin")
    setup(project, index.url, models=f'[models.w]\nsource = "{url}"\n')
    assert project.gpulock("lock").code == 0
    sha = hashlib.sha256(big).hexdigest()
    part = dead_writers_part(v1(project) / "tmp" / "models", sha)
    part.write_bytes(big[:1000])
    plant_fifo(Path(f"{part}.ranges"))
    result = run(project, "sync", "--jobs", "4")
    assert result.code == 0, result.err
    assert (v1(project) / "files" / "m" / "w" / "big.bin").read_bytes() == big


# -- generations: their records ------------------------------------------------------------------

def test_a_fifo_planted_as_a_generation_record_is_damage_never_a_hang(
        make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "dep", "1.0")
    setup(project, index.url, '"dep"')
    synced(project)
    record = v1(project) / "envs" / "m" / "gen-1" / "gpulock-generation.json"
    plant_fifo(record)
    result = run(project, "sync")  # the fast path reads it first, then the full one
    assert result.code == 0, result.err
    damaged(project, "m/gen-1")
    refused(run(project, "gc"), "gen-1", "is damaged", "gpulock verify --repair")
    repaired(project)
    assert run(project, "gc").code == 0


# -- read_small / read_json themselves -----------------------------------------------------------

KINDS = ["file", "empty", "link to file", "fifo", "folder", "missing", "link to fifo",
         "dangling link"]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=64),
       limit=st.integers(min_value=0, max_value=80))
def test_read_small_returns_a_regular_files_bytes_within_its_limit_or_refuses(
        tmp_path: Path, kind: str, data: bytes, limit: int):
    folder = Path(os.path.join(tmp_path, os.urandom(6).hex()))
    folder.mkdir()
    path, target = folder / "f", folder / "target"
    target.write_bytes(data)
    if kind == "file":
        path.write_bytes(data)
    elif kind == "empty":
        path.write_bytes(b"")
        data = b""
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "link to file":
        path.symlink_to(target)
    elif kind == "link to fifo":
        os.mkfifo(folder / "pipe")
        path.symlink_to(folder / "pipe")
    elif kind == "dangling link":
        path.symlink_to(folder / "nowhere")
    if kind == "missing":
        with pytest.raises(FileNotFoundError):
            read_small(path, limit)
    elif kind in ("file", "empty") and len(data) <= limit:
        assert read_small(path, limit) == data
    else:
        with pytest.raises(Unsafe) as refusal:
            read_small(path, limit)
        assert str(refusal.value).startswith(str(path))


def test_read_json_refuses_what_is_not_json_in_one_sentence(tmp_path: Path):
    (tmp_path / "good").write_text('{"a": [1]}')
    (tmp_path / "bad").write_bytes(b"\xff{")
    (tmp_path / "deep").write_text("[" * 100_000 + "]" * 100_000)
    assert read_json(tmp_path / "good", 100) == {"a": [1]}
    for name in ("bad", "deep"):
        with pytest.raises(Unsafe, match=f"^{tmp_path / name} is not JSON"):
            read_json(tmp_path / name, 1 << 20)


# -- the rule that keeps it so ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
# Reads of files that are the user's own or the system's, never the store's.
OWN_FILES = {
    ("gpulock/uptodate.py", "manifest_path.read_text("),  # gpu.toml
    ("gpulock/uptodate.py", "lock_path.read_text("),  # the project's lock
    ("gpulock/env/generation.py", "_SITE_HOOK.read_text("),  # gpulock's own package file
}


def test_nothing_under_store_env_or_models_reads_a_store_file_by_path_read_text():
    """Every read of a store file goes through gpulock.safeopen (no link, no FIFO, bounded):
    `Path.read_text`/`read_bytes` follow links and wait on a FIFO."""
    found = []
    for folder in ("gpulock/store", "gpulock/env", "gpulock/models", "gpulock/uptodate.py"):
        top = ROOT / folder
        for path in sorted(top.rglob("*.py")) if top.is_dir() else [top]:
            relative = path.relative_to(ROOT).as_posix()
            for line in path.read_text().splitlines():
                if re.search(r"\.read_(?:text|bytes)\(", line) and not any(
                        relative == allowed and call in line for allowed, call in OWN_FILES):
                    found.append(f"{relative}: {line.strip()}")
    assert not found, "\n".join(found)


def test_repair_never_fetches_an_origin_other_than_the_wheel_its_entry_was_made_from(
        make_index, project: Project, tmp_path: Path):
    index = make_index()
    make_wheel(index.folder, "dep", "1.0", files={"dep/__init__.py": b"GOOD = 1\n"})
    setup(project, index.url, '"dep"')
    synced(project)
    without_env(project)  # no generation's lock vouches for the entry: only its manifest
    dep = entry(project, "dep")
    source = dep / "site" / "dep" / "__init__.py"
    source.chmod(0o644)
    source.write_bytes(b"DAMAGED = 1\n")  # so repair fetches the entry again
    # Someone who can write the volume aims the manifest's origin at a wheel of their own:
    # the same name and version, a valid file, its true sha256 and size.
    evil = make_wheel(tmp_path / "evil", "dep", "1.0", files={"dep/__init__.py": b"EVIL = 1\n"})
    _edit(project, "dep", lambda d: {**d, "origin": {
        "name": evil.name, "url": evil.as_uri(), "size": evil.stat().st_size,
        "sha256": hashlib.sha256(evil.read_bytes()).hexdigest()}})
    result = run(project, "verify", "--repair")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert not any(b"EVIL" in data for data in _everything_under(v1(project)))


# The folders the farm walks (a link deeper, inside a folder the farm links whole, is
# verify's to find: sync reads no more of an entry than it links).
PLANTED_IN_SITE = {"site itself": "site", "a top-level name": "site/evil"}


@pytest.mark.parametrize("where", PLANTED_IN_SITE, ids=list(PLANTED_IN_SITE))
def test_a_link_planted_in_an_entrys_site_is_damage_never_linked_into_the_farm(
        where: str, make_index, project: Project, tmp_path: Path):
    index = make_index()
    make_wheel(index.folder, "dep", "1.0")
    setup(project, index.url, '"dep"')
    synced(project)
    without_env(project)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("SECRET = 1\n")
    planted = entry(project, "dep") / PLANTED_IN_SITE[where]
    planted.parent.chmod(0o755)
    if planted.exists():
        shutil.rmtree(planted)
    planted.symlink_to(outside)
    refused(run(project, "sync"), "is damaged", "gpulock verify --repair")
    envs = v1(project) / "envs"
    assert not any(os.path.realpath(p).startswith(str(outside)) for p in envs.rglob("*"))
