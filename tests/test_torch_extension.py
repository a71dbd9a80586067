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

from gpulock.env.interpreter import find_python
from tests.conftest import Project, torch_cpu_wheel

TORCH = torch_cpu_wheel()
MIRROR = Path("/opt/pypi/simple")
COMPUTE = "import torch, addone; print(addone.add_one(torch.ones(3)).tolist())"
GPULOCK = str(Path(sys.executable).parent / "gpulock")

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


_CUDA_SETUP = """\
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

setup(name="addone", version="1.0", packages=["addone"], install_requires=["torch"],
      ext_modules=[CUDAExtension("addone._C", ["addone/addone.cpp", "addone/kernel.cu"])],
      cmdclass={"build_ext": BuildExtension})
"""
_CUDA_SOURCE = """\
#include <torch/extension.h>

torch::Tensor add_one_cuda(const torch::Tensor& x);

torch::Tensor add_one(const torch::Tensor& x) { return x.is_cuda() ? add_one_cuda(x) : x + 1; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("add_one", &add_one); }
"""
_KERNEL = """\
#include <torch/extension.h>

__global__ void add_one_kernel(const float* in, float* out, int64_t n) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] + 1.0f;
}

torch::Tensor add_one_cuda(const torch::Tensor& x) {
  auto in = x.contiguous().to(torch::kFloat);
  auto out = torch::empty_like(in);
  int64_t n = in.numel();
  add_one_kernel<<<(n + 255) / 256, 256>>>(in.data_ptr<float>(), out.data_ptr<float>(), n);
  return out;
}
"""


