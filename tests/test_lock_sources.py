"""Sources beyond plain index wheels: git references and the real torch CPU wheel."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Project, torch_cpu_wheel
from tests.support.dists import make_wheel, source_tree

TORCH = torch_cpu_wheel()
needs_torch = pytest.mark.skipif(TORCH is None, reason="the torch-2.13.0+cpu wheel is not in "
                                 "pip's configured find-links folder (pip config list)")
PYPI_MIRROR = Path("/opt/pypi/simple")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                               "PATH": "/usr/bin:/bin:/usr/local/bin"}).stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = source_tree(tmp_path / "repo", "gitpkg", "0.3.3", requires=["lib>=1"])
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "v0.3.3", cwd=repo)
    git("tag", "-a", "v0.3.3", "-m", "release", cwd=repo)
    return repo


def test_a_git_reference_is_locked_to_the_commit_of_its_tag(make_index, project: Project,
                                                            git_repo: Path):
    index = make_index()
    make_wheel(index.folder, "lib", "1.5")
    url = f"git+{git_repo.as_uri()}@v0.3.3"
    project.write(f'[project]\nname = "d"\npython = "3.10"\nindex = "{index.url}"\n'
                  f'[groups.build]\npackages = ["gitpkg @ {url}"]\n')
    commit = git("rev-parse", "v0.3.3^{commit}", cwd=git_repo)
    # A later commit on the branch must not change what the tag pins.
    (git_repo / "later.txt").write_text("later")
    git("add", ".", cwd=git_repo)
    git("commit", "-q", "-m", "later", cwd=git_repo)

    lock = project.lock()
    locked = lock.package("gitpkg")
    assert locked.version == "0.3.3"
    assert locked.vcs.commit_id == commit
    assert locked.vcs.requested_revision == "v0.3.3"
    assert locked.vcs.url == git_repo.as_uri()
    assert locked.wheel is None and locked.sdist is None
    assert locked.dependencies == ("lib",)
    assert lock.package("lib").version == "1.5"
    assert f'commit-id = "{commit}"' in project.lock_path.read_text()


def test_an_unknown_git_revision_is_a_clear_error(project: Project, git_repo: Path):
    project.write('[project]\nname = "d"\npython = "3.10"\n'
                  f'[groups.build]\npackages = ["gitpkg @ git+{git_repo.as_uri()}@nope"]\n')
    result = project.gpulock("lock")
    assert result.code == 1
    assert "has no revision 'nope'" in result.err
    assert "Traceback" not in result.err


@needs_torch
def test_the_real_torch_cpu_wheel_is_locked_with_its_local_label(make_index, project: Project,
                                                                 tmp_path: Path):
    """The large native wheel through a real HTTP index: metadata by range requests."""
    assert TORCH is not None
    torch_index = make_index()
    (torch_index.folder / TORCH.name).symlink_to(TORCH)
    default = (PYPI_MIRROR.as_uri() if PYPI_MIRROR.is_dir() else None)
    if default is None:
        pytest.skip(f"torch's dependencies need the local mirror {PYPI_MIRROR}")
    project.write(f'[project]\nname = "t"\npython = "3.11"\nindex = "{default}"\n'
                  f'[groups.pytorch]\nindex = "{torch_index.url}"\npackages = ["torch==2.13.0"]\n')
    lock = project.lock()
    torch = lock.package("torch")
    assert torch.version == "2.13.0+cpu"
    assert torch.index == torch_index.url
    assert torch.wheel.size == TORCH.stat().st_size
    assert torch.wheel.sha256 == torch_index_hash(TORCH)
    # 190 MB wheel; the lock read its METADATA through a few KB of ranges.
    assert torch_index.bytes_sent[f"/files/{TORCH.name}"] < 5_000_000
    assert {"filelock", "sympy", "networkx", "jinja2", "fsspec"} <= set(torch.dependencies)
    assert all(lock.package(d).index == default for d in torch.dependencies)


@needs_torch
def test_the_real_torch_wheel_from_a_find_links_folder(project: Project):
    assert TORCH is not None
    if not PYPI_MIRROR.is_dir():
        pytest.skip(f"torch's dependencies need the local mirror {PYPI_MIRROR}")
    project.write(f'[project]\nname = "t"\npython = "3.11"\nindex = "{PYPI_MIRROR.as_uri()}"\n'
                  f'[groups.pytorch]\nindex = "{TORCH.parent.as_uri()}"\n'
                  'packages = ["torch"]\n')
    torch = project.lock().package("torch")
    assert torch.version == "2.13.0+cpu"
    assert torch.wheel.url == TORCH.resolve().as_uri()


def torch_index_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_FETCHING_BACKEND = """\
import os
import urllib.request


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    extra = ""
    try:  # as flash-attn's setup.py fetches a prebuilt wheel when it can
        urllib.request.urlopen({url!r}, timeout=10).read()
        extra = "Requires-Dist: fetched\\n"
    except Exception:
        pass
    folder = os.path.join(metadata_directory, "dl-1.0.dist-info")
    os.makedirs(folder)
    with open(os.path.join(folder, "METADATA"), "w") as handle:
        handle.write("Metadata-Version: 2.1\\nName: dl\\nVersion: 1.0\\n" + extra)
    return "dl-1.0.dist-info"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise NotImplementedError
"""


def test_a_metadata_hook_that_downloads_cannot_make_the_lock_depend_on_it(
        make_index, project: Project):
    import io
    import tarfile

    index = make_index()
    probe = index.url.replace("/simple", "/files/prebuilt.whl")
    files = {"PKG-INFO": "Metadata-Version: 2.1\nName: dl\nVersion: 1.0\n\n",
             "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                               'backend-path = ["."]\n',
             "backend.py": _FETCHING_BACKEND.format(url=probe)}
    with tarfile.open(index.folder / "dl-1.0.tar.gz", "w:gz") as archive:
        for name, text in files.items():
            member = tarfile.TarInfo(f"dl-1.0/{name}")
            member.size = len(text.encode())
            archive.addfile(member, io.BytesIO(text.encode()))
    make_wheel(index.folder, "helper", "1.0")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    project.write(f'[project]\nname = "dl"\npython = "{python}"\nindex = "{index.url}"\n'
                  '[groups.ext]\nno_build_isolation = true\nbuild_requires = ["helper"]\n'
                  'packages = ["dl"]\n')
    lock = project.lock()
    assert {p.name for p in lock.packages} == {"dl", "helper"}
    assert not any(path.endswith("prebuilt.whl") for path, _ in index.requests)
    assert "fetched" not in project.lock_path.read_text()


def test_the_missing_module_named_first_is_the_failures_not_an_optional_import():
    from gpulock.build import _failed

    log = ("warning: No module named 'psutil' (optional, skipped)\n"
           "Traceback (most recent call last):\n  File \"setup.py\", line 3\n"
           "OSError: CUDA_HOME environment variable is not set\n")
    said = str(_failed("ext-1.0.tar.gz", "its metadata hook failed", "a venv on CPython 3.11",
                       log))
    assert "it imports" not in said and "(its metadata hook failed)" in said
    log += ("Traceback (most recent call last):\n  File \"setup.py\", line 1\n"
            "ModuleNotFoundError: No module named 'torch'\n")
    said = str(_failed("ext-1.0.tar.gz", "uv build exited 1", "an isolated build on CPython "
                       "3.11", log, isolated=True))
    assert said.startswith("building ext-1.0.tar.gz failed: it imports 'torch', which an "
                           "isolated build on CPython 3.11 lacks; set no_build_isolation = "
                           "true on its group with torch's package in build_requires")
