"""`gpulock doctor` against a faked driver at its boundary: an `nvidia-smi` on PATH that
answers as the real one does (its banner, and the CSV of `--query-gpu`)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.support.dists import make_sdist

HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
H100 = ("NVIDIA H100 80GB HBM3", "9.0", 80_000, 81_559)


def fake_driver(folder: Path, version: str = "550.54.15", cuda: str = "12.4",
                gpus: tuple[tuple[str, str, int, int], ...] = (H100,)) -> Path:
    """A folder holding an `nvidia-smi` that describes this driver and these GPUs."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"{i}, {name}, {cap}, {free}, {total}"
                     for i, (name, cap, free, total) in enumerate(gpus))
    banner = (f"| NVIDIA-SMI {version}   Driver Version: {version}   CUDA Version: {cuda}     |")
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n"
                      f'case "$1" in --query-gpu=*) printf "%s\\n" "{rows}";; '
                      f'*) printf "%s\\n" "{banner}";; esac\n')
    script.chmod(0o755)
    return folder


def header_only_safetensors(shape: list[int]) -> bytes:
    """The header of an F32 tensor of `shape` (lock reads headers only: no data needed)."""
    count = 1
    for dim in shape:
        count *= dim
    raw = json.dumps({"w": {"dtype": "F32", "shape": shape,
                            "data_offsets": [0, count * 4]}}).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


@pytest.fixture
def pod(project: Project, make_index, hub, monkeypatch, tmp_path: Path):
    """Write a project (CUDA, a model, a build group's arch list), lock it, and run doctor
    with a given driver on PATH (or none)."""
    index = make_index()
    make_sdist(index.folder, "ext", "1.0")  # built on the pod: its group's arch list matters

    def run(*, cuda: str | None = "12.4", driver: Path | None = None, arch: str | None = None,
            weights: list[int] | None = None, fmt: str = "text") -> tuple[int, str]:
        models = ""
        if weights:
            repo = "org/big-" + "x".join(map(str, weights))
            hub.repo(repo).commit({"model.safetensors": header_only_safetensors(weights)},
                                  lfs={"model.safetensors"})
            models = f'[models.big]\nsource = "hf://{repo}"\n'
        build = (f'[groups.ext]\npackages = ["ext"]\n'
                 f'env = {{ TORCH_CUDA_ARCH_LIST = "{arch}" }}\n' if arch else "")
        project.write(f'[project]\nname = "p"\npython = "{HOST_PYTHON}"\n'
                      + (f'cuda = "{cuda}"\n' if cuda else "")
                      + f'index = "{index.url}"\n[groups.main]\npackages = []\n{build}{models}')
        project.lock()
        path = f"{driver}:/usr/bin:/bin" if driver else "/usr/bin:/bin"
        monkeypatch.setenv("PATH", path)
        result = project.gpulock("doctor", "--store", str(project.root / "store"),
                                 "--format", fmt)
        return result.code, result.out

    return run


def test_without_a_gpu_doctor_says_so_and_fails_only_when_the_lock_needs_cuda(pod):
    code, out = pod(cuda=None)
    assert code == 0 and "no NVIDIA driver here" in out and "the lock needs no CUDA" in out
    code, out = pod(cuda="12.1")
    assert code == 1 and "blocker  no NVIDIA driver here" in out and "CUDA 12.1" in out


def test_a_driver_too_old_for_the_locks_cuda_is_a_blocker(pod, tmp_path: Path):
    code, out = pod(cuda="12.8", driver=fake_driver(tmp_path / "old", "520.61.05", "11.8"))
    assert code == 1
    assert ("blocker  the lock's CUDA 12.8 needs a newer driver than 520.61.05 (it runs CUDA "
            "11.8 at most)") in out
    code, out = pod(cuda="12.8", driver=fake_driver(tmp_path / "minor", "535.104.05", "12.2"))
    assert code == 0 and "warn     the lock's CUDA 12.8 is newer than the 12.2" in out
    code, out = pod(cuda="12.4", driver=fake_driver(tmp_path / "new"))
    assert code == 0 and "ok       the lock's CUDA 12.4 runs on this driver" in out
    assert "GPU 0: NVIDIA H100 80GB HBM3, compute capability 9.0, 78.1 GiB free" in out


def test_each_models_weight_memory_is_set_against_each_gpu(pod, tmp_path: Path):
    small = fake_driver(tmp_path / "small", gpus=(("NVIDIA A10G", "8.6", 20_000, 23_028),
                                                  ("NVIDIA A10G", "8.6", 22_000, 23_028)))
    code, out = pod(driver=small, weights=[65536, 65536])  # 16 GiB of F32
    assert code == 0 and "ok       big 16.00 GiB fits on GPU 1 (21.5 GiB free)" in out
    code, out = pod(driver=small, weights=[65536, 65536, 2])  # 32 GiB
    assert code == 0 and "warn     big 32.00 GiB of weights fits on no GPU" in out


@pytest.mark.parametrize("arch, gpu, covered", [
    ("8.0;8.6", H100, False), ("8.0;8.6+PTX", H100, True), ("Ampere", H100, True),
    ("9.0a", H100, True), ("8.0", ("NVIDIA A10G", "8.6", 20_000, 23_028), True),
    ("8.9", ("NVIDIA A100", "8.0", 40_000, 40_960), False),
    ("9.0a+PTX", ("NVIDIA B200", "10.0", 180_000, 183_359), False)])
def test_a_build_arch_list_that_misses_the_gpu_is_a_blocker(pod, tmp_path: Path, arch, gpu,
                                                            covered):
    code, out = pod(driver=fake_driver(tmp_path / "gpu", gpus=(gpu,)), arch=arch)
    if covered:
        assert code == 0 and "group 'ext' builds for every GPU here" in out, out
    else:
        assert code == 1 and f"has no kernels for compute capability {gpu[1]}" in out, out


def test_unknown_gpu_fields_leave_the_rest_of_the_report(pod, tmp_path: Path):
    vgpu = fake_driver(tmp_path / "vgpu", gpus=(("GRID A100-40C", "[N/A]", "[N/A]",
                                                 "[Not Supported]"),))  # type: ignore[arg-type]
    code, out = pod(driver=vgpu, weights=[1024, 1024])
    assert code == 0 and "GPU 0: GRID A100-40C, compute capability [N/A]" in out
    assert "warn     big 0.00 GiB of weights fits on no GPU" in out


def test_doctor_speaks_json_for_scripts(pod, tmp_path: Path):
    code, out = pod(cuda="12.8", driver=fake_driver(tmp_path / "old", "520.61.05", "11.8"),
                    fmt="json")
    report = json.loads(out)
    assert code == 1 and report["blockers"] == 1
    assert {c["name"] for c in report["checks"]} >= {"driver", "gpu 0", "cuda", "glibc",
                                                     "python", "disk"}
    assert next(c for c in report["checks"] if c["name"] == "cuda")["status"] == "blocker"


def test_sync_stops_at_a_blocker_before_fetching_and_no_check_skips_it(pod, project: Project,
                                                                      tmp_path: Path):
    code, _ = pod(cuda="12.8", driver=fake_driver(tmp_path / "old", "520.61.05", "11.8"))
    assert code == 1
    store = str(project.root / "store")
    stopped = project.gpulock("sync", "--store", store)
    assert stopped.code == 1 and "needs a newer driver than 520.61.05" in stopped.err
    assert "'sync --no-check' skips the checks" in stopped.err
    assert not list((project.root / "store" / "v1").glob("envs/p/gen-*"))
    assert project.gpulock("sync", "--store", store, "--no-check").code == 0
