"""uv reads gpulock's lock (PEP 751) and installs exactly the locked set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from uv import find_uv_bin

from gpulock.env.interpreter import find_python
from tests.conftest import Project
from tests.support.dists import make_sdist, make_wheel


def uv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_uv_bin(), *args], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd),
                               "UV_CACHE_DIR": str(cwd / "uv-cache"),
                               "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"})


@pytest.fixture
def python310(tmp_path: Path) -> str:
    found = find_python("3.10")
    if found is None:
        pytest.skip("no CPython 3.10 on this machine for the target venv")
    return found


def test_uv_pip_install_of_the_lock_installs_exactly_the_locked_set(make_index, project: Project,
                                                                     python310: str, tmp_path):
    default, gpu = make_index(), make_index()
    make_wheel(gpu.folder, "torchish", "2.4.1+cu121", requires=["helper>=1"],
               tag="cp310-cp310-manylinux_2_17_x86_64")
    make_wheel(gpu.folder, "torchish", "2.4.1+cu118", tag="cp310-cp310-manylinux_2_17_x86_64")
    make_wheel(default.folder, "torchish", "9.9")  # must not win: explicit index
    make_wheel(default.folder, "helper", "1.0")
    make_wheel(default.folder, "helper", "2.0", requires=['old; python_version < "3.11"'])
    make_wheel(default.folder, "old", "1.0")
    make_wheel(default.folder, "web", "1.0", extras={"fast": ["speed"]})
    make_wheel(default.folder, "speed", "3.0")
    make_sdist(default.folder, "srconly", "0.5")
    project.write(f'[project]\nname = "d"\npython = "3.10"\ncuda = "12.1"\n'
                  f'index = "{default.url}"\n'
                  f'[groups.gpu]\nindex = "{gpu.url}"\npackages = ["torchish==2.4.1"]\n'
                  '[groups.main]\npackages = ["web[fast]", "srconly"]\n')
    lock = project.lock()
    expected = {(p.name, p.version) for p in lock.packages}
    assert ("torchish", "2.4.1+cu121") in expected and ("old", "1.0") in expected

    venv = tmp_path / "venv"
    assert uv("venv", "--python", python310, str(venv), cwd=tmp_path).returncode == 0
    result = uv("pip", "install", "--python", str(venv / "bin" / "python"), "-r",
                str(project.lock_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frozen = uv("pip", "freeze", "--python", str(venv / "bin" / "python"), cwd=tmp_path)
    installed = {tuple(line.split("==")) for line in frozen.stdout.split()}
    assert installed == expected
