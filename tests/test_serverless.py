"""Serverless workers: the volume a pod filled, seen at another path by another image.

RunPod mounts the same network volume at /workspace on pods and at /runpod-volume on
serverless workers; Kubernetes at whatever `mountPath` says; and the worker's image has its
own CPython (Debian's /usr/bin/python3.11), not the pod's. bubblewrap gives the worker's view
here: an image made of this machine's system folders only (the pod's pyenv CPython and the
pod's store path are absent), the store bound at /runpod-volume/.gpulock, and only the
variables `gpulock env --mounted-at ... --format dockerfile` exports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.support.dists import make_wheel
from tests.support.hf_hub import FakeHub

HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
IMAGE_PYTHON = Path(f"/usr/bin/python{HOST_PYTHON}")
MOUNT = "/runpod-volume/.gpulock"
APP = (b"def main():\n    import os, sys, app\n"
       b"    print('serving', sys.executable, os.path.dirname(app.__file__))\n")
WEIGHTS = os.urandom(3000)


def _bwrap_problem() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    if not IMAGE_PYTHON.is_file():
        return f"no system CPython at {IMAGE_PYTHON} to stand for the worker image's"
    tried = subprocess.run(["bwrap", "--ro-bind", "/", "/", "true"], capture_output=True,
                           text=True)
    if tried.returncode != 0:
        return f"bwrap cannot run here: {tried.stderr.strip()[-200:]}"
    return None


_NO_BWRAP = _bwrap_problem()  # bubblewrap is tried once, when the tests are collected
needs_bwrap = pytest.mark.skipif(_NO_BWRAP is not None, reason=str(_NO_BWRAP))


def _pod_project(project: Project, make_index, hub: FakeHub) -> tuple[Path, str]:
    """A project with a console script, a data script, a Hugging Face model and a plain
    file, synced on "the pod" into `<tmp>/workspace/.gpulock`; the store and the commit."""
    index = make_index()
    make_wheel(index.folder, "app", "1.0", files={
        "app/__init__.py": APP,
        "app-1.0.data/scripts/data-tool": b"#!python\nimport sys\nprint('data', sys.prefix)\n",
    }, entry_points="[console_scripts]\nserve = app:main\n")
    (index.folder / "weights.bin").write_bytes(WEIGHTS)
    commit = hub.repo("org/tiny").commit({"config.json": b'{"hidden": 8}'})
    weights = index.url.replace("/simple", "/files/weights.bin")
    project.write(f'[project]\nname = "worker"\npython = "{HOST_PYTHON}"\n'
                  f'index = "{index.url}"\n[groups.main]\npackages = ["app"]\n'
                  f'[models.tiny]\nsource = "hf://org/tiny"\n'
                  f'[models.weights]\nsource = "{weights}"\n')
    store = project.root.parent / "workspace" / ".gpulock"
    result = project.gpulock("sync", "--store", str(store))
    assert result.code == 0, result.err
    return store, commit


def _dockerfile_env(project: Project, store: Path) -> dict[str, str]:
    """The ENV lines `gpulock env --mounted-at` prints, as a worker's image would set them."""
    result = project.gpulock("env", "--store", str(store), "--mounted-at", MOUNT,
                             "--format", "dockerfile")
    assert result.code == 0, result.err
    values = {}
    for line in result.out.splitlines():
        key, value = re.fullmatch(r'ENV (\w+)="(.*)"', line).groups()
        values[key] = value.replace(":$PATH", ":/usr/bin:/bin")
    return values


