"""Against the real PyPI: gpulock's pins agree with `uv pip compile` for the same target.

Deselected by default (`-m network` runs them); they need PyPI to be reachable.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from uv import find_uv_bin

from tests.conftest import Project

pytestmark = pytest.mark.network

CASES = {
    "torch-and-transformers": ("3.10", ["torch==2.9.1", "transformers==4.57.1", "accelerate"]),
    "web-and-hub": ("3.10", ["transformers==4.35.0", "fastapi", "huggingface-hub<0.18"]),
    # Seed 000's under-pinned stack: deep backtracking through datasets and huggingface-hub.
    "seed-000-under-pinned": ("3.11", ["transformers==4.35.0", "modelscope==1.11.0"]),
}


def uv_compile(requirements: list[str], folder: Path, python: str,
               constraints: tuple[str, ...] | list[str] = (), arch: str = "x86_64"
               ) -> dict[str, str]:
    source = folder / "requirements.in"
    source.write_text("\n".join(requirements) + "\n")
    (folder / "constraints.txt").write_text("".join(f"{c}\n" for c in constraints))
    result = subprocess.run(
        [find_uv_bin(), "pip", "compile", str(source), "--constraint",
         str(folder / "constraints.txt"), "--python-platform",
         f"{arch}-manylinux_2_28", "--python-version", python, "--no-header", "--no-annotate",
         "--index-url", "https://pypi.org/simple", "--cache-dir", str(folder / "uv-cache"),
         "-q"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    pins = {}
    for line in result.stdout.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[name] = version
    return pins


@pytest.mark.parametrize("case", sorted(CASES))
def test_pins_match_uv_pip_compile_for_linux_x86_64(case, project: Project, tmp_path: Path):
    python, requirements = CASES[case]
    packages = ", ".join(f'"{r}"' for r in requirements)
    project.write(f'[project]\nname = "{case}"\npython = "{python}"\n'
                  f'[groups.main]\npackages = [{packages}]\n')
    assert project.pins() == uv_compile(requirements, tmp_path, python)


def test_cuda_12_8_locks_what_uv_picks_with_cuda_13_runtimes_excluded(project: Project,
                                                                      tmp_path: Path):
    """PyPI's default torch is a CUDA 13 build: `cuda = "12.8"` backtracks to the newest
    CUDA 12 build, as uv does when told that no CUDA runtime newer than 12.8 may come in."""
    project.write('[project]\nname = "cu128"\npython = "3.11"\ncuda = "12.8"\n'
                  '[groups.main]\npackages = ["torch"]\n')
    pins = project.pins()
    uv = uv_compile(["torch"], tmp_path, "3.11",
                    constraints=["nvidia-cuda-runtime<12.9", "nvidia-cuda-runtime-cu12<12.9"])
    assert pins["torch"] == uv["torch"] and pins == uv


def test_a_three_target_lock_pins_what_uv_pins_for_each_target(project: Project,
                                                               tmp_path: Path):
    """CUDA 12.8 and 13.0 on x86_64, CUDA 12.8 on aarch64 (GH200): each target's lock against
    uv told that platform and no CUDA runtime newer than the target's."""
    project.write('[project]\nname = "fleet"\npython = "3.11"\ncuda = "12.8"\n'
                  '[targets.cu130]\ncuda = "13.0"\n'
                  '[targets.gh200]\nplatform = "linux_aarch64"\n'
                  '[groups.main]\npackages = ["torch", "transformers"]\n')
    result = project.gpulock("lock")
    assert result.code == 0, result.err
    from gpulock.lock import lockfile

    for name, arch, newest in (("default", "x86_64", "12.9"), ("cu130", "x86_64", "13.1"),
                               ("gh200", "aarch64", "12.9")):
        path = lockfile.target_path(project.lock_path, name)
        pins = {p.name: p.version for p in lockfile.read(path).packages}
        folder = tmp_path / name
        folder.mkdir()
        uv = uv_compile(["torch", "transformers"], folder, "3.11", arch=arch, constraints=[
            f"nvidia-cuda-runtime<{newest}", f"nvidia-cuda-runtime-cu12<{newest}"])
        assert pins == uv, name
