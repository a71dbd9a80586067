"""`gpulock sync`, `run` and `env`: wheels into the store, a farm into a generation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpulock.cli import main
from tests.conftest import Project, dead_writers_part
from tests.support.dists import make_wheel

HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the ELF fixtures")


def write_manifest(project: Project, index: str, packages: list[str], *, verify: str = "",
                   extra_groups: str = "") -> None:
    listed = ", ".join(f'"{p}"' for p in packages)
    project.write(f'[project]\nname = "demo"\npython = "{HOST_PYTHON}"\nindex = "{index}"\n'
                  f'[groups.main]\npackages = [{listed}]\n{extra_groups}'
                  + (f'[verify]\nimports = [{verify}]\n' if verify else ""))


def sync(project: Project, *args: str) -> tuple[int, str]:
    result = project.gpulock("sync", "--store", str(project.root / "store"), *args)
    return result.code, result.err


def env_root(project: Project) -> Path:
    return project.root / "store" / "v1" / "envs" / "demo" / "current"


def site(project: Project) -> Path:
    return env_root(project) / "lib" / f"python{HOST_PYTHON}" / "site-packages"


def entries(project: Project) -> set[str]:
    return {p.name for p in (project.root / "store" / "v1" / "pkgs").iterdir()}


def compile_so(folder: Path, name: str, source: str, *flags: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.c").write_text(source)
    out = folder / f"lib{name}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(folder / f"{name}.c"),
                    *flags], check=True)
    return out


PROBE = """
import ctypes, importlib, json, os, subprocess, sys
result = {}
import torchy; result["torchy"] = torchy.value()
import nvother; result["nvother"] = nvother.value()
import nspkg.a, nspkg.b; result["ns"] = [nspkg.a.NAME, nspkg.b.NAME]
import pthhook; result["pth"] = pthhook.HOOKED
import extra_mod; result["extra"] = extra_mod.NAME
print(json.dumps(result, sort_keys=True))
"""


@pytest.fixture
def native_wheels(tmp_path: Path, make_index):
    """Wheels shaped like torch + nvidia: climbing $ORIGIN RPATHs, shared folders, .pth."""
    index = make_index()
    build = tmp_path / "build"
    helper = compile_so(build / "helper", "helper", "int helper(void){return 41;}")
    other = compile_so(build / "other", "other", "int other(void){return 7;}")
    torchy = compile_so(build / "torchy", "torchy",
                        "int helper(void); int torchy_value(void){return helper()+1;}",
                        f"-L{helper.parent}", "-lhelper",
                        "-Wl,-rpath,$ORIGIN/../../nvidia_fake/helper/lib")
    loader = ("import ctypes, os\n"
              "_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), {path!r}))\n"
              "def value():\n    return _lib.{func}()\n")
    make_wheel(index.folder, "torchy", "1.0", requires=["nvhelper", "nvother"], files={
        "torchy/__init__.py": loader.format(path="lib/libtorchy.so",
                                            func="torchy_value").encode(),
        "torchy/lib/libtorchy.so": torchy.read_bytes()})
    make_wheel(index.folder, "nvhelper", "1.0", files={
        "nvidia_fake/helper/lib/libhelper.so": helper.read_bytes(),
        "nvidia_fake/helper/__init__.py": b""})
    make_wheel(index.folder, "nvother", "1.0", files={
        "nvidia_fake/other/lib/libother.so": other.read_bytes(),
        "nvidia_fake/other/__init__.py": b"",
        "nvother/__init__.py": loader.format(path="../nvidia_fake/other/lib/libother.so",
                                             func="other").encode()})
    make_wheel(index.folder, "ns-a", "1.0", files={"nspkg/a/__init__.py": b"NAME = 'a'\n"})
    make_wheel(index.folder, "ns-b", "1.0", files={"nspkg/b/__init__.py": b"NAME = 'b'\n"})
    make_wheel(index.folder, "pthpkg", "1.0", files={
        "pthpkg.pth": b"extra_dir\nimport pthhook; pthhook.HOOKED = True\n",
        "pthhook.py": b"HOOKED = False\n",
        "extra_dir/extra_mod.py": b"NAME = 'extra'\n",
        "pthpkg-1.0.data/scripts/pth-tool": b"#!python\nimport sys\nprint('tool', sys.prefix)\n",
    }, entry_points="[console_scripts]\nhello-cli = pthhook:main\n")
    return index


@needs_gcc
def test_a_farm_imports_and_runs_like_a_plain_install(native_wheels, project: Project,
                                                       tmp_path: Path):
    write_manifest(project, native_wheels.url, ["torchy", "ns-a", "ns-b", "pthpkg"],
                   verify='"torchy", "nspkg.a"')
    code, err = sync(project)
    assert code == 0, err
    farm = site(project)
    # $ORIGIN climbs out of torchy/lib: both folders are real, the library itself a link.
    assert not (farm / "torchy").is_symlink() and not (farm / "torchy" / "lib").is_symlink()
    assert (farm / "torchy" / "lib" / "libtorchy.so").is_symlink()
    # Folders shared by wheels are real and merged; single-owner folders are one link.
    assert not (farm / "nvidia_fake").is_symlink()
    assert (farm / "nvidia_fake" / "helper").is_symlink()
    assert not (farm / "nspkg").is_symlink() and (farm / "nspkg" / "a").is_symlink()

    expected = {"extra": "extra", "ns": ["a", "b"], "nvother": 7, "pth": True, "torchy": 42}
    env_python = env_root(project) / "bin" / "python"
    through_venv = subprocess.run([str(env_python), "-c", PROBE], capture_output=True,
                                  text=True, check=True)
    assert json.loads(through_venv.stdout) == expected
    through_pythonpath = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(farm)})
    assert json.loads(through_pythonpath.stdout) == expected
    # On a network volume (forced here) a top-level package linked whole is imported from
    # its store entry, so later lookups inside it read no link; one in a real folder, and
    # packages below a real folder, keep their farm paths; listings still see them all.
    where = ("import json, pkgutil, importlib.metadata as m, nvother, nspkg.a, torchy\n"
             "print(json.dumps([nvother.__file__, nvother.__path__[0], nspkg.a.__file__,"
             " torchy.__file__, sorted(i.name for i in pkgutil.iter_modules()"
             " if i.name in ('nvother', 'torchy')), m.version('nvother')]))")
    store_pkgs = (project.root / "store" / "v1" / "pkgs").resolve()
    for command, extra in (([str(env_python)], {}),
                           ([sys.executable], {"PYTHONPATH": str(farm)})):
        shown = subprocess.run([*command, "-c", where], capture_output=True, text=True,
                               check=True, env={**os.environ, **extra,
                                                "GPULOCK_STORE_IMPORTS": "1"})
        nv_file, nv_path, ns_file, torchy_file, listed, version = json.loads(shown.stdout)
        assert Path(nv_file) == (farm / "nvother" / "__init__.py").resolve()
        assert Path(nv_file).parent == Path(nv_path) and Path(nv_path).is_relative_to(store_pkgs)
        for kept in (ns_file, torchy_file):
            assert not Path(kept).is_relative_to(store_pkgs)
            assert "site-packages" in Path(kept).parts
        assert listed == ["nvother", "torchy"] and version == "1.0"
    # On a local disk (this one) every module keeps its farm path.
    local = subprocess.run([str(env_python), "-c", "import nvother; print(nvother.__file__)"],
                           capture_output=True, text=True, check=True)
    assert not Path(local.stdout.strip()).is_relative_to(store_pkgs)

    plain = tmp_path / "plain"
    wheels = sorted(native_wheels.folder.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(plain), *map(str, wheels)], check=True)
    copy = subprocess.run([sys.executable, "-c", f"import site; site.addsitedir({str(plain)!r})"
                           + PROBE], capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert json.loads(copy.stdout) == expected

    tool = subprocess.run([str(env_root(project) / "bin" / "pth-tool")], capture_output=True,
                          text=True, check=True)
    assert tool.stdout.split() == ["tool", str(env_root(project).resolve())]
    hello = (env_root(project) / "bin" / "hello-cli").read_text()
    # No path of the store's in a script: it finds the python beside it, wherever it is.
    assert hello.startswith("#!/bin/sh\n") and str(project.root) not in hello


def test_sync_is_incremental_and_a_rerun_is_a_no_op(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", requires=["lib"])
    make_wheel(index.folder, "lib", "1.0")
    make_wheel(index.folder, "lib", "2.0")
    write_manifest(project, index.url, ["app", "lib==1.0"])
    assert sync(project)[0] == 0
    before = entries(project)
    assert len(before) == 2
    first = env_root(project).resolve()

    write_manifest(project, index.url, ["app", "lib==2.0"])
    index.requests.clear()
    code, err = sync(project)
    assert code == 0, err
    assert "~ lib 1.0 -> 2.0 (upgrade)" in err
    assert len(entries(project) - before) == 1
    downloads = [p for p, _ in index.requests if p.startswith("/files/") and
                 not p.endswith(".metadata")]
    assert downloads == ["/files/lib-2.0-py3-none-any.whl"] or set(downloads) == {
        "/files/lib-2.0-py3-none-any.whl"}
    assert env_root(project).resolve() != first and first.is_dir()  # previous gen kept

    index.requests.clear()
    code, err = sync(project)
    assert code == 0 and "is up to date" in err
    assert index.requests == []


def test_a_wheel_that_differs_from_the_lock_is_rejected_and_not_stored(make_index,
                                                                       project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    write_manifest(project, index.url, ["app"])
    project.lock()
    tampered = index.folder / "app-1.0-py3-none-any.whl"
    make_wheel(index.folder / "other", "app", "1.0", files={"app/__init__.py": b"EVIL = 1\n"})
    shutil.copy(index.folder / "other" / tampered.name, tampered)
    code, err = sync(project, "--frozen")
    assert code == 1
    assert "app 1.0:" in err and "but the lock says" in err and "it was not stored" in err
    assert entries(project) == set()
    assert not env_root(project).exists()


def test_frozen_refuses_a_stale_lock_and_plain_sync_relocks(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    make_wheel(index.folder, "other", "1.0")
    write_manifest(project, index.url, ["app"])
    assert sync(project)[0] == 0
    write_manifest(project, index.url, ["app", "other"])
    code, err = sync(project, "--frozen")
    assert code == 1 and "stale" in err
    code, err = sync(project)
    assert code == 0 and "+ other 1.0" in err


def test_failed_verify_leaves_the_current_generation(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    make_wheel(index.folder, "broken", "1.0", files={"broken/__init__.py": (
        b"try:\n    open('/nonexistent/libc10_cuda.so')\n"
        b"except OSError as exc:\n    raise ImportError('no') from exc\n")})
    write_manifest(project, index.url, ["app"], verify='"app"')
    assert sync(project)[0] == 0
    good = env_root(project).resolve()
    write_manifest(project, index.url, ["app", "broken"], verify='"app", "broken"')
    code, err = sync(project)
    assert code == 1 and "[verify] imports failed" in err and "import broken: " in err
    # The cause is said, not only the outermost exception.
    assert "ImportError: no; caused by FileNotFoundError" in err and "libc10_cuda.so" in err
    assert env_root(project).resolve() == good


def test_two_wheels_with_different_bytes_at_one_path_are_named(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "one", "1.0", files={"shared/util.py": b"A = 1\n"})
    make_wheel(index.folder, "two", "1.0", files={"shared/util.py": b"A = 2\n"})
    write_manifest(project, index.url, ["one", "two"])
    code, err = sync(project)
    assert code == 1
    assert "shared/util.py differs between one 1.0 and two 1.0" in err


def test_pip_aimed_at_the_env_points_to_gpu_toml_and_leaves_the_store(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    write_manifest(project, index.url, ["app"])
    assert sync(project)[0] == 0
    stored = list((project.root / "store" / "v1" / "pkgs").rglob("__init__.py"))
    result = subprocess.run([sys.executable, "-m", "pip", "--python",
                             str(env_root(project) / "bin" / "python"), "uninstall", "-y", "app"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "add or remove packages in gpu.toml and run 'gpulock sync'" in result.stderr
    assert all(p.exists() for p in stored)
    install = subprocess.run([sys.executable, "-m", "pip", "--python",
                              str(env_root(project) / "bin" / "python"), "install", "--no-index",
                              str(next(index.folder.glob("*.whl")))], capture_output=True,
                             text=True)
    assert install.returncode != 0 and "gpu.toml" in install.stderr
    # Without the guard, pip still finds no RECORD and refuses to delete store files.
    assert not list((project.root / "store" / "v1" / "pkgs").rglob("RECORD"))


def test_env_prints_exports_through_the_current_link(make_index, project: Project, capsys):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    write_manifest(project, index.url, ["app"])
    assert sync(project)[0] == 0
    store = str(project.root / "store")
    capsys.readouterr()
    main(["env", "--manifest", str(project.manifest), "--store", store, "--format", "json"])
    values = json.loads(capsys.readouterr().out)
    assert values["PYTHONPATH"] == str(site(project))
    main(["env", "--manifest", str(project.manifest), "--store", store, "--format",
          "dockerfile"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f'ENV PYTHONPATH="{site(project)}"',
                     f'ENV PATH="{env_root(project)}/bin:$PATH"']
    result = subprocess.run([sys.executable, "-c", "import app; print(app.VERSION)"],
                            env={**os.environ, "PYTHONPATH": values["PYTHONPATH"]},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "1.0"


def test_an_sdist_is_built_once_and_installed_like_a_wheel(make_index, project: Project):
    from tests.support.dists import make_sdist

    index = make_index()
    make_sdist(index.folder, "srconly", "0.5")
    write_manifest(project, index.url, ["srconly"], verify='"srconly"')
    code, err = sync(project)
    assert code == 0, err
    (key,) = entries(project)
    assert key.endswith("-srconly-0.5")
    built = subprocess.run([str(env_root(project) / "bin" / "python"), "-c",
                            "import srconly; print(srconly.BUILT)"], capture_output=True,
                           text=True, check=True)
    assert built.stdout.strip() == "True"


def test_a_partial_download_is_resumed_with_a_range_request(make_index, project: Project):
    index = make_index()
    wheel = make_wheel(index.folder, "big", "1.0", files={"big/blob.bin": os.urandom(400_000)})
    write_manifest(project, index.url, ["big"])
    lock = project.lock()
    ref = lock.package("big").wheel
    # What a sync killed mid-download leaves behind: the first half, under its hash.
    part = dead_writers_part(project.root / "store" / "v1" / "tmp" / "downloads" / ref.sha256,
                             "wheel")
    part.write_bytes(wheel.read_bytes()[: ref.size // 2])
    index.requests.clear()
    code, err = sync(project, "--frozen")
    assert code == 0, err
    assert index.file_requests(wheel.name) == [f"bytes={ref.size // 2}-"]
    assert not part.exists()


def test_entries_carry_hash_based_bytecode(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    write_manifest(project, index.url, ["app"])
    assert sync(project)[0] == 0
    (pyc,) = (project.root / "store" / "v1" / "pkgs").rglob("__init__.*.pyc")
    flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
    assert flags & 0b1  # PEP 552: validated by source hash, never by mtime


def test_a_source_that_does_not_compile_is_left_without_bytecode(make_index, project: Project):
    index = make_index()  # like torch's py312_intrinsics.py under an older Python
    make_wheel(index.folder, "app", "1.0", files={"app/__init__.py": b"X = 1\n",
                                                  "app/newer.py": b"def f(:\n"})
    write_manifest(project, index.url, ["app"])
    assert sync(project)[0] == 0
    pycs = sorted(p.name.split(".")[0]
                  for p in (project.root / "store" / "v1" / "pkgs").rglob("*.pyc"))
    assert pycs == ["__init__"]
    assert gpulock_verify(project) == 0


def test_pythonpath_mode_warns_when_the_python_version_differs(make_index, project: Project):
    other = next((v for v in ("3.10", "3.12", "3.13") if v != HOST_PYTHON), None)
    from gpulock.env.interpreter import find_python

    python = find_python(other) if other else None
    if python is None:
        pytest.skip("no second CPython version on this machine")
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    write_manifest(project, index.url, ["app"])
    assert sync(project)[0] == 0
    result = subprocess.run([python, "-c", "import app"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(site(project))})
    assert f"this environment was built for Python {HOST_PYTHON}" in result.stderr


def test_an_env_synced_into_a_relative_store_from_a_throwaway_venv_works_anywhere(
        make_index, project: Project, tmp_path: Path):
    """The user's way: `gpulock sync --store store` from a venv, then scripts from elsewhere,
    and the venv that ran gpulock removed: bin/python is the base CPython, paths absolute."""
    import site as site_module
    import venv

    index = make_index()
    make_wheel(index.folder, "app", "1.0", files={
        "app/__init__.py": b"def main():\n    import sys\n    print('hello from', sys.prefix)\n"},
        entry_points="[console_scripts]\nhello = app:main\n")
    write_manifest(project, index.url, ["app"])
    throwaway = tmp_path / "throwaway-venv"
    venv.create(throwaway, symlinks=True)
    runner = {**os.environ, "VIRTUAL_ENV": str(throwaway), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1]), *site_module.getsitepackages()])}
    synced = subprocess.run([str(throwaway / "bin" / "python"), "-m", "gpulock", "sync",
                             "--store", "store"], cwd=project.root, env=runner,
                            capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr
    shutil.rmtree(throwaway)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bin_dir = project.root / "store" / "v1" / "envs" / "demo" / "current" / "bin"
    assert not os.readlink(bin_dir / "python").startswith(str(throwaway))
    plain = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    hello = subprocess.run([str(bin_dir / "hello")], cwd=elsewhere, env=plain,
                           capture_output=True, text=True)
    assert hello.returncode == 0 and hello.stdout.startswith("hello from"), hello.stderr
    exported = subprocess.run([sys.executable, "-m", "gpulock", "env", "--manifest",
                               str(project.manifest), "--store", "store"], cwd=project.root,
                              capture_output=True, text=True, check=True).stdout
    shell = subprocess.run(["bash", "-c", f"{exported}\nhello && python -c 'import app'"],
                           cwd=elsewhere, env=plain, capture_output=True, text=True)
    assert shell.returncode == 0 and "hello from" in shell.stdout, shell.stderr


def test_a_wheel_shipping_its_own_bytecode_syncs_without_warnings(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", files={"app/__init__.py": b"",
                                                   "app/__pycache__/stale.cpython-311.pyc": b""})
    write_manifest(project, index.url, ["app"])
    synced = subprocess.run([sys.executable, "-m", "gpulock", "sync", "--manifest",
                             str(project.manifest), "--store", str(project.root / "store")],
                            capture_output=True, text=True)
    assert synced.returncode == 0 and "Warning" not in synced.stderr, synced.stderr


def test_several_environments_on_pythonpath_each_run_their_pth_files_once(make_index,
                                                                           project: Project,
                                                                           tmp_path: Path):
    from gpulock.cli import main

    index = make_index()
    for name in ("one", "two"):
        make_wheel(index.folder, f"hook-{name}", "1.0", files={
            f"hook_{name}.pth": f"import hook_{name}_mod\n".encode(),
            f"hook_{name}_mod.py": f"import sys\nsys.hooks = getattr(sys, 'hooks', []) + "
                                   f"[{name!r}]\n".encode()})
    write_manifest(project, index.url, ["hook-one"])
    assert sync(project)[0] == 0
    other = tmp_path / "tools" / "gpu.toml"
    other.parent.mkdir()
    other.write_text(f'[project]\nname = "tools"\npython = "{HOST_PYTHON}"\n'
                     f'index = "{index.url}"\n[groups.main]\npackages = ["hook-two"]\n')
    assert main(["sync", "--manifest", str(other), "--store", str(project.root / "store")]) == 0
    tools = (project.root / "store" / "v1" / "envs" / "tools" / "current" / "lib"
             / f"python{HOST_PYTHON}" / "site-packages")
    system = tmp_path / "system"
    system.mkdir()
    (system / "sitecustomize.py").write_text("import sys\nsys.hooks = getattr(sys, 'hooks', [])"
                                             " + ['system']\n")
    ran = subprocess.run([sys.executable, "-c", "import sys; print(sorted(sys.hooks))"],
                         capture_output=True, text=True, env={
                             **os.environ, "PYTHONPATH": f"{site(project)}:{tools}:{system}"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "['one', 'system', 'two']"


def test_scripts_run_from_a_store_whose_path_has_a_space(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "tool", "1.0", files={
        "tool/__init__.py": b"def main():\n    print('console')\n",
        "tool-1.0.data/scripts/data-tool": b"#!python\nimport sys\nprint('data', sys.prefix)\n",
    }, entry_points="[console_scripts]\nconsole-tool = tool:main\n")
    write_manifest(project, index.url, ["tool"])
    store = project.root / "a store"
    result = project.gpulock("sync", "--store", str(store))
    assert result.code == 0, result.err
    bin_dir = store / "v1" / "envs" / "demo" / "current" / "bin"
    for script, said in (("console-tool", "console"), ("data-tool", "data")):
        ran = subprocess.run([str(bin_dir / script)], capture_output=True, text=True)
        assert ran.returncode == 0 and ran.stdout.startswith(said), ran.stderr


def _decided_early(project: Project) -> str | None:
    from gpulock.uptodate import nothing_to_do

    return nothing_to_do(project.manifest, project.lock_path, project.root / "store")


def test_a_no_op_sync_is_decided_from_three_files_and_only_when_the_full_sync_agrees(
        make_index, project: Project, tmp_path: Path):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    make_wheel(index.folder, "other", "1.0")
    write_manifest(project, index.url, ["app"])
    assert _decided_early(project) is None  # nothing synced yet
    assert sync(project)[0] == 0
    said = _decided_early(project)
    assert said is not None and said.startswith("'demo' is up to date: generation 1")

    # The fast path imports neither the resolver nor the store's machinery.
    probe = ("import sys; from gpulock.cli import main; code = main(['sync', '--store', "
             f"{str(project.root / 'store')!r}, '--manifest', {str(project.manifest)!r}]); "
             "print(code, sorted(m for m in ('gpulock.sync', 'gpulock.lock.finder', "
             "'gpulock.manifest', 'packaging.requirements') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.split("\n")[0] == "0 []", out.stdout + out.stderr

    write_manifest(project, index.url, ["app", "other"])  # stale lock: the full sync looks
    assert _decided_early(project) is None
    assert sync(project)[0] == 0 and _decided_early(project) is not None
    (env_root(project).parent / "current").unlink()  # no current generation
    assert _decided_early(project) is None
    assert sync(project)[0] == 0 and _decided_early(project) is not None
    lock_text = project.lock_path.read_text()
    project.lock_path.write_text(lock_text + "\n# edited\n")  # other bytes: another digest
    assert _decided_early(project) is None


def test_an_update_shares_the_unchanged_links_of_the_previous_generation(
        make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    make_wheel(index.folder, "lib", "1.0")
    make_wheel(index.folder, "lib", "2.0")
    write_manifest(project, index.url, ["app", "lib==1.0"])
    assert sync(project)[0] == 0
    old = site(project).resolve()
    write_manifest(project, index.url, ["app", "lib==2.0"])
    assert sync(project)[0] == 0
    new = site(project).resolve()
    assert new != old
    # app's link is the previous generation's inode; lib's is new; both generations import.
    assert os.lstat(new / "app").st_ino == os.lstat(old / "app").st_ino
    assert os.readlink(new / "lib") != os.readlink(old / "lib")
    assert os.lstat(new / "lib").st_ino != os.lstat(old / "lib").st_ino
    for root in (old, new):
        python = root.parents[2] / "bin" / "python"
        run = subprocess.run([str(python), "-c", "import app, lib; print(lib.VERSION)"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert gpulock_verify(project) == 0


def gpulock_verify(project: Project) -> int:
    return project.gpulock("verify", "--store", str(project.root / "store")).code


def test_a_generation_of_an_older_layout_is_rebuilt_once_and_a_newer_one_is_kept(
        make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    write_manifest(project, index.url, ["app"])
    assert sync(project)[0] == 0
    record_path = env_root(project) / "gpulock-generation.json"
    record = json.loads(record_path.read_text())
    record.pop("format")  # as a gpulock before the format field wrote it
    record_path.write_text(json.dumps(record))
    first = env_root(project).resolve()

    code, err = sync(project)
    assert code == 0 and "is up to date" not in err, err
    assert env_root(project).resolve() != first  # rebuilt in this gpulock's layout

    # A newer gpulock sharing the volume built the current one: this one keeps it.
    record_path = env_root(project) / "gpulock-generation.json"
    record = json.loads(record_path.read_text())
    record["format"] += 1
    record_path.write_text(json.dumps(record))
    code, err = sync(project)
    assert code == 0 and "is up to date" in err, err


def test_a_wheel_with_two_files_for_one_path_is_refused(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "twice", "1.0", files={
        "twice.py": b"WHICH = 'root'\n", "twice-1.0.data/purelib/twice.py": b"WHICH = 'data'\n"})
    write_manifest(project, index.url, ["twice"])
    code, err = sync(project)
    assert code == 1 and "twice 1.0" in err and "two files for site/twice.py" in err, err
    assert "Traceback" not in err
    assert not list((project.root / "store" / "v1" / "pkgs").glob("*twice*"))