def _worker(store: Path, environment: dict[str, str], command: str,
            installed: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`command` run by /bin/sh in the worker: the system's folders (and `installed`, read
    only), the store at MOUNT, nothing of the pod's interpreter or store path, only
    `environment` set."""
    image = [arg for top in ("/usr", "/etc", "/bin", "/lib", "/lib64", "/sbin")
             if os.path.exists(top)
             for arg in (("--symlink", os.readlink(top), top) if os.path.islink(top)
                         else ("--ro-bind", top, top))]
    # After /tmp's tmpfs: a checkout under /tmp (CI's clone) must stay seen.
    extra = [arg for folder in installed for arg in ("--ro-bind", folder, folder)]
    variables = [arg for key, value in environment.items() for arg in ("--setenv", key, value)]
    return subprocess.run(["bwrap", *image, "--dev", "/dev", "--proc", "/proc",
                           "--tmpfs", "/tmp", *extra, "--bind", str(store), MOUNT, "--clearenv",
                           "--setenv", "HOME", "/tmp", *variables, "--chdir", "/tmp",
                           "/bin/sh", "-c", command], capture_output=True, text=True,
                          timeout=120)


@needs_bwrap
def test_a_worker_with_the_volume_elsewhere_runs_scripts_and_reads_models_on_its_own_python(
        make_index, project: Project, hub: FakeHub):
    store, commit = _pod_project(project, make_index, hub)
    environment = _dockerfile_env(project, store)
    assert environment["PYTHONPATH"].startswith(f"{MOUNT}/v1/envs/worker/current/")
    assert environment["GPULOCK_FILES"] == f"{MOUNT}/v1/files/worker"
    assert environment["HF_HUB_CACHE"] == f"{MOUNT}/v1/hf"
    assert not any(str(store) in value for value in environment.values())

    served = _worker(store, environment, "serve")
    assert served.returncode == 0, served.stderr
    said, executable, package = served.stdout.split()
    assert said == "serving" and executable == str(IMAGE_PYTHON)  # the image's CPython
    assert package.startswith(f"{MOUNT}/v1/")  # the environment, from the volume
    data = _worker(store, environment, "data-tool")
    assert data.returncode == 0 and data.stdout.startswith("data"), data.stderr
    read = _worker(store, environment,
                   f'cat "$HF_HUB_CACHE/models--org--tiny/snapshots/{commit}/config.json" && '
                   'sha256sum "$GPULOCK_FILES/weights/weights.bin"')
    assert read.returncode == 0, read.stderr
    assert read.stdout.startswith('{"hidden": 8}')
    assert hashlib.sha256(WEIGHTS).hexdigest() in read.stdout


@needs_bwrap
def test_a_script_whose_interpreter_is_nowhere_says_so_in_one_line(
        make_index, project: Project, hub: FakeHub):
    store, _ = _pod_project(project, make_index, hub)
    environment = _dockerfile_env(project, store)
    environment["PATH"] = f"{MOUNT}/v1/envs/worker/current/bin"  # no python3.X on PATH
    ran = _worker(store, environment, "serve")
    assert ran.returncode == 127
    assert ran.stderr.strip() == (
        f"gpulock: {MOUNT}/v1/envs/worker/current/bin/serve cannot start: the environment's "
        f"interpreter ({MOUNT}/v1/envs/worker/current/bin/python) is not on this machine, nor "
        f"is python{HOST_PYTHON} on PATH")


@needs_bwrap
def test_verify_and_doctor_on_a_worker_say_how_its_environment_starts(
        make_index, project: Project, hub: FakeHub):
    store, _ = _pod_project(project, make_index, hub)
    environment = _dockerfile_env(project, store)
    lock = project.lock_path.read_text()
    manifest = project.manifest.read_text()
    (store / "project").mkdir()
    (store / "project" / "gpu.toml").write_text(manifest)
    (store / "project" / "pylock.gpu.toml").write_text(lock)
    # gpulock installed in the image: this checkout and its dependencies, run by the
    # image's CPython (the dependencies' compiled parts are for the same minor version).
    installed = [str(Path(__file__).parents[1]),
                 *(p for p in sys.path if p.endswith("site-packages"))]
    gpulock = f"PYTHONPATH={':'.join(installed)} {IMAGE_PYTHON} -m gpulock"
    pods = json.loads((store / "v1" / "envs" / "worker" / "current" /
                       "gpulock-generation.json").read_text())["python"]
    missing = f"generation 1: its interpreter {pods} is not on this machine"
    said = f"{missing}; its scripts start {IMAGE_PYTHON} from PATH with the environment on "
    verified = _worker(store, environment, f"{gpulock} verify --store {MOUNT}", installed)
    assert verified.returncode == 0, verified.stderr
    assert f"note: worker: {said}PYTHONPATH" in verified.stderr
    assert "0 problem(s)" in verified.stderr
    doctor = _worker(store, environment,
                     f"{gpulock} doctor --manifest {MOUNT}/project/gpu.toml --store {MOUNT}",
                     installed)
    assert f"warn     {said}" in doctor.stdout, doctor.stdout + doctor.stderr

    environment["PATH"] = f"{MOUNT}/v1/envs/worker/current/bin"  # no python3.X on PATH
    nowhere = _worker(store, environment, f"{gpulock} verify --store {MOUNT}", installed)
    assert nowhere.returncode == 0  # the store is sound: what this machine lacks is said
    assert (f"warning: cannot start worker: {missing}, nor is python{HOST_PYTHON} on PATH; "
            f"install CPython {HOST_PYTHON} in this image") in nowhere.stderr, nowhere.stderr
    assert "0 problem(s)" in nowhere.stderr


def test_a_store_moved_to_another_path_keeps_working(make_index, project: Project,
                                                      hub: FakeHub, tmp_path: Path):
    store, commit = _pod_project(project, make_index, hub)
    moved = tmp_path / "elsewhere" / "volume"
    moved.parent.mkdir()
    os.rename(store, moved)
    current = moved / "v1" / "envs" / "worker" / "current"
    served = subprocess.run([str(current / "bin" / "serve")], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert served.returncode == 0, served.stderr
    assert served.stdout.split()[2].startswith(str(moved))
    ran = subprocess.run([sys.executable, "-m", "gpulock", "run", "--manifest",
                          str(project.manifest), "--store", str(moved), "--", "serve"],
                         capture_output=True, text=True)  # run execs: not in this process
    assert ran.returncode == 0 and ran.stdout.startswith("serving"), ran.stderr
    exported = json.loads(project.gpulock("env", "--store", str(moved), "--format",
                                          "json").out)
    assert (Path(exported["HF_HUB_CACHE"]) / "models--org--tiny" / "snapshots" / commit
            / "config.json").read_bytes() == b'{"hidden": 8}'
    assert (Path(exported["GPULOCK_FILES"]) / "weights" / "weights.bin").read_bytes() == WEIGHTS
    for command in (("verify",), ("gc",)):
        result = project.gpulock(*command, "--store", str(moved))
        assert result.code == 0, result.err
    synced = project.gpulock("sync", "--store", str(moved))
    assert synced.code == 0 and "is up to date" in synced.err, synced.err


@needs_bwrap
def test_local_start_unpacks_the_small_files_once_and_leaves_large_ones_on_the_volume(
        make_index, project: Project, hub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("gpulock.env.localstart.SMALL", 2048)
    big = os.urandom(4096)  # a "shared library": larger than SMALL, stays on the volume
    store = _local_start_project(project, make_index, {"app/libbig.so": big},
                                 project.root.parent / "workspace" / ".gpulock")
    environment = _dockerfile_env(project, store)
    start = f"{MOUNT}/v1/envs/worker/current/local-start"
    digest = json.loads((store / "v1" / "envs" / "worker" / "current" /
                         "gpulock-generation.json").read_text())["lock_digest"]
    local = f"/tmp/gpulock-{os.getuid()}/worker/gen-1-{digest[:16]}"
    code = ("import app, os; d = os.path.dirname(app.__file__); "
            "print(d, os.path.realpath(os.path.join(d, 'libbig.so')), "
            "len(open(os.path.join(d, 'libbig.so'), 'rb').read()))")
    ran = _worker(store, environment, f"{start} serve && {start} python{HOST_PYTHON} -c "
                  f"\"{code}\" && ls -a {local} && {start} sh -c 'echo $PYTHONPATH'")
    assert ran.returncode == 0, ran.stderr
    served, imported, listed, pythonpath = (ran.stdout.split("\n", 2)[:2]
                                            + ran.stdout.split("\n", 2)[2].rsplit("\n", 2)[:2])
    assert served.split()[2] == f"{local}/lib/python{HOST_PYTHON}/site-packages/app"
    folder, library, size = imported.split()
    assert folder == f"{local}/lib/python{HOST_PYTHON}/site-packages/app"
    assert library.startswith(f"{MOUNT}/v1/pkgs/") and size == "4096"
    assert ".complete" in listed.split() and ".store" in listed.split()
    # The volume's own environment is left off PYTHONPATH: the local copy stands for it.
    assert pythonpath == f"{local}/lib/python{HOST_PYTHON}/site-packages"


def _local_start_project(project: Project, make_index, files: dict[str, bytes] | None = None,
                         store: Path | None = None) -> Path:
    """`app` (with `files` besides) with a console script, synced with `local-start = true`
    into `store` (`<project>/store`)."""
    index = make_index()
    make_wheel(index.folder, "app", "1.0", files={"app/__init__.py": APP, **(files or {})},
               entry_points="[console_scripts]\nserve = app:main\n")
    project.write(f'[project]\nname = "worker"\npython = "{HOST_PYTHON}"\n'
                  f'index = "{index.url}"\nlocal-start = true\n'
                  '[groups.main]\npackages = ["app"]\n')
    store = store or project.root / "store"
    synced = project.gpulock("sync", "--store", str(store))
    assert synced.code == 0, synced.err
    return store


def test_without_room_local_start_runs_from_the_volume(make_index, project: Project,
                                                       tmp_path: Path):
    store = _local_start_project(project, make_index)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # nothing can be unpacked below a file
    ran = subprocess.run([str(store / "v1" / "envs" / "worker" / "current" / "local-start"),
                          "serve"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "GPULOCK_LOCAL": str(blocked)})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[2].startswith(str(store.resolve()))
    assert ran.stderr.startswith("gpulock: could not unpack the environment into ")


def test_a_local_start_pack_names_no_path_and_links_only_into_the_store(
        make_index, project: Project, monkeypatch: pytest.MonkeyPatch):
    import tarfile

    monkeypatch.setattr("gpulock.env.localstart.SMALL", 2048)
    store = _local_start_project(project, make_index, {"app/data/big.bin": os.urandom(4096)})
    current = store / "v1" / "envs" / "worker" / "current"
    with tarfile.open(current / "local.tar") as pack:
        members = pack.getmembers()
    assert not any(str(project.root) in m.name or str(project.root) in m.linkname
                   for m in members)
    for member in members:
        assert not member.name.startswith("/") and ".." not in member.name.split("/")
        if member.issym() and member.name.startswith("lib/"):
            # `<dir>/<member>` -> `<dir>/.store/pkgs/...`: up to <dir>, then through .store.
            depth = member.name.count("/")
            assert member.linkname.startswith("../" * depth + ".store/pkgs/"), member
    big = next(m for m in members if m.name.endswith("app/data/big.bin"))
    assert big.issym()
    assert project.gpulock("verify", "--store", str(store)).code == 0


def test_turning_local_start_on_builds_a_generation_with_the_pack(make_index,
                                                                   project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0", files={"app/__init__.py": APP})
    text = (f'[project]\nname = "worker"\npython = "{HOST_PYTHON}"\nindex = "{index.url}"\n'
            '[groups.main]\npackages = ["app"]\n')
    project.write(text)
    store = project.root / "store"
    assert project.gpulock("sync", "--store", str(store)).code == 0
    project.write(text.replace("[groups.main]", "local-start = true\n[groups.main]"))
    synced = project.gpulock("sync", "--store", str(store), "--frozen")  # the lock stays fresh
    assert synced.code == 0 and "generation 2" in synced.err, synced.err
    assert (store / "v1" / "envs" / "worker" / "current" / "local.tar").is_file()
    again = project.gpulock("sync", "--store", str(store), "--frozen")
    assert again.code == 0 and "is up to date: generation 2" in again.err, again.err


@pytest.mark.parametrize("local", ["relative/dir", "someone-elses"])
def test_local_start_unpacks_only_into_an_absolute_folder_of_the_users_own(
        make_index, project: Project, tmp_path: Path, local: str):
    store = _local_start_project(project, make_index)
    if local == "someone-elses":
        local = str(tmp_path / local)
        os.mkdir(local)
        os.chown(local, 65534, 65534)  # nobody's: a copy there could be anyone's code
    ran = subprocess.run([str(store / "v1" / "envs" / "worker" / "current" / "local-start"),
                          "serve"], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "GPULOCK_LOCAL": local})
    assert ran.returncode == 0 and ran.stdout.startswith("serving"), ran.stderr
    assert ran.stdout.split()[2].startswith(str(store.resolve()))  # from the volume
    why = ("is not an absolute path" if local == "relative/dir"
           else "is not this user's own folder")
    assert why in ran.stderr and ran.stderr.count("\n") == 1, ran.stderr
    assert not (tmp_path / "relative").exists()


def test_a_data_script_with_a_future_import_keeps_running(make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "tool", "1.0", files={
        "tool/__init__.py": b"",
        "tool-1.0.data/scripts/future-tool": b'#!python\n"""Doc."""\nfrom __future__ import '
                                             b'annotations\nimport sys\nprint("future", '
                                             b'sys.prefix)\n'})
    project.write(f'[project]\nname = "worker"\npython = "{HOST_PYTHON}"\n'
                  f'index = "{index.url}"\n[groups.main]\npackages = ["tool"]\n')
    store = project.root / "store"
    assert project.gpulock("sync", "--store", str(store)).code == 0
    ran = subprocess.run([sys.executable, "-m", "gpulock", "run", "--manifest",
                          str(project.manifest), "--store", str(store), "--", "future-tool"],
                         capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.startswith("future"), ran.stderr
