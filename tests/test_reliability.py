"""Faults survived: kills, races, tampering, unsafe wheels, full disks, bad locks, gc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.support.dists import make_wheel
from tests.test_sync import env_root, site, sync, write_manifest

PHASES = ["plan", "download", "unpack", "publish", "farm", "switch"]


def gpulock(project: Project, *args: str, env: dict[str, str] | None = None,
            store: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as a pod runs it (so it can be killed)."""
    return subprocess.run(
        [sys.executable, "-m", "gpulock", *args, "--manifest", str(project.manifest),
         "--store", str(store or project.root / "store")],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def two_versions(index_folder: Path) -> None:
    """app and its dep in versions 1.0 and 2.0; a 3 MiB dep so downloads take chunks."""
    for version in ("1.0", "2.0"):
        make_wheel(index_folder, "app", version, requires=[f"dep=={version}"], files={
            "app/__init__.py": f"import dep\nVERSION = {version!r}\n".encode()})
        make_wheel(index_folder, "dep", version, files={
            "dep/__init__.py": f"VERSION = {version!r}\n".encode(),
            "dep/blob.bin": os.urandom(3 * 2**20)})


def lock_version(project: Project, index_url: str, version: str) -> None:
    write_manifest(project, index_url, [f"app=={version}"])
    project.lock()


class Reader:
    """Imports through `current` in a loop, as a serving process would, and keeps failures."""

    PROBE = "import app, dep; assert app.VERSION == dep.VERSION, (app.VERSION, dep.VERSION)"

    def __init__(self, project: Project) -> None:
        self.site = site(project)
        self.failures: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.site)}
        while not self._stop.is_set():
            result = subprocess.run([sys.executable, "-c", self.PROBE], capture_output=True,
                                    text=True, env=env, check=False)
            self.reads += 1
            if result.returncode != 0:
                self.failures.append(result.stderr.strip().splitlines()[-1])

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def current_version(project: Project) -> str:
    return (site(project) / "app" / "__init__.py").read_text().split("'")[1]


def verify(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return gpulock(project, "verify", *args)


def test_a_sync_killed_at_every_phase_resumes_and_current_never_breaks(make_index, project):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "1.0")
    assert sync(project, "--frozen")[0] == 0
    lock_version(project, index.url, "2.0")
    with Reader(project) as reader:
        for phase in PHASES:
            killed = gpulock(project, "sync", "--frozen", env={"GPULOCK_FAULT": f"kill:{phase}"})
            assert killed.returncode == -9, (phase, killed.stderr)
            # Killed before `current` moved: the old environment is still the one served.
            assert current_version(project) == "1.0", phase
        done = gpulock(project, "sync", "--frozen")
        assert done.returncode == 0, done.stderr
        time.sleep(0.3)  # let the reader see the new generation too
    assert reader.failures == [] and reader.reads > 3
    assert current_version(project) == "2.0"
    checked = verify(project)
    assert checked.returncode == 0, checked.stderr
    # The leftovers of six killed syncs are garbage gc can name and remove.
    collected = gpulock(project, "gc", "--keep", "1")
    assert collected.returncode == 0 and "leftover(s) of killed syncs" in collected.stderr
    assert verify(project).returncode == 0


