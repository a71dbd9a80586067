"""`sync --install-python`: the target CPython installed by uv into the store's `python/`
folder, environments built on it, and `gpulock env` running them with nothing else.

uv's real downloads are out of reach: a local python-build-standalone mirror serves an
install_only archive made from a pyenv CPython (tests/support/python_mirror.py), named
with its sha256 in a downloads list, and uv is pointed at both with its own settings
(UV_PYTHON_INSTALL_MIRROR, UV_PYTHON_DOWNLOADS_JSON_URL), as a user behind a mirror would.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gpulock.env import pythons
from gpulock.errors import GpulockError, ManifestError
from gpulock.manifest import dump, parse
from gpulock.store import Store
from gpulock.store.elf import search_paths
from gpulock.store.layout import Layout, UnsafeNameError
from tests.conftest import Project
from tests.support.dists import make_wheel
from tests.support.python_mirror import (
    ARCH,
    Archive,
    PythonMirror,
    build_install_only,
    pyenv_cpython,
)

WHICH = "import os, sys; print(os.path.realpath(sys.executable))"
HELLO = (b"def main():\n    import os, sys\n"
         b"    print('hello', '%d.%d' % sys.version_info[:2], os.path.realpath(sys.executable))\n")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    if ARCH not in ("x86_64", "aarch64"):
        pytest.skip(f"gpu.toml has no platform for this machine's {ARCH}")
    prefix = pyenv_cpython()
    if prefix is None:
        pytest.skip("no pyenv CPython on this machine to build a python-build-standalone-like "
                    "archive from")
    folder = tmp_path_factory.mktemp("pbs")
    built = build_install_only(prefix, folder / "cpython-install_only.tar.gz")
    # Relocatable like python-build-standalone's: it finds libpython beside itself.
    unpacked = folder / "check"
    unpacked.mkdir()
    subprocess.run(["tar", "xzf", str(built.path), "-C", str(unpacked)], check=True)
    executable = unpacked / "python" / "bin" / f"python{built.minor}"
    assert all("pyenv" not in path for path in search_paths(executable))
    ran = subprocess.run([str(executable), "-c", "import sys, json, ssl; print(sys.prefix)"],
                         env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    if ran.returncode != 0:
        pytest.skip(f"the CPython at {prefix} does not run once copied elsewhere: "
                    f"{ran.stderr.strip()[-200:]}")
    assert ran.stdout.strip() == str(unpacked / "python")
    return built


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home and XDG folders of the test's own: whatever uv writes outside the store shows."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for name in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_BIN_HOME",
                 "UV_PYTHON_INSTALL_DIR", "UV_CACHE_DIR", "UV_PYTHON_BIN_DIR"):
        monkeypatch.delenv(name, raising=False)
    return folder


@contextmanager
def _mirror(archive: Archive, monkeypatch: pytest.MonkeyPatch, tamper: str | None = None,
            login: str = "") -> Iterator[PythonMirror]:
    """A mirror uv is pointed at by its own settings (`login`: user:password in its URL)."""
    server = PythonMirror(archive, tamper=tamper)
    mirror = server.mirror.replace("://", f"://{login}@") if login else server.mirror
    monkeypatch.setenv("UV_PYTHON_INSTALL_MIRROR", mirror)
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS_JSON_URL", server.downloads_url)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def mirror(archive: Archive, monkeypatch: pytest.MonkeyPatch, home: Path
           ) -> Iterator[PythonMirror]:
    with _mirror(archive, monkeypatch) as server:
        yield server


def _project(project: Project, make_index, archive: Archive, extra: str = "") -> None:
    index = make_index()
    make_wheel(index.folder, "hello-app", "1.0", files={"hello_app/__init__.py": HELLO},
               entry_points="[console_scripts]\nhello-app = hello_app:main\n")
    project.write(f'[project]\nname = "demo"\npython = "{archive.minor}"\n'
                  f'platform = "linux_{ARCH}"\nindex = "{index.url}"\n{extra}'
                  '[groups.main]\npackages = ["hello-app"]\n')


def _store(project: Project) -> Path:
    return project.root / "store"


def _interpreter(project: Project, archive: Archive) -> Path:
    return (_store(project) / "v1" / "python" / f"cpython-{archive.version}-linux-{ARCH}-gnu"
            / "bin" / f"python{archive.minor}")


def _recorded(project: Project, archive: Archive) -> str:
    """How a generation names the store's CPython: relative to its `bin/`, so that it is
    found wherever the volume is mounted."""
    return os.path.relpath(_interpreter(project, archive),
                           _store(project) / "v1" / "envs" / "demo" / "gen-1" / "bin")


def _sync(project: Project, *args: str) -> tuple[int, str]:
    result = project.gpulock("sync", "--store", str(_store(project)), *args)
    return result.code, result.err


def _generation(project: Project) -> dict[str, object]:
    current = _store(project) / "v1" / "envs" / "demo" / "current"
    return dict(json.loads((current / "gpulock-generation.json").read_text()))


def _files_below(folder: Path) -> list[str]:
    return sorted(str(Path(parent, name).relative_to(folder))
                  for parent, _dirs, names in os.walk(folder) for name in names)


def test_sync_install_python_installs_cpython_into_the_store_and_env_i_runs_a_script_on_it(
        make_index, project: Project, archive: Archive, mirror: PythonMirror, home: Path,
        tmp_path: Path):
    _project(project, make_index, archive)
    code, err = _sync(project, "--install-python")
    assert code == 0, err
    interpreter = _interpreter(project, archive)
    assert stat.S_ISREG(os.lstat(interpreter).st_mode)
    assert f"Installed CPython {archive.version} at {interpreter}" in err
    served = next(path for path in mirror.files if path.startswith("/mirror/"))
    assert "/downloads.json" in mirror.requests and mirror.requests.count(served) == 1
    record = _generation(project)
    assert record["python"] == _recorded(project, archive)
    assert record["python_version"] == archive.version
    assert _files_below(home) == []  # uv wrote nothing outside the store

    exports = project.gpulock("env", "--store", str(_store(project)), "--format", "sh").out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = f"{exports}\nhello-app\npython -c '{WHICH}'\n"
    ran = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "sh", "-c", script],
                         cwd=elsewhere, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    hello, python = ran.stdout.splitlines()
    assert hello == f"hello {archive.minor} {interpreter}"
    assert python == str(interpreter)

    run = subprocess.run([sys.executable, "-m", "gpulock", "run", "--manifest",
                          str(project.manifest), "--store", str(_store(project)), "--",
                          "python", "-c", WHICH],
                         cwd=elsewhere, capture_output=True, text=True,
                         env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(interpreter)


def test_a_second_sync_reuses_the_store_interpreter_and_never_runs_uv(
        make_index, project: Project, archive: Archive, mirror: PythonMirror,
        monkeypatch: pytest.MonkeyPatch):
    _project(project, make_index, archive)
    assert _sync(project, "--install-python")[0] == 0
    fetched = list(mirror.requests)

    def no_uv() -> str:
        raise AssertionError("uv was run")

    monkeypatch.setattr("uv.find_uv_bin", no_uv)
    for args in (("--install-python",), ()):  # without the flag the store's is kept too
        code, err = _sync(project, *args)
        assert code == 0 and "'demo' is up to date: generation 1" in err, err
    assert mirror.requests == fetched
    assert _generation(project)["python"] == _recorded(project, archive)


def test_gc_and_verify_leave_the_store_interpreter_alone(make_index, project: Project,
                                                         archive: Archive,
                                                         mirror: PythonMirror):
    _project(project, make_index, archive)
    assert _sync(project, "--install-python")[0] == 0
    before = _files_below(_store(project) / "v1" / "python")
    collected = project.gpulock("gc", "--store", str(_store(project)), "--keep", "1")
    assert collected.code == 0, collected.err
    verified = project.gpulock("verify", "--store", str(_store(project)))
    assert verified.code == 0, verified.err + verified.out
    assert _files_below(_store(project) / "v1" / "python") == before
    hello = _store(project) / "v1" / "envs" / "demo" / "current" / "bin" / "hello-app"
    ran = subprocess.run([str(hello)], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True)
    assert ran.returncode == 0 and ran.stdout.startswith(f"hello {archive.minor}"), ran.stderr


@pytest.mark.parametrize(("tamper", "said"), [
    ("other", "the downloaded archive's sha256 is not the one the downloads list names"),
    ("damaged", "Failed to install cpython-"),
])
def test_an_archive_that_is_not_the_listed_one_is_refused_in_one_sentence_and_nothing_stays(
        make_index, project: Project, archive: Archive, monkeypatch: pytest.MonkeyPatch,
        home: Path, tamper: str, said: str):
    with _mirror(archive, monkeypatch, tamper=tamper):
        _project(project, make_index, archive)
        code, err = _sync(project, "--install-python")
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert errors[0].startswith(f"error: uv could not install CPython {archive.minor} into ")
    assert said in errors[0] and errors[0].endswith("; no interpreter was installed")
    python = _store(project) / "v1" / "python"
    assert [p for p in os.listdir(python) if not p.startswith(".")] == []
    assert _files_below(python) == [".gitignore", ".lock"]  # uv's own; no partial download
    assert not (_store(project) / "v1" / "envs" / "demo" / "current").exists()
    assert _files_below(home) == []


def test_a_failing_mirror_is_one_sentence_without_its_password(
        make_index, project: Project, archive: Archive, monkeypatch: pytest.MonkeyPatch,
        home: Path):
    with _mirror(archive, monkeypatch, login="user:s3cret") as server:
        server.files = {k: v for k, v in server.files.items() if not k.startswith("/mirror/")}
        _project(project, make_index, archive)
        code, err = _sync(project, "--install-python")
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "uv could not install CPython" in errors[0], err
    assert "s3cret" not in err


def test_install_python_in_gpu_toml_installs_without_the_flag(make_index, project: Project,
                                                             archive: Archive,
                                                             mirror: PythonMirror):
    _project(project, make_index, archive, extra="install-python = true\n")
    code, err = _sync(project)
    assert code == 0, err
    assert _generation(project)["python"] == _recorded(project, archive)


@pytest.mark.parametrize("key", ["install-python", "install_python"])
def test_the_manifest_reads_install_python_and_dump_keeps_it(key: str, tmp_path: Path):
    text = f'[project]\nname = "demo"\npython = "3.10"\n{key} = true\n'
    manifest = parse(text, tmp_path / "gpu.toml")
    assert manifest.project.install_python is True
    written = dump(manifest)
    assert "install-python = true" in written
    assert parse(written, tmp_path / "gpu.toml") == manifest
    # Where sync takes the interpreter from is no part of the lock: the lock stays fresh.
    plain = parse('[project]\nname = "demo"\npython = "3.10"\n', tmp_path / "gpu.toml")
    assert manifest.content_hash == plain.content_hash
    assert "install-python" not in dump(plain)


def test_the_manifest_refuses_a_wrong_install_python(tmp_path: Path):
    path = tmp_path / "gpu.toml"
    with pytest.raises(ManifestError, match=rf"^{path}:4:1: 'install-python' in \[project\] "
                       "must be true or false, not the string 'yes'"):
        parse('[project]\nname = "demo"\npython = "3.10"\ninstall-python = "yes"\n', path)
    with pytest.raises(ManifestError, match="both 'install-python' and 'install_python'"):
        parse('[project]\nname = "demo"\npython = "3.10"\ninstall-python = true\n'
              'install_python = true\n', path)


def test_without_install_python_a_missing_cpython_names_the_flag(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    from gpulock.env.interpreter import find_interpreter

    monkeypatch.setattr("gpulock.env.interpreter.find_python", lambda version: None)
    with pytest.raises(GpulockError, match="gpulock sync --install-python"):
        find_interpreter("3.15", Store(tmp_path / "store").open())


def _fake_install(layout: Layout, folder: str, minor: str) -> Path:
    executable = layout.python / folder / "bin" / f"python{minor}"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    return executable


def test_only_interpreters_where_uv_puts_them_are_taken_from_the_store(tmp_path: Path):
    layout = Store(tmp_path / "store").open().layout
    assert pythons.managed(layout, "3.10", "x86_64") is None
    old = _fake_install(layout, "cpython-3.10.9-linux-x86_64-gnu", "3.10")
    new = _fake_install(layout, "cpython-3.10.13-linux-x86_64-gnu", "3.10")
    _fake_install(layout, "cpython-3.10.20-linux-aarch64-gnu", "3.10")
    _fake_install(layout, "cpython-3.10.21+freethreaded-linux-x86_64-gnu", "3.10")
    _fake_install(layout, "cpython-3.11.2-linux-x86_64-gnu", "3.11")
    assert pythons.managed(layout, "3.10", "x86_64") == (str(new), "3.10.13")
    assert pythons.managed(layout, "3.10.9", "x86_64") == (str(old), "3.10.9")
    assert pythons.managed(layout, "3.10.10", "x86_64") is None
    # uv's own minor-version link is never followed, nor a link planted for a patch folder.
    (layout.python / "cpython-3.10-linux-x86_64-gnu").symlink_to(new.parents[1])
    elsewhere = tmp_path / "elsewhere" / "bin"
    elsewhere.mkdir(parents=True)
    (elsewhere / "python3.10").write_text("#!/bin/sh\n")
    (elsewhere / "python3.10").chmod(0o755)
    (layout.python / "cpython-3.10.99-linux-x86_64-gnu").symlink_to(elsewhere.parent)
    assert pythons.managed(layout, "3.10", "x86_64") == (str(new), "3.10.13")
    # A link where the interpreter belongs, a file that is not executable: not taken.
    new.unlink()
    new.symlink_to(elsewhere / "python3.10")
    assert pythons.managed(layout, "3.10", "x86_64") == (str(old), "3.10.9")
    old.chmod(0o644)
    assert pythons.managed(layout, "3.10", "x86_64") is None


def test_a_planted_python_folder_is_refused(tmp_path: Path):
    store = Store(tmp_path / "store").open()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.layout.python.symlink_to(elsewhere)
    assert pythons.managed(store.layout, "3.10", "x86_64") is None
    with pytest.raises(UnsafeNameError):
        Store(tmp_path / "store").open()
    with pytest.raises(UnsafeNameError):
        store.layout.interpreter("3.10/../..", "x86_64")


def test_doctor_names_the_store_interpreter_and_what_install_python_will_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from gpulock.pins import Lock
    from gpulock.sync.doctor import BLOCKER, OK, _python
    from gpulock.target import Target

    monkeypatch.setattr("gpulock.env.interpreter.find_python", lambda version: None)
    store = Store(tmp_path / "store").open()
    lock = Lock(Target(python="3.15"), "sha256:0", ())
    missing = _python(lock, store)
    assert missing.status == BLOCKER and "--install-python" in missing.message
    planned = _python(lock, store, install=True)
    assert planned.status == OK and "sync installs it into" in planned.message
    installed = _fake_install(store.layout, "cpython-3.15.1-linux-x86_64-gnu", "3.15")
    found = _python(lock, store)
    assert found.status == OK and found.message == f"CPython 3.15.1 at {installed}"


def test_a_store_with_its_cpython_moved_elsewhere_runs_there_and_stays_up_to_date(
        make_index, project: Project, archive: Archive, mirror: PythonMirror, tmp_path: Path):
    """The volume mounted at another path (a serverless worker's /runpod-volume, another
    mountPath): the environment's python, its scripts and the next sync all follow it."""
    _project(project, make_index, archive)
    assert _sync(project, "--install-python")[0] == 0
    assert os.readlink(_store(project) / "v1" / "envs" / "demo" / "current" / "bin" /
                       "python") == _recorded(project, archive)
    moved = tmp_path / "runpod-volume" / ".gpulock"
    moved.parent.mkdir()
    os.rename(_store(project), moved)
    interpreter = moved / "v1" / "python" / _interpreter(project, archive).relative_to(
        _store(project) / "v1" / "python")
    current = moved / "v1" / "envs" / "demo" / "current"
    ran = subprocess.run([str(current / "bin" / "hello-app")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == f"hello {archive.minor} {interpreter}"
    synced = project.gpulock("sync", "--store", str(moved))
    assert synced.code == 0 and "'demo' is up to date: generation 1" in synced.err, synced.err
    verified = project.gpulock("verify", "--store", str(moved))
    assert verified.code == 0 and "note:" not in verified.err, verified.err
