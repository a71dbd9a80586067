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


def uv_compile(requirements: list[str], folder: Path, python: str) -> dict[str, str]:
    source = folder / "requirements.in"
    source.write_text("\n".join(requirements) + "\n")
    result = subprocess.run(
        [find_uv_bin(), "pip", "compile", str(source), "--python-platform",
         "x86_64-manylinux_2_28", "--python-version", python, "--no-header", "--no-annotate",
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
