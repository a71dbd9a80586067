"""No-isolation builds: they compile against the locked packages, never the host's, and are
built again exactly when what they compiled against changes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from gpulock.build.env import store_keys
from gpulock.lock import lockfile
from gpulock.manifest import load
from tests.conftest import Project
from tests.support.dists import make_wheel

# An in-tree PEP 517 backend that, like a setup.py of a CUDA extension, imports the package
# it compiles against at the top, and bakes what it saw into the wheel it builds.
_BACKEND = '''\
import base64, hashlib, importlib.util, os, zipfile
import buildhelper  # what torch is to an extension: needed to build, even for metadata

METADATA = "Metadata-Version: 2.1\\nName: ext\\nVersion: 1.0\\nRequires-Dist: buildhelper\\n\\n"
INFO = "ext-1.0.dist-info"

def prepare_metadata_for_build_wheel(directory, config_settings=None):
    os.makedirs(os.path.join(directory, INFO))
    with open(os.path.join(directory, INFO, "METADATA"), "w") as handle:
        handle.write(METADATA)
    return INFO

def build_wheel(directory, config_settings=None, metadata_directory=None):
    if os.environ.get("FLAVOUR") == "broken":
        raise SystemExit("cannot compile: the flavour is broken")
    seen = importlib.util.find_spec("gpulock") is not None
    module = (f"BUILT_AGAINST = {buildhelper.VERSION!r}\\n"
              f"FLAVOUR = {os.environ.get('FLAVOUR')!r}\\nSEES_HOST = {seen!r}\\n")
    files = {"ext/__init__.py": module.encode(), f"{INFO}/METADATA": METADATA.encode(),
             f"{INFO}/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    digest = lambda d: base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=")
    record = [f"{m},sha256={digest(d).decode()},{len(d)}" for m, d in files.items()]
    record.append(f"{INFO}/RECORD,,")
    files[f"{INFO}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    path = os.path.join(directory, "ext-1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return os.path.basename(path)
'''
SHOW = "import ext; print(ext.BUILT_AGAINST, ext.FLAVOUR, ext.SEES_HOST)"


def _extension_sdist(folder: Path) -> None:
    """ext 1.0 as an sdist whose PKG-INFO (Metadata 2.1) cannot stand in for its metadata."""
    files = {"pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                               b'backend-path = ["."]\n',
             "backend.py": _BACKEND.encode(),
             "PKG-INFO": b"Metadata-Version: 2.1\nName: ext\nVersion: 1.0\n\n"}
    with tarfile.open(folder / "ext-1.0.tar.gz", "w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(f"ext-1.0/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


def _manifest(index_url: str, flavour: str = "plain") -> str:
    return (f'[project]\nname = "extproject"\npython = "{sys.version_info[0]}.'
            f'{sys.version_info[1]}"\nindex = "{index_url}"\n'
            '[groups.base]\npackages = ["unrelated"]\n'
            '[groups.ext]\nno_build_isolation = true\nbuild_requires = ["buildhelper"]\n'
            f'env = {{ FLAVOUR = "{flavour}" }}\npackages = ["ext"]\n')


def _index(make_index):  # type: ignore[no-untyped-def]
    """An index serving buildhelper 1.0, unrelated 1.0 and the ext sdist."""
    index = make_index()
    make_wheel(index.folder, "buildhelper", "1.0")
    make_wheel(index.folder, "unrelated", "1.0")
    _extension_sdist(index.folder)
    return index


def _show(project: Project, store: str) -> str:
    run = subprocess.run([str(Path(sys.executable).parent / "gpulock"), "run", "--manifest",
                          str(project.manifest), "--store", store, "--", "python", "-c", SHOW],
                         capture_output=True, text=True, env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def _ext_entries(store: str) -> list[str]:
    return sorted(p.name for p in (Path(store) / "v1" / "pkgs").iterdir()
                  if p.name.endswith("-ext-1.0"))


def test_a_no_isolation_build_compiles_against_the_locked_packages_and_rebuilds_when_they_change(
        make_index, project: Project):
    index = _index(make_index)
    project.write(_manifest(index.url))
    store = str(project.root / "store")

    # Locking builds ext's metadata, which imports buildhelper: a venv holding it is made.
    assert project.pins() == {"buildhelper": "1.0", "ext": "1.0", "unrelated": "1.0"}
    assert project.gpulock("sync", "--store", store).code == 0
    assert _show(project, store) == "1.0 plain False"  # the host's site-packages unseen
    first = _ext_entries(store)

    make_wheel(index.folder, "unrelated", "2.0")  # not among what ext compiles against
    assert project.gpulock("lock", "--upgrade-package", "unrelated").code == 0
    assert project.gpulock("sync", "--store", store).code == 0
    assert _ext_entries(store) == first

    make_wheel(index.folder, "buildhelper", "2.0")  # what it compiles against: built again
    assert project.gpulock("lock", "--upgrade-package", "buildhelper").code == 0
    assert project.gpulock("sync", "--store", store).code == 0
    assert _show(project, store) == "2.0 plain False"
    assert len(_ext_entries(store)) == 2

    project.write(_manifest(index.url, flavour="spicy"))  # the group's env: built again
    assert project.gpulock("sync", "--store", store).code == 0
    assert _show(project, store) == "2.0 spicy False"
    assert len(_ext_entries(store)) == 3


def test_a_failed_no_isolation_build_names_the_package_its_environment_and_its_log(
        make_index, project: Project):
    index = _index(make_index)
    project.write(_manifest(index.url, flavour="broken"))
    result = project.gpulock("sync", "--store", str(project.root / "store"))
    assert result.code == 1
    assert "building ext 1.0 failed" in result.err
    assert "no-isolation build" in result.err and "buildhelper 1.0" in result.err
    assert "cannot compile: the flavour is broken" in result.err
    assert "Traceback" not in result.err.split("its log:")[0]


def test_the_built_entry_key_follows_its_build_inputs_not_the_rest_of_the_lock(
        make_index, project: Project):
    index = _index(make_index)
    project.write(_manifest(index.url))
    project.pins()
    manifest, lock = load(project.manifest), lockfile.read(project.lock_path)
    keys = store_keys(manifest, lock)

    def changed(name: str) -> dict[str, str]:
        """The keys of the same lock with `name`'s wheel swapped for other bytes."""
        packages = tuple(replace(p, wheel=replace(p.wheel, sha256="0" * 64))
                         if p.name == name and p.wheel else p for p in lock.packages)
        return store_keys(manifest, replace(lock, packages=packages))

    assert changed("unrelated")["ext"] == keys["ext"]
    assert changed("buildhelper")["ext"] != keys["ext"]

def test_a_pure_wheel_gets_one_entry_per_python_version_each_with_its_own_bytecode(
        make_index, project: Project, tmp_path: Path):
    from gpulock.env.interpreter import find_python

    versions = [v for v in ("3.10", "3.11") if find_python(v)]
    if len(versions) < 2:
        pytest.skip("needs CPython 3.10 and 3.11 (pyenv installs)")
    index = make_index()
    make_wheel(index.folder, "purelib", "1.0",
               files={"purelib/__init__.py": b"VALUE = 42\n"})
    store = tmp_path / "store"
    for version in versions:
        project.write(f'[project]\nname = "p{version.replace(".", "")}"\npython = "{version}"\n'
                      f'index = "{index.url}"\n[groups.main]\npackages = ["purelib"]\n')
        assert project.gpulock("sync", "--store", str(store)).code == 0
        project.lock_path.unlink()
    entries = sorted((store / "v1" / "pkgs").glob("*-purelib-1.0"))
    assert len(entries) == 2  # the same wheel, one entry per CPython version
    tags = sorted(pyc.name.split(".")[1] for e in entries for pyc in e.rglob("*.pyc"))
    assert tags == ["cpython-310", "cpython-311"]
