"""One lock for a mixed fleet: gpu.toml declares [targets.<name>] beside [project]'s own
target, `lock` writes one PEP 751 lock per target, and `sync` picks the target this pod
runs, by its architecture and then the newest CUDA its driver runs (nvidia-smi, faked at
its boundary as doctor's tests do)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
from packaging.pylock import Pylock

from gpulock.errors import ManifestError
from gpulock.manifest import parse
from gpulock.manifest_hash import tomllib
from tests.conftest import Project
from tests.support.dists import make_wheel
from tests.test_doctor import fake_driver

# The fleet's default and cu130 targets are x86_64 pods, and the sentences checked name this
# machine as one: elsewhere these tests would pick, or say, something else.
x86_64_pod = pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                                reason="the fleet's default and cu130 targets are x86_64 pods; "
                                       "this machine is not one")

HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
PY = f"cp{sys.version_info.major}{sys.version_info.minor}"


def _fleet(project: Project, make_index) -> None:
    """torch 2.9 from a cu128 index and a cu130 index, as the PyTorch indexes serve it, an
    aarch64 build on the cu128 one; numpy from the default index."""
    default, cu128, cu130 = make_index(), make_index(), make_index()
    make_wheel(default.folder, "numpy", "2.0", tag=f"{PY}-{PY}-manylinux_2_17_x86_64")
    make_wheel(default.folder, "numpy", "2.0", tag=f"{PY}-{PY}-manylinux_2_17_aarch64")
    for index, label in ((cu128, "cu128"), (cu130, "cu130")):
        make_wheel(index.folder, "torch", f"2.9.0+{label}", requires=["numpy"],
                   tag=f"{PY}-{PY}-manylinux_2_28_x86_64")
    make_wheel(cu128.folder, "torch", "2.9.0+cu128", requires=["numpy"],
               tag=f"{PY}-{PY}-manylinux_2_28_aarch64")
    project.write(f'[project]\nname = "fleet"\npython = "{HOST_PYTHON}"\ncuda = "12.8"\n'
                  f'index = "{default.url}"\n\n'
                  '[targets.cu130]\ncuda = "13.0"\n\n'
                  '[targets.arm]\nplatform = "linux_aarch64"\n\n'
                  f'[groups.pytorch]\nindex = "{cu128.url}"\npackages = ["torch"]\n'
                  f'targets = {{ cu130 = {{ index = "{cu130.url}" }} }}\n')


def test_targets_are_declared_with_errors_that_point_at_the_mistake(tmp_path: Path):
    base = '[project]\nname = "p"\npython = "3.11"\ncuda = "12.8"\n'
    manifest = parse(base + '[targets.cu130]\ncuda = "13.0"\n[targets.arm]\n'
                     'platform = "linux_aarch64"\n', tmp_path / "gpu.toml")
    assert [(t.name, t.platform, t.cuda) for t in manifest.targets] == [
        ("cu130", "linux_x86_64", "13.0"), ("arm", "linux_aarch64", "12.8")]
    arm = manifest.for_target("arm")
    assert arm.project.name == "p.arm" and arm.target.arch == "aarch64"
    for text, said in (
            ('[targets.cu130]\ncudaa = "13.0"\n', "unknown key 'cudaa' in [targets.cu130]; "
                                                 "did you mean 'cuda'?"),
            ('[targets.cu130]\ncuda = "13"\n', 'cuda = \'13\' must look like "12.1"'),
            ('[targets.default]\ncuda = "13.0"\n', "'default' names [project]'s own target"),
            ('[targets.x]\n', "[targets.x] says nothing"),
            ('[targets."cu12.8"]\ncuda = "12.8"\n', "must be 1 to 32 letters, digits"),
            ('[targets.-x]\ncuda = "13.0"\n', "starting with a letter or digit"),
            ('[targets.same]\ncuda = "12.8"\n', "[targets.same] is [project]'s own target"),
            ('[targets.cu130]\ncuda = "13.0"\n[groups.g]\npackages = ["torch"]\n'
             'targets = { cu13 = { index = "https://example.org/simple" } }\n',
             "no [targets.cu13] is declared; did you mean 'cu130'?")):
        with pytest.raises(ManifestError) as raised:
            parse(base + text, tmp_path / "gpu.toml")
        assert said in str(raised.value), str(raised.value)
    long = base.replace('name = "p"', f'name = "{"p" * 124}"')
    with pytest.raises(ManifestError, match=r"the target's environment 'p+\.cu13000' is"):
        parse(long + '[targets.cu13000]\ncuda = "13.0"\n', tmp_path / "gpu.toml")
    with pytest.raises(ManifestError, match="no target named 'cu13'; did you mean 'cu130'"):
        manifest.for_target("cu13")


def test_lock_writes_one_pep_751_lock_per_target(make_index, project: Project):
    _fleet(project, make_index)
    result = project.gpulock("lock")
    assert result.code == 0, result.err
    pins = {}
    for name, file in (("default", "pylock.gpu.toml"), ("cu130", "pylock.gpu-cu130.toml"),
                       ("arm", "pylock.gpu-arm.toml")):
        with (project.root / file).open("rb") as handle:
            read = Pylock.from_dict(tomllib.load(handle))  # packaging's PEP 751 reader
        pins[name] = {str(p.name): str(p.version) for p in read.packages}
        assert f"[target {name}]" in result.err
    assert pins["default"]["torch"] == "2.9.0+cu128"
    assert pins["cu130"]["torch"] == "2.9.0+cu130"
    assert pins["arm"]["torch"] == "2.9.0+cu128"
    arm = (project.root / "pylock.gpu-arm.toml").read_text()
    assert "aarch64" in arm and "x86_64.whl" not in arm
    again = project.gpulock("lock", "--check")
    assert again.code == 0 and again.err.count("is up to date") == 3, again.err


@pytest.mark.parametrize(("driver", "cuda", "chosen", "torch"), [
    ("570.133.07", "12.8", "default", "2.9.0+cu128"),
    ("580.65.06", "13.0", "cu130", "2.9.0+cu130"),
])
@x86_64_pod
def test_sync_picks_the_target_the_pods_driver_runs(
        make_index, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        driver: str, cuda: str, chosen: str, torch: str):
    _fleet(project, make_index)
    assert project.gpulock("lock").code == 0
    monkeypatch.setenv("PATH", f"{fake_driver(tmp_path / 'smi', driver, cuda)}:/usr/bin:/bin")
    store = project.root / "store"
    result = project.gpulock("sync", "--store", str(store), "--frozen", "--no-check")
    assert result.code == 0, result.err
    assert f"runs target '{chosen}'" in result.err
    env = "fleet" if chosen == "default" else f"fleet.{chosen}"
    site = store / "v1" / "envs" / env / "current" / "lib" / f"python{HOST_PYTHON}"
    assert (site / "site-packages" / f"torch-{torch}.dist-info").is_dir()
    other = project.gpulock("sync", "--store", str(store), "--frozen", "--no-check",
                            "--target", "cu130" if chosen == "default" else "default")
    assert other.code == 0, other.err
    # Both environments on one store; numpy's entry is stored once for both.
    assert len(list((store / "v1" / "pkgs").glob("*-numpy-2.0"))) == 1


@x86_64_pod
def test_a_pod_that_runs_no_target_is_told_what_each_needs(
        make_index, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _fleet(project, make_index)
    assert project.gpulock("lock").code == 0
    monkeypatch.setenv("PATH", f"{fake_driver(tmp_path / 'smi', '520.61.05', '11.8')}:"
                               "/usr/bin:/bin")
    result = project.gpulock("sync", "--store", str(project.root / "store"), "--frozen")
    assert result.code == 1
    assert ("this pod (x86_64, NVIDIA driver 520.61.05 running CUDA up to 11.8) runs none of "
            "gpu.toml's targets: default needs x86_64 and CUDA 12.8; cu130 needs x86_64 and "
            "CUDA 13.0; arm needs aarch64 and CUDA 12.8; pass --target NAME") in result.err


@pytest.mark.parametrize(("driver", "said"), [
    (None, "no NVIDIA driver): syncing target 'default'"),  # a build stage, CI
    (("550.54.15", "12.4"), "runs target 'default'"),  # 12.8 on 12.4: minor-version compat
])
@x86_64_pod
def test_without_a_driver_that_runs_a_target_exactly_sync_takes_the_nearest(
        make_index, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        driver: tuple[str, str] | None, said: str):
    _fleet(project, make_index)
    assert project.gpulock("lock").code == 0
    smi = f"{fake_driver(tmp_path / 'smi', *driver)}:" if driver else ""
    monkeypatch.setenv("PATH", f"{smi}/usr/bin:/bin")
    result = project.gpulock("sync", "--store", str(project.root / "store"), "--frozen",
                             "--no-check")
    assert result.code == 0 and said in result.err, result.err


def test_a_lock_named_without_its_target_is_refused(make_index, project: Project):
    _fleet(project, make_index)
    assert project.gpulock("lock").code == 0
    result = project.gpulock("sync", "--lock", str(project.lock_path), "--frozen")
    assert result.code == 1
    assert "say which one" in result.err and "--target NAME" in result.err


def test_a_target_gpu_toml_does_not_declare_is_refused_even_when_nothing_changed(
        make_index, project: Project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    project.write(f'[project]\nname = "p"\npython = "{sys.version_info[0]}.'
                  f'{sys.version_info[1]}"\nindex = "{index.url}"\n'
                  '[groups.main]\npackages = ["app"]\n')
    assert project.gpulock("sync").code == 0
    assert "up to date" in project.gpulock("sync", "--target", "default").err
    typo = project.gpulock("sync", "--target", "cu130")
    assert typo.code == 1 and "no target named 'cu130'" in typo.err, typo.err


@x86_64_pod
def test_uv_installs_a_targets_lock_as_written(make_index, project: Project, tmp_path: Path):
    from tests.test_uv_interop import uv
    _fleet(project, make_index)
    assert project.gpulock("lock").code == 0
    venv = tmp_path / "venv"
    assert uv("venv", "--python", sys.executable, str(venv), cwd=tmp_path).returncode == 0
    installed = uv("pip", "install", "--python", str(venv / "bin" / "python"), "-r",
                   str(project.root / "pylock.gpu-cu130.toml"), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    frozen = uv("pip", "freeze", "--python", str(venv / "bin" / "python"), cwd=tmp_path)
    assert sorted(frozen.stdout.split()) == ["numpy==2.0", "torch==2.9.0+cu130"]


def test_every_target_pins_the_same_model_commit(make_index, project: Project, hub,
                                                 monkeypatch: pytest.MonkeyPatch):
    first = hub.repo("org/tiny").commit({"config.json": b'{"v": 1}'})
    _fleet(project, make_index)
    with project.manifest.open("a") as manifest:
        manifest.write('[models.tiny]\nsource = "hf://org/tiny"\n')
    assert project.gpulock("lock").code == 0
    hub.repo("org/tiny").commit({"config.json": b'{"v": 2}'})  # main moves on
    text = project.manifest.read_text()
    project.write(text.replace("[targets.arm]", '[targets.gh200]\nplatform = "linux_aarch64"'
                                                '\n\n[targets.arm]'))
    result = project.gpulock("lock")  # gh200 is new: it takes the default target's pin
    assert result.code == 0, result.err
    for name in ("pylock.gpu.toml", "pylock.gpu-gh200.toml", "pylock.gpu-arm.toml"):
        assert first in (project.root / name).read_text(), name
    unknown = project.gpulock("lock", "--upgrade-package", "nonesuch")
    assert unknown.code == 1 and "is in gpu.toml or any target's lock" in unknown.err
