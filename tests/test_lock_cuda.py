"""The target's CUDA constrains the resolution: PyPI's CUDA builds carry no `+cu` label,
their CUDA is in NVIDIA's runtime packages they pull in, and one newer than `cuda` is never
chosen; the lock records the CUDA its builds need, and doctor holds the driver to that."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from gpulock.lock import lockfile
from gpulock.lock.cuda import built_for, needed
from tests.conftest import Project
from tests.support.dists import make_wheel
from tests.test_doctor import fake_driver

TAG = "cp310-cp310-manylinux_2_17_x86_64"


@pytest.mark.parametrize(("name", "version", "cuda"), [
    ("torch", "2.9.0+cu128", (12, 8)),                     # the PyTorch index's label
    ("torch", "1.8.0+cu92", (9, 2)),
    ("torch", "2.0.0+cu12", None),                         # not a label torch writes
    ("cuda-bindings", "13.0.1", (13, 0)),                  # its major is its CUDA's
    ("cupy-cuda12x", "13.6.0", (12, 0)),
    ("torch", "2.9.0+cpu", None),
    ("torch", "2.15.0", None),                             # PyPI's: its dependencies say
    ("nvidia-cuda-runtime", "13.2.86", (13, 2)),           # toolkit-versioned
    ("nvidia-cuda-runtime-cu12", "12.8.90", (12, 8)),
    ("nvidia-cublas", "13.1.0.3", None),                   # 13.1 ships with CUDA 13.0
    ("nvidia-nvjitlink", "13.5.37", None),
    ("nvidia-nvjitlink-cu12", "12.8.93", (12, 0)),
    ("cuda-toolkit", "12.9.1", (12, 9)),
    ("nvidia-cufft-cu12", "11.3.3.83", (12, 0)),           # its own numbers: the name says
    ("nvidia-cudnn-cu13", "9.13.0.50", (13, 0)),
    ("nvidia-nccl-cu12", "2.27.3", (12, 0)),
    ("nvidia-cudnn", "9.13.0.50", None),                   # neither says
    ("numpy", "2.3.5", None),
])
def test_what_a_distribution_says_of_its_cuda(name: str, version: str,
                                              cuda: tuple[int, int] | None):
    assert built_for(name, Version(version)) == cuda


def test_a_lock_needs_the_newest_cuda_of_its_builds():
    assert needed([("torch", Version("2.9.0")), ("nvidia-cufft-cu12", Version("11.3.3")),
                   ("nvidia-cuda-runtime-cu12", Version("12.6.77"))]) == "12.6"
    assert needed([("numpy", Version("2.0"))]) is None


def _pypi_like(folder: Path) -> None:
    """torch as PyPI ships it: 3.0 a CUDA 13 build, 2.9 a CUDA 12.8 build, 2.5 a CUDA 12.4
    build, their CUDA only in the runtime packages they require."""
    for version, runtime in (("3.0", "nvidia-cuda-runtime==13.2.86"),
                             ("2.9", "nvidia-cuda-runtime-cu12==12.8.90"),
                             ("2.5", "nvidia-cuda-runtime-cu12==12.4.127")):
        make_wheel(folder, "torch", version, requires=[runtime, "nvidia-cufft-cu12; "
                                                       "python_version >= '3'"]
                   if "cu12" in runtime else [runtime], tag=TAG)
    make_wheel(folder, "nvidia-cuda-runtime", "13.2.86", tag=TAG)
    for runtime in ("12.8.90", "12.4.127"):
        make_wheel(folder, "nvidia-cuda-runtime-cu12", runtime, tag=TAG)
    make_wheel(folder, "nvidia-cufft-cu12", "11.3.3.83", tag=TAG)


def _manifest(index: str, cuda: str | None, packages: str = '"torch"') -> str:
    return (f'[project]\nname = "demo"\npython = "3.10"\nindex = "{index}"\n'
            + (f'cuda = "{cuda}"\n' if cuda else "")
            + f"[groups.main]\npackages = [{packages}]\n")


@pytest.mark.parametrize(("cuda", "torch", "runtime", "need"), [
    (None, "3.0", "nvidia-cuda-runtime", "13.2"),          # no target CUDA: the newest
    ("13.2", "3.0", "nvidia-cuda-runtime", "13.2"),
    ("12.8", "2.9", "nvidia-cuda-runtime-cu12", "12.8"),   # the newest CUDA 12 build
    ("13.0", "2.9", "nvidia-cuda-runtime-cu12", "12.8"),   # 13.2 is newer than 13.0
    ("12.6", "2.5", "nvidia-cuda-runtime-cu12", "12.4"),
])
def test_the_target_cuda_picks_the_newest_build_its_driver_runs(
        make_index, project: Project, cuda: str | None, torch: str, runtime: str, need: str):
    index = make_index()
    _pypi_like(index.folder)
    project.write(_manifest(index.url, cuda))
    pins = project.pins()
    assert pins["torch"] == torch and runtime in pins
    written = project.lock_path.read_text()
    assert f'cuda-needed = "{need}"' in written
    assert lockfile.cuda_needed(lockfile.read(project.lock_path)) == need


def test_no_build_for_the_target_cuda_is_explained_in_words(make_index, project: Project):
    index = make_index()
    _pypi_like(index.folder)
    project.write(_manifest(index.url, "12.1"))
    result = project.gpulock("lock")
    assert result.code == 1
    for runtime, cuda in (("nvidia-cuda-runtime 13.2.86", "13.2"),
                          ("nvidia-cuda-runtime-cu12 12.4.127", "12.4"),
                          ("nvidia-cuda-runtime-cu12 12.8.90", "12.8")):
        assert (f"{runtime} is built for CUDA {cuda}, newer than the target's cuda = 12.1"
                in result.err), result.err
    assert "torch 2.9 depends on nvidia-cuda-runtime-cu12==12.8.90" in result.err
    assert "Traceback" not in result.err


def test_doctor_holds_the_driver_to_what_the_locked_builds_need(
        make_index, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    index = make_index()
    _pypi_like(index.folder)
    project.write(_manifest(index.url, "13.0"))  # locks the CUDA 12.8 build (see above)
    project.lock()
    monkeypatch.setenv("PATH", f"{fake_driver(tmp_path / 'smi', '570.133.07', '12.8')}:"
                               "/usr/bin:/bin")
    result = project.gpulock("doctor", "--store", str(project.root / "store"))
    assert "ok       the lock's CUDA 12.8 runs on this driver" in result.out, result.out