def test_a_sync_killed_again_and_again_mid_download_resumes_each_time(make_index, project):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "2.0")
    (wheel,) = index.folder.glob("dep-2.0-*.whl")
    index.slow = 0.1  # 3 MiB at ~2.5 MiB/s
    parts = project.root / "store" / "v1" / "tmp" / "downloads"
    kept = []
    for reached in (256 * 1024, 1024 * 1024, 2 * 1024 * 1024):
        child = subprocess.Popen([sys.executable, "-m", "gpulock", "sync", "--frozen",
                                  "--jobs", "1", "--manifest", str(project.manifest), "--store",
                                  str(project.root / "store")], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [p.stat().st_size for p in parts.glob("*/wheel.part.*")] if parts.is_dir(
                ) else []
            if found and max(found) >= reached:
                break
            time.sleep(0.01)
        child.kill()
        child.wait()
        # One partial, claimed and continued by each run, not a new one per run.
        assert len(found) == 1 and found[0] >= reached
        kept.append(found[0])
        assert not env_root(project).exists()  # nothing was switched to
    index.slow = 0.0
    index.requests.clear()
    done = gpulock(project, "sync", "--frozen")
    assert done.returncode == 0, done.stderr
    (resumed,) = index.file_requests(wheel.name)
    assert resumed.startswith("bytes=") and int(resumed[6:].rstrip("-")) >= kept[-1]
    assert verify(project).returncode == 0


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-flock"])
@pytest.mark.parametrize("same_project", [True, False], ids=["same-project", "two-projects"])
def test_two_syncs_at_once_both_finish_and_build_each_entry_once(make_index, project, tmp_path,
                                                                  flock, same_project):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "2.0")
    other = project
    if not same_project:
        other = Project(tmp_path / "other", project.capsys)
        other.root.mkdir()
        other.write(project.manifest.read_text().replace('name = "demo"', 'name = "other"'))
        other.lock()
    store = project.root / "store"
    env = {**os.environ, **({} if flock else {"GPULOCK_NO_FLOCK": "1"})}
    children = [subprocess.Popen([sys.executable, "-m", "gpulock", "sync", "--frozen",
                                  "--manifest", str(p.manifest), "--store", str(store)],
                                 stderr=subprocess.PIPE, text=True, env=env)
                for p in (project, other)]
    results = [(child.wait(timeout=300), child.stderr.read()) for child in children]
    for code, err in results:
        assert code == 0, err
    pkgs = sorted(p.name.split("-", 1)[1] for p in (store / "v1" / "pkgs").iterdir())
    assert pkgs == ["app-2.0", "dep-2.0"]
    assert verify(project).returncode == 0
    probe = subprocess.run([sys.executable, "-c", Reader.PROBE], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site(project))})
    assert probe.returncode == 0, probe.stderr


def flip_a_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fast", [False, True], ids=["sha256", "xxh3"])
def test_a_bit_flip_in_an_entry_is_named_by_verify_and_repaired(make_index, project, fast):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "1.0")
    assert sync(project, "--frozen")[0] == 0
    (entry,) = (project.root / "store" / "v1" / "pkgs").glob("*-dep-1.0")
    flip_a_byte(entry / "site" / "dep" / "blob.bin")
    mode = ["--fast"] if fast else []
    found = verify(project, *mode)
    assert found.returncode == 1
    line = next(li for li in found.stderr.splitlines() if li.startswith("damaged entry"))
    algorithm = "xxh3" if fast else "sha256"
    assert entry.name in line and f"site/dep/blob.bin has {algorithm} " in line
    assert "recorded" in line and "Traceback" not in found.stderr
    repaired = verify(project, "--repair", *mode)
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired package entry" in repaired.stderr
    assert verify(project).returncode == 0
    probe = subprocess.run([sys.executable, "-c", Reader.PROBE], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site(project))})
    assert probe.returncode == 0, probe.stderr


def test_a_truncated_download_is_rejected_with_both_hashes_and_not_kept(make_index, project):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "1.0")
    (wheel,) = index.folder.glob("dep-1.0-*.whl")
    wheel.write_bytes(wheel.read_bytes()[: 2**20])  # the index now serves a cut-off file
    code, err = sync(project, "--frozen")
    assert code == 1 and "dep 1.0: " in err and str(2**20) in err
    assert "but the lock says" in err and "it was not stored" in err
    store = project.root / "store" / "v1"
    assert not list(store.glob("pkgs/*-dep-*"))
    assert not [p for p in (store / "tmp").rglob("*") if p.is_file()]


def unsafe_wheel(folder: Path, name: str, member: zipfile.ZipInfo) -> Path:
    wheel = make_wheel(folder, name, "1.0")
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr(member, b"import os\n")
    return wheel


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("evil/link")
    info.external_attr = (0o120777 << 16)
    return info


