"""A real torch C++ extension (seed 003's nvdiffrast and pytorch3d, in small), built without
isolation against the locked torch-2.13.0+cpu: once per lock, for every project."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from gpulock.interpreter import find_python
from tests.conftest import Project, torch_cpu_wheel

TORCH = torch_cpu_wheel()
MIRROR = Path("/opt/pypi/simple")
COMPUTE = "import torch, addone; print(addone.add_one(torch.ones(3)).tolist())"

_SETUP = """\
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension  # needs torch to build

setup(name="addone", version="1.0", packages=["addone"], install_requires=["torch"],
      ext_modules=[CppExtension("addone._C", ["addone/addone.cpp"])],
      cmdclass={"build_ext": BuildExtension})
"""
_SOURCE = """\
#include <torch/extension.h>

torch::Tensor add_one(const torch::Tensor& x) { return x + 1; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("add_one", &add_one); }
"""


def _sdist(folder: Path) -> None:
    """addone 1.0 as most extension packages ship: setup.py, PKG-INFO Metadata 2.1."""
    files = {"setup.py": _SETUP, "addone/addone.cpp": _SOURCE,
             "addone/__init__.py": "import torch  # loads libtorch for _C\n"
                                   "from addone._C import add_one\n",
             "PKG-INFO": "Metadata-Version: 2.1\nName: addone\nVersion: 1.0\n\n"}
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "addone-1.0.tar.gz", "w:gz") as archive:
        for name, text in files.items():
            member = tarfile.TarInfo(f"addone-1.0/{name}")
            data = text.encode()
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


def _manifest(name: str, sources: Path) -> str:
    assert TORCH is not None
    return (f'[project]\nname = "{name}"\npython = "3.11"\nindex = "{MIRROR.as_uri()}"\n'
            f'[groups.pytorch]\nindex = "{TORCH.parent.as_uri()}"\n'
            'packages = ["torch==2.13.0"]\n'
            f'[groups.extensions]\nindex = "{sources.as_uri()}"\nno_build_isolation = true\n'
            'build_requires = ["torch", "setuptools", "ninja"]\nenv = { MAX_JOBS = "2" }\n'
            'packages = ["addone"]\n[verify]\nimports = ["addone"]\n')


@pytest.mark.skipif(TORCH is None, reason="the torch-2.13.0+cpu wheel is not in pip's "
                    "configured find-links folder (pip config list)")
@pytest.mark.skipif(not MIRROR.is_dir(), reason=f"torch's dependencies need {MIRROR}")
@pytest.mark.skipif(find_python("3.11") is None, reason="the torch wheel is for CPython 3.11")
@pytest.mark.skipif(shutil.which("c++") is None, reason="building the extension needs c++")
def test_a_torch_cpp_extension_builds_once_against_the_locked_torch_and_serves_two_projects(
        project: Project, tmp_path: Path):
    sources = tmp_path / "sources"
    _sdist(sources)
    project.write(_manifest("first", sources))
    store = str(project.root / "store")
    result = project.gpulock("sync", "--store", store)  # locks first: setup.py imports torch
    assert result.code == 0, result.err
    built = sorted((Path(store) / "v1" / "pkgs").glob("*-addone-1.0"))
    assert len(built) == 1
    assert list(built[0].rglob("_C.cpython-311-x86_64-linux-gnu.so"))

    gpulock = str(Path(sys.executable).parent / "gpulock")
    run = subprocess.run([gpulock, "run", "--manifest", str(project.manifest), "--store", store,
                          "--", "python", "-c", COMPUTE], capture_output=True, text=True,
                         env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[2.0, 2.0, 2.0]"

    second = tmp_path / "second"
    second.mkdir()
    (second / "gpu.toml").write_text(_manifest("second", sources))
    shutil.copy(project.lock_path, second / "pylock.gpu.toml")
    again = subprocess.run([gpulock, "sync", "--manifest", str(second / "gpu.toml"), "--store",
                            store], capture_output=True, text=True, env=dict(os.environ))
    assert again.returncode == 0, again.stderr
    assert "Fetching" not in again.stderr  # every entry, the built extension too, reused
    assert sorted((Path(store) / "v1" / "pkgs").glob("*-addone-1.0")) == built