def _computes(project: Project, store: str) -> None:
    """The extension adds one to a tensor, run through `gpulock run` in the synced env."""
    run = subprocess.run([GPULOCK, "run", "--manifest", str(project.manifest), "--store", store,
                          "--", "python", "-c", COMPUTE], capture_output=True, text=True,
                         env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[2.0, 2.0, 2.0]"


def _sdist(folder: Path, cuda: bool = False) -> None:
    """addone 1.0 as most extension packages ship: setup.py, PKG-INFO Metadata 2.1."""
    sources = ({"setup.py": _CUDA_SETUP, "addone/addone.cpp": _CUDA_SOURCE,
                "addone/kernel.cu": _KERNEL} if cuda
               else {"setup.py": _SETUP, "addone/addone.cpp": _SOURCE})
    files = {**sources,
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


def _manifest(name: str, sources: Path, cuda: bool = False, build_requires: bool = True
              ) -> str:
    torch = ('[groups.pytorch]\npackages = ["torch==2.13.0"]\n' if cuda else
             f'[groups.pytorch]\nindex = "{TORCH.parent.as_uri()}"\n'  # type: ignore[union-attr]
             'packages = ["torch==2.13.0"]\n')
    env = ('{ MAX_JOBS = "2", CUDA_HOME = "/usr/local/cuda-13.0", '
           'TORCH_CUDA_ARCH_LIST = "8.0;9.0" }' if cuda else '{ MAX_JOBS = "2" }')
    index = "https://pypi.org/simple" if cuda else MIRROR.as_uri()
    return (f'[project]\nname = "{name}"\npython = "3.11"\nindex = "{index}"\n{torch}'
            f'[groups.extensions]\nindex = "{sources.as_uri()}"\nno_build_isolation = true\n'
            + ('build_requires = ["torch", "setuptools", "ninja"]\n' if build_requires else "")
            + f'env = {env}\npackages = ["addone"]\n[verify]\nimports = ["addone"]\n')


def needs_torch_build(test):  # type: ignore[no-untyped-def]
    """What building the C++ extension against the real torch wheel needs here."""
    for needed in (
            pytest.mark.skipif(TORCH is None, reason="the torch-2.13.0+cpu wheel is not in "
                               "pip's configured find-links folder (pip config list)"),
            pytest.mark.skipif(not MIRROR.is_dir(), reason=f"torch's dependencies need {MIRROR}"),
            pytest.mark.skipif(find_python("3.11") is None,
                               reason="the torch wheel is for CPython 3.11"),
            pytest.mark.skipif(shutil.which("c++") is None,
                               reason="building the extension needs c++")):
        test = needed(test)
    return test


@needs_torch_build
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

    _computes(project, store)

    second = tmp_path / "second"
    second.mkdir()
    (second / "gpu.toml").write_text(_manifest("second", sources))
    shutil.copy(project.lock_path, second / "pylock.gpu.toml")
    again = subprocess.run([GPULOCK, "sync", "--manifest", str(second / "gpu.toml"), "--store",
                            store], capture_output=True, text=True, env=dict(os.environ))
    assert again.returncode == 0, again.stderr
    assert "Fetching" not in again.stderr  # every entry, the built extension too, reused
    assert sorted((Path(store) / "v1" / "pkgs").glob("*-addone-1.0")) == built


@pytest.mark.network
@pytest.mark.skipif(find_python("3.11") is None, reason="the extension is built for CPython 3.11")
@pytest.mark.skipif(not Path("/usr/local/cuda-13.0/bin/nvcc").is_file(),
                    reason="needs the CUDA 13 toolkit at /usr/local/cuda-13.0")
def test_a_cuda_extension_builds_with_nvcc_against_torch_from_pypi(project: Project,
                                                                   tmp_path: Path):
    sources = tmp_path / "sources"
    _sdist(sources, cuda=True)
    project.write(_manifest("cuda", sources, cuda=True))
    store = str(project.root / "store")
    result = project.gpulock("sync", "--store", store)
    assert result.code == 0, result.err
    built = sorted((Path(store) / "v1" / "pkgs").glob("*-addone-1.0"))
    assert len(built) == 1
    library = next(built[0].rglob("_C.cpython-311-x86_64-linux-gnu.so"))
    dynamic = subprocess.run(["readelf", "-d", "-S", str(library)], capture_output=True,
                             text=True).stdout
    assert "libcudart.so.13" in dynamic and ".nv_fatbin" in dynamic  # nvcc's kernels in it
    assert b"SM_800_900" in library.read_bytes()  # built for TORCH_CUDA_ARCH_LIST 8.0;9.0
    _computes(project, store)


@needs_torch_build
def test_without_build_requires_the_extension_locks_against_the_other_groups_as_it_builds(
        project: Project, tmp_path: Path):
    """As pip users write it (`pip install --no-build-isolation` after torch): the metadata
    hook at lock time sees the other groups' locked wheels, as the build at sync sees their
    entries; nothing is compiled to lock."""
    sources = tmp_path / "sources"
    _sdist(sources)
    project.write(_manifest("implicit", sources, build_requires=False))
    locked = project.gpulock("lock")
    assert locked.code == 0, locked.err
    assert not list(Path(project.root).rglob("_C.cpython-*.so"))
    store = str(project.root / "store")
    synced = project.gpulock("sync", "--store", store)
    assert synced.code == 0, synced.err
    _computes(project, store)


@pytest.mark.skipif(not MIRROR.is_dir(), reason=f"setuptools comes from {MIRROR}")
def test_a_build_that_imports_what_it_lacks_says_which_module_and_what_to_do_first(
        project: Project, tmp_path: Path):
    sources = tmp_path / "sources"
    _sdist(sources)
    project.write(f'[project]\nname = "lacks"\npython = "{sys.version_info.major}.'
                  f'{sys.version_info.minor}"\nindex = "{MIRROR.as_uri()}"\n'
                  f'[groups.extensions]\nindex = "{sources.as_uri()}"\n'
                  'no_build_isolation = true\nbuild_requires = ["setuptools"]\n'
                  'packages = ["addone"]\n')
    result = project.gpulock("lock")
    assert result.code == 1
    first = result.err.splitlines()[0]
    assert ("building addone-1.0.tar.gz failed: it imports 'torch', which a venv on CPython "
            in first and "add the package that provides torch to its group's "
            "build_requires" in first), result.err
    assert "ModuleNotFoundError: No module named 'torch'" in result.err  # the log follows
