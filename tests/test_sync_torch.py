"""The real torch-2.13.0+cpu wheel: 12,000 files and native libraries, synced and imported."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gpulock.env.interpreter import find_python
from tests.conftest import Project, torch_cpu_wheel

TORCH = torch_cpu_wheel()
MIRROR = Path("/opt/pypi/simple")
MATMUL = "import torch; print(torch.ones(3) @ torch.ones(3))"


@pytest.mark.skipif(TORCH is None, reason="the torch-2.13.0+cpu wheel is not in pip's "
                    "configured find-links folder (pip config list)")
@pytest.mark.skipif(not MIRROR.is_dir(), reason=f"torch's dependencies need {MIRROR}")
@pytest.mark.skipif(find_python("3.11") is None, reason="the torch wheel is for CPython 3.11")
def test_torch_syncs_and_multiplies_through_run_and_through_pythonpath(project: Project):
    assert TORCH is not None
    project.write(f'[project]\nname = "torchcpu"\npython = "3.11"\nindex = "{MIRROR.as_uri()}"\n'
                  f'[groups.pytorch]\nindex = "{TORCH.parent.as_uri()}"\n'
                  'packages = ["torch==2.13.0"]\n[verify]\nimports = ["torch"]\n')
    store = str(project.root / "store")
    result = project.gpulock("sync", "--store", store)
    assert result.code == 0, result.err
    assert "+ torch 2.13.0+cpu" in result.err

    run = subprocess.run(["gpulock", "run", "--manifest", str(project.manifest), "--store",
                          store, "--", "python", "-c", MATMUL], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{Path(os.sys.executable).parent}:"
                              f"{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "tensor(3.)"

    exports = project.gpulock("env", "--store", store, "--format", "json")
    pythonpath = __import__("json").loads(exports.out)["PYTHONPATH"]
    system = subprocess.run([find_python("3.11"), "-c", MATMUL], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": pythonpath})
    assert system.returncode == 0, system.stderr
    assert system.stdout.strip() == "tensor(3.)"

    site = Path(pythonpath)
    assert (site / "torch").is_symlink()  # plain $ORIGIN RPATHs: one link for 12k files
    again = project.gpulock("sync", "--store", store)
    assert again.code == 0 and "is up to date" in again.err
