"""Trust: hostile hubs, locks, wheels and planted links never reach outside the store.

Every attack here runs through the CLI against real servers on 127.0.0.1, with a canary
folder beside the store: the command must fail in one sentence naming what it refused, the
canary (and everything else outside the store) must stay byte-for-byte as it was, and a valid
sync and `verify` must succeed afterwards.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.conftest import Project, Result
from tests.support.canary import plant, state
from tests.support.dists import make_wheel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
WEIGHTS = os.urandom(50_000)


def refused(result: Result, *words: str) -> str:
    """The command failed with one sentence (no traceback) that holds `words`; return it."""
    assert result.code != 0, result.err
    assert "Traceback" not in result.err, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.err.rstrip().endswith(errors[0]), result.err
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.fixture
def canary(project: Project) -> Iterator[Callable[[], None]]:
    """A folder beside the store; the returned check says nothing outside the store changed."""
    plant(project.root / "canary")
    skip = ("store", "gpu.toml", "pylock.gpu.toml")
    before = state(project.root, skip)

    def unchanged() -> None:
        assert state(project.root, skip) == before

    yield unchanged
    unchanged()


def setup(project: Project, index_url: str, packages: str = "", models: str = "") -> None:
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\nindex = "{index_url}"\n'
                  f'[groups.main]\npackages = [{packages}]\n{models}')


def gpulock(project: Project, *args: str) -> Result:
    return project.gpulock(*args, "--store", str(project.root / "store"))


def synced(project: Project, *args: str) -> None:
    result = gpulock(project, "sync", *args)
    assert result.code == 0, result.err
    checked = gpulock(project, "verify")
    assert checked.code == 0, checked.err


def store_state(project: Project) -> dict[str, tuple[str, str]]:
    return state(project.root / "store")


# -- hubs that list files outside the snapshot ---------------------------------------------

HOSTILE_PATHS = [
    "../" * 6 + "canary/evil.txt",
    "../" * 7 + "canary/evil.txt",
    "{canary}/evil.txt",
    "a/../../../../../../../canary/evil.txt",
    "nul\x00byte.txt",
    "back\\..\\slash.txt",
    "./dot.txt",
    "a//b.txt",
    "line\nbreak.txt",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_a_hugging_face_repo_listing_a_file_outside_its_snapshot_is_refused_at_lock(
        hub, make_index, project, canary, path):
    path = path.format(canary=project.root / "canary")
    hub.repo("org/evil").commit({"config.json": b"{}", "model.safetensors": WEIGHTS,
                                 path: b"pwned"})
    setup(project, make_index().url, models='[models.evil]\nsource = "hf://org/evil"\n')
    refused(project.gpulock("lock"), "model 'evil'", repr(path), "nothing was pinned")
    assert not project.lock_path.exists()
    refused(gpulock(project, "sync"), "model 'evil'", repr(path))
    assert not (project.root / "store" / "v1" / "hf").exists()
    canary()
    hub.repo("org/evil").commit({"config.json": b"{}", "model.safetensors": WEIGHTS})
    synced(project)


@pytest.mark.parametrize("path", HOSTILE_PATHS[:6])
def test_a_modelscope_repo_listing_a_file_outside_its_snapshot_is_refused_at_lock(
        modelscope, make_index, project, canary, path):
    path = path.format(canary=project.root / "canary")
    modelscope.repos["org/evil"] = {"master": {"config.json": b"{}", path: b"pwned"}}
    setup(project, make_index().url, models='[models.evil]\nsource = "ms://org/evil"\n')
    refused(project.gpulock("lock"), "model 'evil'", repr(path))
    canary()
    modelscope.repos["org/evil"] = {"master": {"config.json": b"{}"}}
    synced(project)


def test_a_hub_commit_id_that_is_a_path_is_refused_before_it_is_used(hub, make_index, project,
                                                                     canary):
    hub.repo("org/evil").commit({"config.json": b"{}"})
    hub.rewrite = lambda kind, value: ({**value, "sha": "../../../canary"}
                                       if kind == "revision" else value)
    setup(project, make_index().url, models='[models.evil]\nsource = "hf://org/evil"\n')
    refused(project.gpulock("lock"), "model 'evil'", "'../../../canary'", "not a commit id")
    assert not any("canary" in r for r in hub.requests[1:])  # never sent on as a revision
    hub.rewrite = None
    synced(project)


def test_a_file_that_is_also_a_folder_in_the_listing_is_refused(hub, make_index, project,
                                                               canary):
    hub.repo("org/evil").commit({"a": b"file", "a/b": b"inside"})
    setup(project, make_index().url, models='[models.evil]\nsource = "hf://org/evil"\n')
    refused(project.gpulock("lock"), "model 'evil'", "'a' both as a file and as a folder")


# -- hand-edited or corrupted locks --------------------------------------------------------

def _model(lock: dict[str, Any]) -> dict[str, Any]:
    return lock["tool"]["gpulock"]["models"][0]


def _lfs_file(lock: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in _model(lock)["files"] if "sha256" in f)


def _wheel(lock: dict[str, Any]) -> dict[str, Any]:
    return lock["packages"][0]["wheels"][0]


LOCK_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "model file path": (lambda d: _lfs_file(d).update(path="../" * 6 + "canary/evil.txt"),
                        "models[0]: model 'weights'"),
    "model file absolute": (lambda d: _lfs_file(d).update(path="/etc/evil"), "models[0]"),
    "model name": (lambda d: _model(d).update(name="../../../canary"), "models[0]"),
    "model revision": (lambda d: _model(d).update(revision="../../../../../canary"),
                       "models[0]"),
    "model commit": (lambda d: _model(d).update(commit="../../../../canary"), "models[0]"),
    "model sha256": (lambda d: _lfs_file(d).update(sha256="../../../../../canary/evil"),
                     "models[0]"),
    "model source": (lambda d: _model(d).update(source="hf://../.."), "models[0]"),
    "model twice": (lambda d: d["tool"]["gpulock"]["models"].append(copy.deepcopy(_model(d))),
                    "pins model 'weights' twice"),
    "wheel filename": (lambda d: _wheel(d).update(name="../../../../../canary/app.whl"),
                       "package 'app'"),
    "wheel of another package": (lambda d: _wheel(d).update(name="other-1.0-py3-none-any.whl"),
                                 "package 'app'"),
    "wheel sha256": (lambda d: _wheel(d)["hashes"].update(sha256="../../../../canary"),
                     "package 'app'"),
    "package name": (lambda d: d["packages"][0].update(name="../app"), "package '../app'"),
    "package twice": (lambda d: d["packages"].append(copy.deepcopy(d["packages"][0])),
                      "package 'app' is listed twice"),
    "index with a password": (lambda d: d["packages"][0].update(
        index="https://user:hunter2@example.invalid/simple"), "package 'app'"),
    "target python": (lambda d: d["tool"]["gpulock"]["target"].update(python="3.10/../../x"),
                      "[tool.gpulock.target]"),
}


@pytest.fixture
def synced_project(hub, make_index, project: Project) -> Project:
    """A project with one wheel (and its console script) and one Hugging Face model, synced."""
    index = make_index()
    make_wheel(index.folder, "app", "1.0", entry_points="[console_scripts]\napp-cli = app:main\n")
    hub.repo("org/weights").commit({"config.json": b"{}", "model.safetensors": WEIGHTS})
    setup(project, index.url, '"app"', '[models.weights]\nsource = "hf://org/weights"\n')
    synced(project)
    return project


@pytest.mark.parametrize("edit", LOCK_EDITS, ids=list(LOCK_EDITS))
def test_a_hostile_lock_is_refused_before_anything_is_written(synced_project, canary, edit):
    project = synced_project
    change, names = LOCK_EDITS[edit]
    good = project.lock_path.read_text()
    data = tomllib.loads(good)
    change(data)
    project.lock_path.write_text(tomli_w.dumps(data))
    before = store_state(project)
    for args in (("--frozen",), ()):
        refused(gpulock(project, "sync", *args), str(project.lock_path), names)
        assert store_state(project) == before
    canary()
    project.lock_path.write_text(good)
    synced(project, "--frozen")
    assert "hunter2" not in project.lock_path.read_text()


# -- names in gpu.toml ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a/b", "..", ".", "/abs", "", ".hidden", 'x"\nENV EVIL=1',
                                  "-rf", "a" * 200])
def test_a_project_name_that_is_not_a_folder_name_is_refused_with_its_line(project, canary,
                                                                          name):
    project.write(f'[project]\nname = {json.dumps(name)}\npython = "{HOST_PYTHON}"\n'
                  '[groups.main]\npackages = []\n')
    for command in ("lock", "sync", "env", "status"):
        refused(gpulock(project, command) if command != "lock" else project.gpulock("lock"),
                f"{project.manifest}:2:1: name = {name!r}")
    assert not (project.root / "store" / "v1" / "envs").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "-x", "a\x00b"])
def test_a_model_name_that_is_not_a_folder_name_is_refused_with_its_line(project, canary, name):
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n'
                  f'[groups.main]\npackages = []\n[models.{json.dumps(name)}]\n'
                  'source = "hf://org/x"\n')
    refused(project.gpulock("lock"), f"{project.manifest}:6:1:", f"model name {name!r}")


@pytest.mark.parametrize("source, revision, problem", [
    ("ms://org/x", "../../../../../canary", "revision = '../../../../../canary'"),
    ("ms://org/x", "v1/../..", "revision = 'v1/../..'"),
    ("ms://org/x", "a/b", "revision = 'a/b'"),
    ("hf://org/x", "../main", "revision = '../main'"),
    ("hf://../..", "main", "source = 'hf://../..'"),
    ("hf://org/x--y", "main", "source = 'hf://org/x--y'"),
    ("ms://./x", "master", "source = 'ms://./x'"),
])
def test_a_model_revision_or_repository_that_is_a_path_is_refused_with_its_line(
        project, canary, source, revision, problem):
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n'
                  f'[groups.main]\npackages = []\n[models.x]\nsource = "{source}"\n'
                  f'revision = "{revision}"\n')
    refused(gpulock(project, "sync"), f"{project.manifest}:", problem)
    assert not (project.root / "store" / "v1" / "modelscope").exists()


# -- wheels whose scripts would replace the interpreter ------------------------------------

def _interpreter_digest(project: Project) -> str:
    python = os.path.realpath(project.root / "store" / "v1" / "envs" / "m" / "current" / "bin"
                              / "python")
    return hashlib.sha256(Path(python).read_bytes()).hexdigest()


@pytest.mark.parametrize("declared", [
    {"entry_points": "[console_scripts]\npython = evil:main\n"},
    {"entry_points": "[console_scripts]\npython3 = evil:main\n"},
    {"entry_points": f"[gui_scripts]\npython{HOST_PYTHON} = evil:main\n"},
    {"files": {"evil/__init__.py": b"", "evil-1.0.data/scripts/python": b"#!/bin/sh\nexit 0\n"}},
    {"entry_points": "[console_scripts]\n../../../../../canary/evil = evil:main\n"},
], ids=["console python", "console python3", "gui python3.X", "data script", "escaping"])
def test_a_wheel_whose_script_would_replace_the_interpreter_is_refused(make_index, project,
                                                                      canary, declared):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    make_wheel(index.folder, "evil", "1.0", **declared)
    setup(project, index.url, '"app"')
    synced(project)
    interpreter = _interpreter_digest(project)
    setup(project, index.url, '"app", "evil"')
    refused(gpulock(project, "sync"), "evil 1.0", "script")
    assert _interpreter_digest(project) == interpreter
    current = project.root / "store" / "v1" / "envs" / "m" / "current"
    assert not (current / "lib" / f"python{HOST_PYTHON}" / "site-packages" / "evil").exists()
    canary()
    setup(project, index.url, '"app"')
    synced(project)


def test_a_wheel_shipping_its_own_sitecustomize_is_refused(make_index, project, canary):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    make_wheel(index.folder, "sc", "1.0", files={"sitecustomize.py": b"print('mine')\n"})
    setup(project, index.url, '"app", "sc"')
    refused(gpulock(project, "sync"), "sc 1.0 ships sitecustomize.py")
    setup(project, index.url, '"app"')
    synced(project)


# -- links planted in the store ------------------------------------------------------------

@pytest.mark.parametrize("folder", ["tmp", "tmp/downloads", "tmp/models", "roots/tmp", "pkgs",
                                    "blobs/sha256", "hf", "roots/gc"])
def test_a_store_folder_replaced_by_a_link_is_never_written_or_deleted_through(
        synced_project, canary, folder):
    project = synced_project
    inside = project.root / "store" / "v1" / folder
    aside = inside.with_name(inside.name + ".moved")
    if inside.exists():
        shutil.move(inside, aside)
    os.symlink(project.root / "canary", inside)
    for command in ("sync", "gc", "verify"):
        refused(gpulock(project, command), str(inside), "symbolic link")
    canary()
    inside.unlink()
    if aside.exists():
        shutil.move(aside, inside)
    synced(project)


def test_a_link_planted_inside_a_model_view_is_not_written_through(synced_project, canary):
    project = synced_project
    repo = project.root / "store" / "v1" / "hf" / "models--org--weights"
    shutil.rmtree(repo / "blobs")
    os.symlink(project.root / "canary", repo / "blobs")
    refused(gpulock(project, "sync"), str(repo / "blobs"), "symbolic link")
    canary()
    (repo / "blobs").unlink()
    synced(project)


def test_an_entry_swapped_for_a_link_to_a_copy_is_found_by_verify_and_repaired(synced_project,
                                                                              canary):
    project = synced_project
    pkgs = project.root / "store" / "v1" / "pkgs"
    (entry,) = pkgs.iterdir()
    copy_of = project.root.parent / "outside-copy"
    shutil.copytree(entry, copy_of, symlinks=True)
    shutil.rmtree(entry)
    os.symlink(copy_of, entry)
    checked = gpulock(project, "verify")
    assert checked.code == 1
    assert f"damaged link pkgs/{entry.name}: is a symbolic link" in checked.err
    repaired = gpulock(project, "verify", "--repair")
    assert repaired.code == 0, repaired.err
    assert not entry.is_symlink() and copy_of.is_dir()
    assert gpulock(project, "verify").code == 0


@pytest.mark.parametrize("where", ["entry", "blob shard", "entry as a file"])
def test_a_link_planted_where_sync_reuses_work_is_never_read_through(hub, make_index, project,
                                                                    canary, where):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    hub.repo("org/weights").commit({"config.json": b"{}", "model.safetensors": WEIGHTS})
    models = '[models.weights]\nsource = "hf://org/weights"\n'
    setup(project, index.url, '"app"', models)
    synced(project)
    v1 = project.root / "store" / "v1"
    if where == "blob shard":
        planted = v1 / "blobs" / "sha256" / hashlib.sha256(WEIGHTS).hexdigest()[:2]
    else:
        (planted,) = (v1 / "pkgs").iterdir()
    outside = project.root.parent / f"outside-{planted.name}"
    shutil.copytree(planted, outside, symlinks=True)
    shutil.rmtree(planted)
    if where == "entry as a file":
        planted.write_text("x")
    else:
        os.symlink(outside, planted)
    before = state(outside, ())
    make_wheel(index.folder, "extra", "1.0")
    setup(project, index.url, '"app", "extra"', models)  # a new generation reuses app
    refused(gpulock(project, "sync"), str(planted), "which gpulock did not make",
            "verify --repair")
    checked = gpulock(project, "verify")
    assert checked.code == 1 and ("is a symbolic link" in checked.err
                                  or "is not a folder" in checked.err), checked.err
    repaired = gpulock(project, "verify", "--repair")
    assert repaired.code == 0 and "the store verifies" in repaired.err, repaired.err
    assert not planted.is_symlink() and state(outside, ()) == before
    synced(project)


@pytest.mark.parametrize("tamper", ["file to link", "extra file", "farm link", "view link",
                                    "current link", "pth in the farm", "edited script",
                                    "edited sitecustomize", "zeroed ref"])
def test_verify_flags_links_and_files_gpulock_did_not_make_and_repair_mends_them(
        synced_project, canary, tamper):
    project = synced_project
    v1 = project.root / "store" / "v1"
    (entry,) = (v1 / "pkgs").iterdir()
    site = v1 / "envs" / "m" / "current" / "lib" / f"python{HOST_PYTHON}" / "site-packages"
    evil = project.root / "canary" / "evil.txt"
    if tamper == "file to link":
        target = entry / "site" / "app" / "__init__.py"
        shutil.copy(target, project.root.parent / "copy.py")
        target.unlink()
        os.symlink(project.root.parent / "copy.py", target)
        expected = "site/app/__init__.py is a symbolic link"
    elif tamper == "extra file":
        (entry / "site" / "evil.pth").write_text("import os\n")
        expected = "site/evil.pth was not in the entry when it was published"
    elif tamper == "farm link":
        (site / "app").unlink()
        os.symlink(project.root / "canary", site / "app")
        expected = f"lib/python{HOST_PYTHON}/site-packages/app links outside"
    elif tamper == "view link":
        (link,) = (v1 / "hf" / "models--org--weights" / "snapshots").glob("*/config.json")
        link.unlink()
        os.symlink(evil, link)
        expected = "is a link that leads outside the store's blobs"
    elif tamper == "pth in the farm":
        (site / "zz-evil.pth").write_text("import os\n")
        expected = f"lib/python{HOST_PYTHON}/site-packages/zz-evil.pth was not made by gpulock"
    elif tamper == "edited script":
        (site.parents[2] / "bin" / "app-cli").write_text("#!/bin/sh\necho evil\n")
        expected = "bin/app-cli was changed"
    elif tamper == "zeroed ref":
        (v1 / "hf" / "models--org--weights" / "refs" / "main").write_text("0" * 40)
        expected = "refs/main: names no snapshot this store holds"
    elif tamper == "edited sitecustomize":
        with (site / "sitecustomize" / "__init__.py").open("a") as handle:
            handle.write("import os\n")
        expected = "sitecustomize/__init__.py was changed"
    else:
        (v1 / "envs" / "m" / "current").unlink()
        os.symlink(project.root / "canary", v1 / "envs" / "m" / "current")
        expected = "m/current: is not a link to one of its generations"
    checked = gpulock(project, "verify")
    assert checked.code == 1 and expected in checked.err, checked.err
    if tamper == "current link":
        (v1 / "envs" / "m" / "current").unlink()
        synced(project)
        return
    repaired = gpulock(project, "verify", "--repair")
    assert repaired.code == 0, repaired.err
    synced(project)
    assert (site / "app" / "__init__.py").read_text().startswith("VERSION")


@pytest.mark.parametrize("tamper", ["edited", "added"])
def test_an_extracted_archive_changed_after_extraction_is_found_and_extracted_again(
        make_index, project, canary, tamper):
    import io
    import tarfile

    index = make_index()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("scene/calib.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"K"))
    (index.folder / "scene.tar").write_bytes(buffer.getvalue())
    url = index.url.replace("/simple", "/files/scene.tar")
    setup(project, index.url, models=f'[models.scene]\nsource = "{url}"\nextract = true\n')
    synced(project)
    (tree,) = [p for p in (project.root / "store" / "v1" / "trees").iterdir() if p.is_dir()]
    if tamper == "edited":
        (tree / "scene" / "calib.txt").write_text("evil")
        expected = "scene/calib.txt was changed"
    else:
        (tree / "scene" / "evil.pth").write_text("import os\n")
        expected = "scene/evil.pth was not made by gpulock"
    checked = gpulock(project, "verify")
    assert checked.code == 1 and f"damaged tree {tree.name}: {expected}" in checked.err
    assert gpulock(project, "verify", "--repair").code == 0
    synced(project)
    view = project.root / "store" / "v1" / "files" / "m" / "scene" / "scene" / "calib.txt"
    assert view.read_bytes() == b"K"


def test_gc_and_verify_leave_an_archives_own_dot_files_and_bytecode_alone(make_index, project,
                                                                         canary):
    import io
    import tarfile

    index = make_index()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in {"scene/.gitattributes": b"*.bin lfs", "scene/.meta/info.json": b"{}",
                           "scene/code/helper.py": b"VALUE = 1\n"}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_000_000  # old: no writer, long quiet
            archive.addfile(info, io.BytesIO(data))
    (index.folder / "scene.tar").write_bytes(buffer.getvalue())
    url = index.url.replace("/simple", "/files/scene.tar")
    setup(project, index.url, models=f'[models.scene]\nsource = "{url}"\nextract = true\n')
    synced(project)
    view = project.root / "store" / "v1" / "files" / "m" / "scene" / "scene"
    subprocess.run([sys.executable, "-c", "import helper"], cwd=view / "code", check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    assert gpulock(project, "gc").code == 0
    assert (view / ".gitattributes").read_bytes() == b"*.bin lfs"
    assert (view / ".meta" / "info.json").is_file()
    checked = gpulock(project, "verify")
    assert checked.code == 0, checked.err


def test_a_damaged_model_root_is_named_by_verify(synced_project, canary):
    project = synced_project
    (project.root / "store" / "v1" / "roots" / "models" / "evil.json").write_text(
        '{"models": ["x"]}')
    checked = gpulock(project, "verify")
    assert checked.code == 1 and "damaged root roots/models: a model root is" in checked.err
    assert "Traceback" not in checked.err


@pytest.mark.parametrize("plant", ["a project that is a link", "a file among the projects",
                                   "a dot-file among the blobs"])
def test_verify_names_what_gpulock_did_not_put_among_the_projects_and_the_blobs(
        synced_project, canary, plant):
    v1 = synced_project.root / "store" / "v1"
    if plant == "a project that is a link":
        os.symlink(synced_project.root / "canary", v1 / "envs" / "evil")
        expected = "generation evil: its folder in envs/ is not one gpulock made"
    elif plant == "a file among the projects":
        (v1 / "envs" / "stray").write_text("x")
        expected = "generation stray: its folder in envs/ is not one gpulock made"
    else:
        shard = next((v1 / "blobs" / "sha256").iterdir())
        (shard / ".planted").write_text("x")
        expected = f"blob {shard.name}.planted: is not a blob gpulock stored"
    checked = gpulock(synced_project, "verify")
    assert checked.code == 1 and expected in checked.err, checked.err
    assert "Traceback" not in checked.err


def test_a_modelscope_index_that_would_run_code_is_found_by_verify(modelscope, make_index,
                                                                    project, canary):
    modelscope.repos["iic/tiny"] = {"master": {"model.pt": WEIGHTS}}
    setup(project, make_index().url, models='[models.t]\nsource = "ms://iic/tiny"\n')
    synced(project)
    mdl = project.root / "store" / "v1" / "modelscope" / "m" / "iic" / "tiny" / ".mdl"
    mdl.write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")  # what pickle.loads would run
    checked = gpulock(project, "verify")
    assert checked.code == 1 and "iic/tiny/.mdl: is not a plain pickle" in checked.err
    assert gpulock(project, "verify", "--repair").code == 0
    synced(project)
    assert not (project.root / "pwned").exists()


# -- credentials ---------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55"


def _secret_anywhere(root: Path) -> list[str]:
    """Files under `root` (links not followed) that hold the secret, in any form."""
    needles = [SECRET.encode(), SECRET.replace("-", "%2D").encode()]
    found = []
    for parent, _dirs, names in os.walk(root):
        for name in names:
            path = Path(parent) / name
            if path.is_symlink() or path.name == "gpu.toml":
                continue
            data = path.read_bytes()
            if any(n in data for n in needles) or SECRET in name:
                found.append(str(path))
    return found


def test_index_credentials_in_gpu_toml_are_used_but_never_written_or_printed(
        make_index, project, tmp_path):
    index = make_index(auth=("user", SECRET))
    make_wheel(index.folder, "app", "1.0", requires=["dep"])
    make_wheel(index.folder, "dep", "1.0")
    secured = index.url.replace("http://", f"http://user:{SECRET}@")
    setup(project, secured, '"app"', f'[models.blob]\nsource = "{secured[:-7]}/files/'
                                      'dep-1.0-py3-none-any.whl"\n')
    outputs = [project.gpulock("lock"), gpulock(project, "sync"), gpulock(project, "status"),
               gpulock(project, "env"), gpulock(project, "verify"), gpulock(project, "gc")]
    assert all(r.code == 0 for r in outputs), [r.err for r in outputs]
    assert not any(SECRET in r.out + r.err for r in outputs)
    assert _secret_anywhere(tmp_path) == []
    assert "Basic " in " ".join(index.authorizations)
    assert (project.root / "store" / "v1" / "files" / "m" / "blob").is_dir()
    # A wrong password is one sentence that names the index, not the password.
    setup(project, index.url.replace("http://", "http://user:wrong-one@"), '"app", "dep"')
    err = refused(project.gpulock("lock"), "refused access", index.url)
    assert "wrong-one" not in err


def test_netrc_gives_a_private_index_its_credentials(make_index, project, tmp_path, monkeypatch):
    index = make_index(auth=("user", SECRET))
    make_wheel(index.folder, "app", "1.0")
    setup(project, index.url, '"app"')
    refused(project.gpulock("lock"), "refused access")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login user password {SECRET}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    from gpulock import credentials

    credentials.forget()
    synced(project)
    assert _secret_anywhere(project.root) == []


def test_a_store_path_that_path_variables_cannot_hold_is_refused(project, canary):
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n'
                  '[groups.main]\npackages = []\n')
    for command in ("sync", "env", "status"):
        refused(project.gpulock(command, "--store", str(project.root / "co:lon")),
                "PATH and PYTHONPATH cannot hold")
    assert not (project.root / "co:lon").exists()


def test_netrc_passwords_never_travel_in_clear_text(tmp_path, monkeypatch):
    from gpulock import credentials

    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine pypi.example login user password {SECRET}\n"
                     f"machine localhost login me password {SECRET}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    credentials.forget()
    try:
        assert credentials.login_for("https://pypi.example:8443/simple/") == ("user", SECRET)
        assert credentials.login_for("http://pypi.example/files/app.whl") is None
        assert credentials.login_for("http://localhost:8000/simple/") == ("me", SECRET)
    finally:
        credentials.forget()


def test_keyring_gives_credentials_when_the_index_asks(make_index, project, monkeypatch):
    import types

    index = make_index(auth=("user", SECRET))
    make_wheel(index.folder, "app", "1.0")
    asked: list[str] = []

    def get_credential(service: str, username: str | None) -> object:
        asked.append(service)
        return types.SimpleNamespace(username="user", password=SECRET)

    monkeypatch.setitem(sys.modules, "keyring", types.SimpleNamespace(
        get_credential=get_credential))
    setup(project, index.url, '"app"')
    synced(project)
    assert asked and all(SECRET not in s for s in asked)
    assert _secret_anywhere(project.root) == []


def test_a_token_is_not_sent_to_another_host_after_a_redirect():
    from gpulock import credentials
    from gpulock.credentials import login_for, remember

    remember(f"https://user:{SECRET}@index.example/simple")
    assert login_for("https://index.example/files/x.whl") == ("user", SECRET)
    assert login_for("https://cdn.example/files/x.whl") is None
    assert login_for("http://index.example/simple") is None  # another scheme: another origin
    credentials.forget()


# -- gc and sync on one store --------------------------------------------------------------

def _dead_writer() -> str:
    """A writer tag (host~pid~random) whose process has exited."""
    import subprocess

    from gpulock.store.scratch import HOST

    gone = subprocess.Popen(["true"])
    gone.wait()
    return f"{HOST}~{gone.pid}~0badc0de"


def _leftovers(v1: Path) -> list[Path]:
    """What syncs killed at every step leave behind."""
    dead = _dead_writer()
    sha = "ab" * 32
    made = [
        v1 / "tmp" / "downloads" / sha / f"wheel.part.{dead}",
        v1 / "tmp" / "downloads" / sha / dead / "app-1.0-py3-none-any.whl",
        v1 / "tmp" / "models" / f"{sha}.part.{dead}",
        v1 / "tmp" / f"build-app.{dead}.x1" / "app-1.0-py3-none-any.whl",
        v1 / "tmp" / f"{sha}-app-1.0.{dead}.x2" / "site" / "app.py",
        v1 / "roots" / "tmp" / f"{dead}.json",
        v1 / "roots" / "gc" / dead,
        v1 / "envs" / "m" / f".building-{dead}-x3" / "bin" / "app",
        v1 / "hf" / "models--org--weights" / "snapshots" / f".building-{dead}-x4" / "x",
    ]
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"pkgs": [], "models": []}' if path.suffix == ".json" else "left")
    return made


def test_gc_dry_run_changes_nothing_at_all(synced_project, canary):
    project = synced_project
    _leftovers(project.root / "store" / "v1")
    before = store_state(project)
    result = gpulock(project, "gc", "--keep", "1", "--dry-run", "-v")
    assert result.code == 0 and "would free" in result.err, result.err
    assert store_state(project) == before


def test_gc_collects_every_leftover_of_a_dead_sync_and_nothing_live(synced_project, canary):
    project = synced_project
    left = _leftovers(project.root / "store" / "v1")
    result = gpulock(project, "gc", "--keep", "1")
    assert result.code == 0, result.err
    assert [p for p in left if p.exists()] == []
    assert "9 leftover(s) of killed syncs" in result.err
    synced(project)


def test_syncs_of_several_projects_and_a_gc_loop_on_one_store_all_succeed(make_index, tmp_path,
                                                                         canary, project):
    import subprocess
    import threading

    index = make_index()
    for version in ("1.0", "2.0"):
        make_wheel(index.folder, "shared", version, files={
            "shared/__init__.py": f"VERSION = {version!r}\n".encode(),
            "shared/blob.bin": os.urandom(2**20)})
        for i in range(3):
            make_wheel(index.folder, f"lib{i}", version, requires=[f"shared=={version}"],
                       files={f"lib{i}/__init__.py": f"VERSION = {version!r}\n".encode()})
    store = tmp_path / "shared-store"
    manifests = {}
    for i in range(3):
        for version in ("1.0", "2.0"):
            folder = tmp_path / f"p{i}" / version
            folder.mkdir(parents=True)
            (folder / "gpu.toml").write_text(
                f'[project]\nname = "p{i}"\npython = "{HOST_PYTHON}"\nindex = "{index.url}"\n'
                f'[groups.main]\npackages = ["lib{i}=={version}"]\n')
            manifests[(i, version)] = folder / "gpu.toml"
            assert project.gpulock("lock", "--manifest", str(folder / "gpu.toml")).code == 0
    env = {**os.environ, "GPULOCK_NO_FLOCK": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpulock", *args, "--store", str(store)],
                              capture_output=True, text=True, env=env, timeout=300)

    failures: list[str] = []
    collections = []
    done = threading.Event()

    def syncs(i: int) -> None:
        for version in ("1.0", "2.0", "1.0", "2.0"):
            ran = cli("sync", "--frozen", "--manifest", str(manifests[(i, version)]))
            if ran.returncode:
                failures.append(f"p{i} {version}: {ran.stderr}")

    def collector() -> None:
        while not done.is_set():
            if not (store / "v1" / "envs").is_dir():
                continue  # gc of a store that no sync has made yet is an error
            ran = cli("gc", "--keep", "1")
            collections.append(ran.returncode)
            if ran.returncode:
                failures.append(f"gc: {ran.stderr}")

    workers = [threading.Thread(target=syncs, args=(i,)) for i in range(3)]
    gc_loop = threading.Thread(target=collector)
    gc_loop.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    gc_loop.join()
    assert failures == [] and len(collections) >= 2
    for i in range(3):
        site = store / "v1" / "envs" / f"p{i}" / "current" / "lib" / f"python{HOST_PYTHON}" \
            / "site-packages"
        probe = subprocess.run([sys.executable, "-c", f"import lib{i}, shared; "
                                f"print(lib{i}.VERSION, shared.VERSION)"],
                               capture_output=True, text=True, env={**env, "PYTHONPATH": str(site)})
        assert probe.stdout.split() == ["2.0", "2.0"], probe.stderr
    assert cli("verify").returncode == 0
    assert cli("gc", "--keep", "1").returncode == 0
    assert cli("verify").returncode == 0


# -- servers that stall --------------------------------------------------------------------

@pytest.mark.parametrize("trickle, words", [(0.2, "sent only"), (3.0, "sent nothing")])
def test_a_wheel_server_that_stalls_or_trickles_is_given_up_in_one_sentence(
        make_index, project, canary, monkeypatch, trickle, words):
    import time

    index = make_index()
    make_wheel(index.folder, "app", "1.0", files={"app/__init__.py": os.urandom(8192)})
    setup(project, index.url, '"app"')
    project.lock()
    index.trickle = trickle
    monkeypatch.setenv("GPULOCK_STALL_TIMEOUT", "1")
    started = time.monotonic()
    refused(gpulock(project, "sync"), "app 1.0:", f"{index.origin}/files/app-1.0", words,
            "GPULOCK_STALL_TIMEOUT")
    assert time.monotonic() - started < 30
    index.trickle = 0
    synced(project)


def test_a_hub_that_trickles_a_model_file_is_given_up_in_one_sentence(hub, make_index, project,
                                                                     canary, monkeypatch):
    hub.repo("org/weights").commit({"model.safetensors": WEIGHTS})
    setup(project, make_index().url, models='[models.weights]\nsource = "hf://org/weights"\n')
    project.lock()
    hub.trickle = 0.2
    monkeypatch.setenv("GPULOCK_STALL_TIMEOUT", "1")
    refused(gpulock(project, "sync"), "model 'weights': model.safetensors", "sent only")
    hub.trickle = 0
    synced(project)


def test_a_hub_that_is_silent_or_pages_forever_at_lock_is_given_up_in_one_sentence(
        hub, make_index, project, canary, monkeypatch):
    import time

    hub.repo("org/weights").commit({"config.json": b"{}"})
    setup(project, make_index().url, models='[models.weights]\nsource = "hf://org/weights"\n')
    monkeypatch.setenv("GPULOCK_STALL_TIMEOUT", "1")
    hub.api_silence = 5
    started = time.monotonic()
    refused(project.gpulock("lock"), "model 'weights' (hf://org/weights@main)",
            "sent nothing for 2 s")
    assert time.monotonic() - started < 20
    hub.api_silence = 0
    hub.endless = True
    refused(project.gpulock("lock"), "model 'weights'", "listed 'config.json' twice")
    assert len(hub.requests) < 100
    hub.endless = False
    # One page at a time, each just in time: the whole listing has 30 stall periods.
    hub.repo("org/weights").commit({f"f{i}.json": b"{}" for i in range(200)})
    # Each page 0.25 s after the last, half the 0.5 s a page may take (margin for a loaded
    # machine); 200 pages would take 50 s.
    hub.page_size, hub.api_silence = 1, 0.25
    monkeypatch.setenv("GPULOCK_STALL_TIMEOUT", "0.25")
    started = time.monotonic()
    refused(project.gpulock("lock"), "model 'weights'", "took over 7.5 s")
    assert time.monotonic() - started < 20
    hub.page_size, hub.api_silence = 1000, 0
    monkeypatch.delenv("GPULOCK_STALL_TIMEOUT")
    project.lock()


# -- careless or hostile input -------------------------------------------------------------

def _manifest(body: str) -> str:
    return f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n[groups.main]\npackages = []\n{body}'


@pytest.mark.parametrize("text, words", [
    (_manifest("x = " + "[" * 10_000 + "]" * 10_000 + "\n"), ["gpu.toml:6:", "nested more"]),
    (_manifest("x = " + "{a = " * 5_000 + "1" + "}" * 5_000 + "\n"), ["gpu.toml:6:",
                                                                       "nested more"]),
    (_manifest('[groups.more]\npackages = [\n  "a",\n  "b",\n'), ["gpu.toml:7:12:",
                                                                    "never closed"]),
    (_manifest('[verify]\nimports = ["os; import shutil"]\n'), ["gpu.toml:7:", "module name"]),
    (_manifest("x = '\x00'\n"), ["gpu.toml:6:", "invalid TOML"]),
    ('[project]\nname = "m"\npython = "3.1"\n', ["gpu.toml:3:1:", "3.8 to 3.15"]),
    ('[project]\nname = "m"\npython = "3.100"\n', ["gpu.toml:3:1:"]),
    ('[project]\nname = "m"\npython = "4.0"\n', ["gpu.toml:3:1:"]),
], ids=["deep arrays", "deep tables", "unclosed at the end", "verify code", "nul", "python 3.1",
        "python 3.100", "python 4"])
def test_a_careless_or_hostile_manifest_is_one_sentence_with_its_place(project, canary, text,
                                                                      words):
    project.manifest.write_text(text)
    for command in ("lock", "sync"):
        refused(gpulock(project, command) if command == "sync" else project.gpulock("lock"),
                *words)


def test_a_huge_manifest_or_lock_is_refused_without_reading_it_all(project, canary):
    project.manifest.write_text(_manifest("# " + "x" * 2**21 + "\n"))
    refused(project.gpulock("lock"), "larger than 1 MiB")
    project.manifest.write_text(_manifest(""))
    project.lock()
    text = project.lock_path.read_text()
    project.lock_path.write_text(text + "x = " + "[" * 5_000 + "]" * 5_000 + "\n")
    refused(gpulock(project, "sync", "--frozen"), "too deeply")


def test_env_output_quotes_every_value_for_its_format(project, canary, tmp_path):
    import subprocess

    from gpulock.env.exports import render

    store = tmp_path / "a store with 'quotes', \"double\", $dollar and \\back"
    project.manifest.write_text(_manifest(""))
    result = project.gpulock("env", "--store", str(store))
    assert result.code == 0
    shown = subprocess.run(["bash", "-c", f'{result.out}\nprintf %s "$PYTHONPATH"'],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert shown.stdout.startswith(str(store)), shown.stdout
    dockerfile = project.gpulock("env", "--store", str(store), "--format", "dockerfile").out
    assert '\\"double\\", \\$dollar and \\\\back' in dockerfile
    assert all(line.startswith("ENV ") for line in dockerfile.splitlines())
    refused(project.gpulock("env", "--store", str(store), "--format", "dotenv"), "'$'")
    values = json.loads(project.gpulock("env", "--store", str(store), "--format", "json").out)
    assert values["PYTHONPATH"].startswith(str(store))
    with pytest.raises(Exception, match="cannot hold"):
        render({"PYTHONPATH": "/a\nENV EVIL=1"}, "dockerfile")


# -- found by a hostile review -------------------------------------------------------------

def test_gc_never_lists_or_removes_through_a_link_planted_in_a_model_view(synced_project,
                                                                         canary):
    project = synced_project
    repo = project.root / "store" / "v1" / "hf" / "models--evil--x"
    repo.mkdir()
    for name in ("snapshots", "blobs", "refs", "trees"):
        os.symlink(project.root / "canary", repo / name)
    for args in (("--dry-run",), ()):
        assert gpulock(project, "gc", "-v", *args).code == 0
    canary()
    checked = gpulock(project, "verify")
    assert checked.code == 1 and "models--evil--x/snapshots" in checked.err


def test_a_writer_in_another_pid_namespace_of_this_host_is_not_taken_for_dead(tmp_path):
    import subprocess

    from gpulock.store.scratch import HOST, abandoned

    gone = subprocess.Popen(["true"])
    gone.wait()
    host, _, namespace = HOST.rpartition("_")
    theirs = tmp_path / f"wheel.part.{host}_{int(namespace or 0) + 1}~{gone.pid}~0badc0de"
    ours = tmp_path / f"wheel.part.{HOST}~{gone.pid}~0badc0de"
    theirs.touch()
    ours.touch()
    assert abandoned(ours)  # this namespace's process table says the writer is gone
    assert not abandoned(theirs)  # another namespace's pid says nothing: wait for silence


def test_a_long_sync_on_another_host_keeps_its_work_while_its_heartbeat_is_fresh(
        synced_project, canary):
    project = synced_project
    v1 = project.root / "store" / "v1"
    writer = "podB_1~4242"
    work = v1 / "tmp" / f"build-big.{writer}~0badc0de.x1"
    work.mkdir()
    root = v1 / "roots" / "tmp" / f"{writer}~0badc0de.json"
    root.write_text('{"pkgs": [], "digests": [], "models": []}')
    an_hour_ago = (time.time() - 3600,) * 2
    os.utime(work, an_hour_ago)  # a CUDA build that has not written for an hour
    assert gpulock(project, "gc").code == 0
    assert work.is_dir()  # its writer's root is fresh: the build is alive
    os.utime(root, an_hour_ago)  # the writer stopped beating: it is gone
    assert gpulock(project, "gc").code == 0
    assert not work.exists() and not root.exists()


def test_an_interpreter_planted_in_the_store_is_never_run(synced_project, canary):
    project = synced_project
    evil = project.root.parent / "evil-python"
    evil.write_text(f"#!/bin/sh\ntouch {project.root / 'canary' / 'ran'}\nexit 1\n")
    evil.chmod(0o755)
    planted = {HOST_PYTHON: {"path": str(evil), "version": "3.99.0",
                             "mtime_ns": evil.stat().st_mtime_ns}}
    (project.root / "store" / "v1" / "interpreters.json").write_text(json.dumps(planted))
    shutil.rmtree(project.root / "store" / "v1" / "envs")  # a first sync must find Python
    synced(project)
    assert os.readlink(project.root / "store" / "v1" / "envs" / "m" / "current" / "bin" /
                       "python") != str(evil)


def test_secrets_stay_out_of_every_message(project, make_index, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login deploy password correct horse {SECRET}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    index = make_index(auth=("deploy", SECRET))
    make_wheel(index.folder, "app", "1.0")
    setup(project, index.url, '"app"')
    result = project.gpulock("lock")
    assert "cannot be parsed (line" in result.err and SECRET not in result.err
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n[groups.main]\n'
                  f'packages = "app @ git+https://deploy:{SECRET}@host/r.git"\n')
    assert SECRET not in refused(project.gpulock("lock"), "must be a list")
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n'
                  f'index = "htps://deploy:S3C@{SECRET}@host/simple"\n')
    assert SECRET not in refused(project.gpulock("lock"), "index")


@pytest.mark.parametrize("what", ["wheel", "model"])
def test_a_server_sending_more_than_the_lock_says_is_cut_off(make_index, project, canary,
                                                             what):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    (index.folder / "w.bin").write_bytes(b"x" * 700)
    url = index.url.replace("/simple", "/files/w.bin")
    setup(project, index.url, '"app"', f'[models.w]\nsource = "{url}"\n')
    project.lock()
    grown = index.folder / ("w.bin" if what == "model" else "app-1.0-py3-none-any.whl")
    grown.write_bytes(grown.read_bytes() + os.urandom(3 * 2**20))
    err = refused(gpulock(project, "sync"), "than the" if what == "wheel" else "larger than")
    assert "lock says" in err
    store = project.root / "store" / "v1"
    assert sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) < 2**20


class _Canned:
    """A server that answers every GET with one body: an index or hub gone wrong."""

    def __init__(self, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        from tests.support.loopback import Loopback

        outer = self

        class Server(Loopback):
            def _handle(self, handler: Any) -> None:
                handler.send_response(200)
                handler.send_header("Content-Type", kind)
                for key, value in (headers or {}).items():
                    handler.send_header(key, value)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

        self.server = Server()
        self.server.serve()
        self.url = outer.server.url + "/simple"

    def close(self) -> None:
        self.server.close()


JSON_PAGE = "application/vnd.pypi.simple.v1+json"


@pytest.mark.parametrize("body, kind, headers", [
    (b"[]", JSON_PAGE, None),
    (json.dumps({"files": ["x"]}).encode(), JSON_PAGE, None),
    (json.dumps({"files": [{"filename": "app-1.0-py3-none-any.whl", "url": "/f",
                            "hashes": []}]}).encode(), JSON_PAGE, None),
    (json.dumps({"files": [{"filename": 5, "url": "/x"}]}).encode(), JSON_PAGE, None),
    (json.dumps({"files": [{"filename": "app-1.0-py3-none-any.whl", "url": "/f",
                            "hashes": {"sha256": "../../x"}}]}).encode(), JSON_PAGE, None),
    (b"not deflate", JSON_PAGE, {"Content-Encoding": "deflate"}),
    (b'<a href="/f/app-1.0-py3-none-any.whl#sha256=zz">app</a>', "text/html", None),
    (b"[" * 200_000 + b"]" * 200_000, JSON_PAGE, None),
], ids=["list", "string entry", "hashes list", "numeric filename", "sha256 path", "deflate",
        "html sha256", "deep json"])
def test_an_index_page_of_the_wrong_shape_is_one_sentence(project, canary, body, kind, headers):
    server = _Canned(body, kind, headers)
    try:
        setup(project, server.url, '"app"')
        refused(project.gpulock("lock"), server.url.removesuffix("/simple"))
    finally:
        server.close()


@pytest.mark.parametrize("rewrite", [
    lambda kind, v: {**v, "sha": 1234} if kind == "revision" else v,
    lambda kind, v: [v] if kind == "revision" else v,
    lambda kind, v: {"x": 1} if kind == "tree" else v,
    lambda kind, v: [{**e, "size": "12"} for e in v] if kind == "tree" else v,
    lambda kind, v: [{**e, "path": 7} for e in v] if kind == "tree" else v,
    lambda kind, v: [{k: x for k, x in e.items() if k != "oid"} for e in v]
    if kind == "tree" else v,
], ids=["numeric sha", "revision list", "tree object", "string size", "numeric path",
        "no oid"])
def test_a_hub_answer_of_the_wrong_shape_is_one_sentence(hub, make_index, project, canary,
                                                        rewrite):
    hub.repo("org/m").commit({"config.json": b"{}"})
    hub.rewrite = rewrite
    setup(project, make_index().url, models='[models.m]\nsource = "hf://org/m"\n')
    refused(project.gpulock("lock"), "model 'm'")


@pytest.mark.parametrize("header", [[1, 2], {"w": {"dtype": "F32", "shape": ["x"],
                                                    "data_offsets": [0, 4]}},
                                    {"w": {"dtype": "F32", "shape": [1],
                                           "data_offsets": [0, 4, 5]}}])
def test_a_safetensors_header_of_the_wrong_shape_only_leaves_the_weights_unreported(
        hub, make_index, project, header):
    import struct

    raw = json.dumps(header).encode()
    hub.repo("org/m").commit({"model.safetensors": struct.pack("<Q", len(raw)) + raw + WEIGHTS})
    setup(project, make_index().url, models='[models.m]\nsource = "hf://org/m"\n')
    assert "weights" not in project.lock().models[0].as_dict()


@pytest.mark.parametrize("entry_points", ["demo = demo:main\n", "[console_scripts]\nd = !!!\n",
                                          "[console_scripts]\na = x:m\na = x:n\n"])
def test_a_wheel_with_unreadable_entry_points_is_one_sentence(make_index, project, canary,
                                                              entry_points):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", entry_points=entry_points)
    setup(project, index.url, '"app"')
    refused(gpulock(project, "sync"), "app 1.0", "cannot be installed")


@pytest.mark.parametrize("kind", ["fifo", "truncated", "file and folder"])
def test_an_archive_that_cannot_be_extracted_safely_is_one_sentence(make_index, project, canary,
                                                                   kind):
    import io
    import tarfile

    index = make_index()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        if kind == "fifo":
            member = tarfile.TarInfo("pipe")
            member.type = tarfile.FIFOTYPE
            archive.addfile(member)
        else:
            for name in ("a", "a/b"):
                member = tarfile.TarInfo(name)
                member.size = 4
                archive.addfile(member, io.BytesIO(b"data"))
    data = buffer.getvalue()
    (index.folder / "x.tar").write_bytes(data[:700] if kind == "truncated" else data)
    url = index.url.replace("/simple", "/files/x.tar")
    setup(project, index.url, models=f'[models.x]\nsource = "{url}"\nextract = true\n')
    refused(gpulock(project, "sync"), "model 'x'", "nothing was extracted")
    assert not any((project.root / "store" / "v1" / "trees").iterdir())


def test_a_gc_mark_from_the_future_holds_no_sync_up(synced_project, canary):
    import time as clock

    project = synced_project
    mark = project.root / "store" / "v1" / "roots" / "gc" / "otherhost_1~1~0badc0de"
    mark.parent.mkdir(exist_ok=True)
    mark.touch()
    os.utime(mark, (clock.time() + 3600,) * 2)  # another clock, or a planted file
    shutil.rmtree(project.root / "store" / "v1" / "envs")  # so that the sync roots its work
    started = clock.monotonic()
    synced(project)
    assert clock.monotonic() - started < 30


def test_verify_never_blocks_on_a_fifo_planted_in_an_entry(synced_project, canary):
    project = synced_project
    (entry,) = (project.root / "store" / "v1" / "pkgs").iterdir()
    target = entry / "site" / "app" / "__init__.py"
    target.unlink()
    os.mkfifo(target)
    checked = gpulock(project, "verify")
    assert checked.code == 1 and "site/app/__init__.py is not a regular file" in checked.err


def test_gc_dry_run_on_a_partial_store_creates_nothing(project, tmp_path):
    store = tmp_path / "partial"
    (store / "v1" / "hf").mkdir(parents=True)
    result = project.gpulock("gc", "--dry-run", "--store", str(store))
    assert result.code == 0, result.err
    assert [p.name for p in (store / "v1").iterdir()] == ["hf"]


def test_two_projects_with_a_model_of_the_same_name_keep_their_own_files(make_index, tmp_path,
                                                                        capsys):
    from tests.conftest import Project

    index = make_index()
    store = str(tmp_path / "shared")
    views = {}
    for name, data in (("a", b"A-weights"), ("b", b"B-weights")):
        (index.folder / f"{name}.bin").write_bytes(data)
        project = Project(tmp_path / name, capsys)
        project.root.mkdir()
        url = index.url.replace("/simple", f"/files/{name}.bin")
        project.write(f'[project]\nname = "{name}"\npython = "{HOST_PYTHON}"\n'
                      f'[groups.main]\npackages = []\n[models.weights]\nsource = "{url}"\n')
        assert project.gpulock("sync", "--store", store).code == 0
        views[name] = Path(store) / "v1" / "files" / name / "weights" / f"{name}.bin"
    assert views["a"].read_bytes() == b"A-weights" and views["b"].read_bytes() == b"B-weights"


@pytest.mark.parametrize("password", ["p#ssSECRET", "p/ssSECRET", "p?ssSECRET", "p ssSECRET"])
def test_an_index_password_no_parser_can_read_is_refused_without_being_printed(
        password: str, tmp_path: Path):
    from gpulock.cli import main

    manifest = tmp_path / "gpu.toml"
    manifest.write_text('[project]\nname = "x"\npython = "3.11"\n'
                        f'index = "https://alice:{password}@pypi.example.com/simple"\n')
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["lock", "--manifest", str(manifest)])
    assert code == 1 and "SECRET" not in err.getvalue()
    assert "percent-encode" in err.getvalue() and "gpu.toml:4:" in err.getvalue()