@pytest.mark.parametrize("member, problem", [
    (zipfile.ZipInfo("../../outside.py"), "a path outside its own tree"),
    (zipfile.ZipInfo("/etc/evil.py"), "a path outside its own tree"),
    (_symlink_member(), "a symbolic link"),
], ids=["dotdot", "absolute", "symlink"])
def test_a_wheel_with_escaping_members_is_refused_before_anything_is_written(
        make_index, project, member, problem):
    index = make_index()
    unsafe_wheel(index.folder, "evil", member)
    write_manifest(project, index.url, ["evil"])
    project.lock()
    code, err = sync(project, "--frozen")
    assert code == 1 and f"evil 1.0: evil-1.0-py3-none-any.whl holds {problem}" in err
    store = project.root / "store" / "v1"
    assert list((store / "pkgs").iterdir()) == []
    assert [p for p in (store / "tmp").iterdir() if p.is_dir() and p.name != "downloads"] == []
    assert not (project.root.parent / "outside.py").exists()


@pytest.mark.parametrize("phase", ["download", "unpack", "farm"])
def test_a_full_disk_at_any_phase_is_one_sentence_and_the_next_sync_completes(
        make_index, project, monkeypatch, phase):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "1.0")
    assert sync(project, "--frozen")[0] == 0
    lock_version(project, index.url, "2.0")
    monkeypatch.setenv("GPULOCK_FAULT", f"enospc:{phase}")
    code, err = sync(project, "--frozen")
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert len(err.strip().splitlines()[-1:]) == 1 and "nothing was switched" in err
    assert current_version(project) == "1.0"
    store = project.root / "store" / "v1"
    if phase != "farm":  # at "farm" both entries were complete and published already
        assert not list(store.glob("pkgs/*-dep-2.0"))
    assert verify(project).returncode == 0  # whatever is visible is complete
    assert not list(store.glob("envs/demo/gen-2"))
    monkeypatch.delenv("GPULOCK_FAULT")
    assert sync(project, "--frozen")[0] == 0
    assert current_version(project) == "2.0"
    assert verify(project).returncode == 0


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs: the kernel, not a mock, says the disk is full."""
    mount = tmp_path / "volume"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_volume_leaves_current_and_the_sync_after_freeing_space_completes(
        make_index, project, small_volume):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "1.0")
    store = small_volume / "store"
    first = gpulock(project, "sync", "--frozen", store=store)
    assert first.returncode == 1  # 3 MiB dep + its download do not fit in 4 MiB
    assert "No space left on device" in first.stderr and "Traceback" not in first.stderr
    assert not list((store / "v1" / "pkgs").glob("*-dep-*"))
    assert not (store / "v1" / "envs" / "demo" / "current").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_volume)], check=True)
    done = gpulock(project, "sync", "--frozen", store=store)
    assert done.returncode == 0, done.stderr
    assert gpulock(project, "verify", store=store).returncode == 0


@pytest.mark.parametrize("edit, message", [
    (lambda text: text[: len(text) // 2], "pylock.gpu.toml"),
    (lambda text: text.replace('lock-version = "1.0"', 'lock-version = "2.0"'),
     "has lock-version 2.0"),
    (lambda text: text.replace("format = 1", "format = 99"), "written by a newer gpulock"),
], ids=["truncated", "newer-lock-version", "newer-gpulock"])
def test_a_damaged_or_newer_lock_is_refused_and_nothing_is_touched(make_index, project, edit,
                                                                   message):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "1.0")
    assert sync(project, "--frozen")[0] == 0
    before = sorted(p.name for p in (project.root / "store" / "v1").rglob("*"))
    project.lock_path.write_text(edit(project.lock_path.read_text()))
    result = gpulock(project, "sync", "--frozen")
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (project.root / "store" / "v1").rglob("*")) == before


def test_a_store_of_a_newer_layout_is_refused_and_left_alone(make_index, project):
    index = make_index()
    two_versions(index.folder)
    lock_version(project, index.url, "1.0")
    (project.root / "store" / "v2").mkdir(parents=True)
    for command in ("sync", "gc", "verify"):
        result = gpulock(project, command)
        assert result.returncode == 1 and "newer than this gpulock's v1" in result.stderr
    assert sorted(p.name for p in (project.root / "store").iterdir()) == ["v2"]


_CHILDREN: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """A sync left paused by a failing test is killed, not left waiting for ever."""
    yield
    while _CHILDREN:
        child = _CHILDREN.pop()
        if child.poll() is None:
            child.kill()
            child.wait()


def background_sync(project: Project, env: dict[str, str] | None = None
                    ) -> subprocess.Popen[str]:
    """`gpulock sync --frozen` in its own process, killed at the end of the test if need be."""
    child = subprocess.Popen(
        [sys.executable, "-m", "gpulock", "sync", "--frozen", "--manifest",
         str(project.manifest), "--store", str(project.root / "store")],
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    _CHILDREN.append(child)
    return child


def paused_sync(project: Project, point: str, faults: Path
                ) -> tuple[subprocess.Popen[str], Callable[[], None]]:
    """A sync in its own process, stopped at fault point `point`, and how to let it go on."""
    faults.mkdir()
    child = background_sync(project, {"GPULOCK_FAULT": f"pause:{point}",
                                      "GPULOCK_FAULT_DIR": str(faults)})
    deadline = time.monotonic() + 60
    while not (faults / f"paused-{point}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (faults / f"paused-{point}").exists(), child.stderr
    return child, (faults / f"resume-{point}").touch


def sync_versions(project: Project, index_url: str, versions: list[str]) -> None:
    for version in versions:
        lock_version(project, index_url, version)
        assert sync(project, "--frozen")[0] == 0


def three_versions(index_folder: Path) -> None:
    two_versions(index_folder)
    make_wheel(index_folder, "app", "3.0", requires=["dep==1.0"], files={
        "app/__init__.py": b"import dep\nVERSION = '1.0'\n"})


def test_gc_keeps_what_kept_generations_link_and_frees_the_rest(make_index, project):
    index = make_index()
    three_versions(index.folder)
    sync_versions(project, index.url, ["1.0", "2.0", "3.0"])
    pkgs = project.root / "store" / "v1" / "pkgs"
    assert len(list(pkgs.iterdir())) == 5
    dry = gpulock(project, "gc", "--keep", "1", "--dry-run")
    assert dry.returncode == 0 and "would free" in dry.stderr
    assert "2 generation(s), 3 package entries" in dry.stderr
    assert len(list(pkgs.iterdir())) == 5
    done = gpulock(project, "gc", "--keep", "1")
    assert done.returncode == 0 and "freed" in done.stderr
    assert "2 generation(s), 3 package entries" in done.stderr
    assert sorted(p.name.split("-", 1)[1] for p in pkgs.iterdir()) == ["app-3.0", "dep-1.0"]
    assert [p.name for p in (project.root / "store" / "v1" / "envs" / "demo").glob("gen-*")
            ] == ["gen-3"]
    assert verify(project).returncode == 0
    again = gpulock(project, "gc", "--keep", "1")
    assert "freed 0.0 MiB: 0 generation(s), 0 package entries" in again.stderr


def test_gc_never_removes_the_current_generation_after_a_rollback(make_index, project):
    index = make_index()
    three_versions(index.folder)
    sync_versions(project, index.url, ["1.0", "2.0", "3.0"])
    rolled = gpulock(project, "rollback", "1")
    assert rolled.returncode == 0
    assert "generation 1 of 'demo' is current (was generation 3)" in rolled.stderr
    assert current_version(project) == "1.0"
    assert gpulock(project, "gc", "--keep", "1").returncode == 0
    kept = sorted(p.name for p in (project.root / "store" / "v1" / "envs" / "demo").glob("gen-*"))
    assert kept == ["gen-1", "gen-3"]
    assert current_version(project) == "1.0"
    assert verify(project).returncode == 0


def test_rollback_steps_back_and_refuses_what_does_not_exist(make_index, project):
    index = make_index()
    two_versions(index.folder)
    assert gpulock(project, "rollback").returncode == 1  # no manifest yet: one sentence
    sync_versions(project, index.url, ["1.0", "2.0"])
    back = gpulock(project, "rollback")
    assert back.returncode == 0
    assert "generation 1 of 'demo' is current (was generation 2)" in back.stderr
    assert "the next 'gpulock sync' builds the lock again" in back.stderr
    assert current_version(project) == "1.0"
    oldest = gpulock(project, "rollback")
    assert oldest.returncode == 1 and "nothing to roll back to" in oldest.stderr
    missing = gpulock(project, "rollback", "7")
    assert missing.returncode == 1 and "has no generation 7; it has 1, 2" in missing.stderr
    assert gpulock(project, "rollback", "2").returncode == 0
    assert current_version(project) == "2.0"


def test_gc_racing_a_sync_keeps_what_the_sync_is_about_to_link(make_index, project, tmp_path):
    index = make_index()
    three_versions(index.folder)
    sync_versions(project, index.url, ["1.0", "2.0"])
    # Back to 2.0 after 1.0's generation is collected... but dep 1.0's entry is still there
    # while the sync of app 3.0 (which needs dep 1.0) is paused after rooting its plan.
    assert gpulock(project, "gc", "--keep", "2").returncode == 0
    lock_version(project, index.url, "3.0")
    child, resume = paused_sync(project, "plan", tmp_path / "faults")
    # gen-1 goes with app 1.0; dep 1.0 is no kept generation's, but the paused sync rooted it.
    collected = gpulock(project, "gc", "--keep", "1")
    assert collected.returncode == 0 and "1 generation(s), 1 package entry," in (
        collected.stderr), collected.stderr
    assert list((project.root / "store" / "v1" / "pkgs").glob("*-dep-1.0"))
    resume()
    assert child.wait(timeout=120) == 0, child.stderr.read()
    assert "Added 1, reused 1" in child.stderr.read()  # dep 1.0 was linked, not refetched
    assert current_version(project) == "1.0"
    assert verify(project).returncode == 0


def test_gc_keeps_a_generation_a_paused_sync_built_but_has_not_switched_to(make_index, project,
                                                                         tmp_path):
    index = make_index()
    three_versions(index.folder)
    sync_versions(project, index.url, ["1.0"])
    lock_version(project, index.url, "2.0")
    child, resume = paused_sync(project, "switch", tmp_path / "faults")  # gen-2 built
    sync_versions(project, index.url, ["3.0"])  # gen-3, current and newest
    collected = gpulock(project, "gc", "--keep", "1")
    assert collected.returncode == 0, collected.stderr
    envs = project.root / "store" / "v1" / "envs" / "demo"
    assert sorted(p.name for p in envs.glob("gen-*")) == ["gen-2", "gen-3"]  # gen-1 went
    resume()
    assert child.wait(timeout=120) == 0, child.stderr.read()
    assert os.readlink(envs / "current") == "gen-2"
    assert current_version(project) == "2.0"
    assert verify(project).returncode == 0


def test_a_sync_waits_while_a_gc_chooses_and_not_for_a_dead_one(make_index, project):
    from gpulock.store.scratch import HOST

    index = make_index()
    two_versions(index.folder)
    sync_versions(project, index.url, ["1.0"])
    lock_version(project, index.url, "2.0")
    collectors = project.root / "store" / "v1" / "roots" / "gc"
    collectors.mkdir(parents=True, exist_ok=True)
    live = collectors / f"{HOST}~{os.getpid()}~0badc0de"  # this test is the running gc
    live.touch()
    dead = collectors / "otherhost~1~0badc0de"
    dead.touch()
    os.utime(dead, (time.time() - 120, time.time() - 120))  # silent for two minutes
    child = background_sync(project)
    time.sleep(2)
    assert child.poll() is None and current_version(project) == "1.0"  # it waits
    live.unlink()
    assert child.wait(timeout=120) == 0
    assert "waiting for gpulock gc" in child.stderr.read()
    assert current_version(project) == "2.0"


def test_gc_puts_back_an_entry_a_sync_rooted_while_it_was_collecting(make_index, project,
                                                                     monkeypatch):
    from gpulock.store import Store, roots
    from gpulock.upkeep import gc

    index = make_index()
    three_versions(index.folder)
    sync_versions(project, index.url, ["1.0", "2.0"])
    store = Store(project.root / "store").open()
    dep1 = next((store.base / "pkgs").glob("*-dep-1.0")).name
    real = roots.temporary_roots
    looks: list[int] = []

    def a_sync_starts_between_the_two_looks(s: Store) -> roots.Live:
        looks.append(1)
        live = real(s)
        if len(looks) == 2:
            live.pkgs.add(dep1)
        return live

    monkeypatch.setattr(roots, "temporary_roots", a_sync_starts_between_the_two_looks)
    result = gc.collect(store, keep=1)
    assert len(looks) == 2 and dep1 not in result.entries
    assert store.has(dep1) and not any(k.endswith("-app-1.0") for k in
                                       (p.name for p in (store.base / "pkgs").iterdir()))


def test_gc_and_verify_say_where_no_store_is(tmp_path: Path):
    for command in ("gc", "verify"):
        result = subprocess.run([sys.executable, "-m", "gpulock", command, "--store",
                                 str(tmp_path / "nowhere")], capture_output=True, text=True)
        assert result.returncode == 1
        assert f"there is no gpulock store at {tmp_path / 'nowhere'}" in result.stderr




def test_a_sync_that_lost_the_race_for_a_generation_number_takes_the_next(make_index, project,
                                                                         tmp_path):
    index = make_index()
    two_versions(index.folder)
    make_wheel(index.folder, "tool", "1.0", files={"tool.py": b"def main():\n    print('ok')\n"},
               entry_points="[console_scripts]\ntool = tool:main\n")
    write_manifest(project, index.url, ["app==1.0", "tool"])
    project.lock()
    slow, resume = paused_sync(project, "farm", tmp_path / "faults")
    assert gpulock(project, "sync", "--frozen").returncode == 0  # publishes gen-1 first
    resume()
    assert slow.wait(timeout=120) == 0, slow.stderr.read()
    envs = project.root / "store" / "v1" / "envs" / "demo"
    assert sorted(p.name for p in envs.glob("gen-*")) == ["gen-1", "gen-2"]
    assert os.readlink(envs / "current") == "gen-2"
    # Renumbered whole: its console script names no generation, it starts the python
    # beside it (gen-2's).
    script = (envs / "gen-2" / "bin" / "tool").read_text()
    assert script.startswith("#!/bin/sh\n") and "gen-1" not in script
    ran = subprocess.run([str(envs / "current" / "bin" / "tool")], capture_output=True,
                         text=True)
    assert ran.stdout.strip() == "ok"
    assert json.loads((envs / "gen-2" / "gpulock-generation.json").read_text())["number"] == 2


def test_a_rollback_is_shown_in_status_and_a_sync_says_it_builds_the_lock_again(make_index,
                                                                                 project):
    index = make_index()
    two_versions(index.folder)
    sync_versions(project, index.url, ["1.0", "2.0"])
    assert gpulock(project, "rollback").returncode == 0
    status = gpulock(project, "status")
    assert "rolled back: generation 1 is current, 2 is newer" in status.stdout
    again = gpulock(project, "sync", "--frozen")
    assert again.returncode == 0
    assert "generation 1 is current by 'gpulock rollback'" in again.stderr
    assert current_version(project) == "2.0"


def test_gc_stops_at_a_generation_whose_record_is_damaged_and_keeps_what_it_links(
        make_index, project):
    index = make_index()
    two_versions(index.folder)
    sync_versions(project, index.url, ["1.0", "2.0"])
    from gpulock.places import GENERATION_RECORD as RECORD

    envs = project.root / "store" / "v1" / "envs" / "demo"
    pkgs = project.root / "store" / "v1" / "pkgs"
    (envs / "gen-1" / RECORD).write_text("{not json")
    before = sorted(p.name for p in pkgs.iterdir())
    stopped = gpulock(project, "gc", "--keep", "1")
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "gen-1, a generation of 'demo', is damaged; nothing was collected" in stopped.stderr
    assert sorted(p.name for p in pkgs.iterdir()) == before
    assert gpulock(project, "verify", "--repair").returncode == 0
    assert not (envs / "gen-1").exists()
    done = gpulock(project, "gc", "--keep", "1")
    assert done.returncode == 0 and "2 package entries" in done.stderr
    assert current_version(project) == "2.0"
