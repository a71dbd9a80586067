"""Model sources beyond the hubs (seed 001's list): a mounted folder, S3, git, and another
project's pins; each pinned with every file's sha256, synced into the blob store and read
from `files/<project>/<model>/`."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.support.s3 import SeaweedFS


def _write(project: Project, name: str, models: str) -> None:
    project.write(f'[project]\nname = "{name}"\npython = "3.11"\n'
                  f'[groups.main]\npackages = []\n{models}')


def _view(store: Path, project: str, model: str) -> Path:
    return store / "v1" / "files" / project / model


def _share(folder: Path) -> dict[str, bytes]:
    files = {"config.json": b'{"hidden": 8}', "weights/part-1.bin": os.urandom(70_000),
             "weights/part-2.bin": os.urandom(30_000)}
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return files


@pytest.mark.parametrize("form", ["file-url", "absolute-path"])
def test_a_mounted_folder_is_pinned_copied_into_the_store_and_read_from_files(
        form: str, project: Project, tmp_path: Path):
    share = tmp_path / "nfs" / "dataset"
    files = _share(share)
    source = share.as_uri() if form == "file-url" else str(share)
    _write(project, "p", f'[models.data]\nsource = "{source}"\n')
    store = tmp_path / "store"
    result = project.gpulock("sync", "--models-only", "--store", str(store))
    assert result.code == 0, result.err
    pinned = {f["path"]: f for f in project.lock().models[0].as_dict()["files"]}
    assert set(pinned) == set(files) and all(len(f["sha256"]) == 64 for f in pinned.values())
    view = _view(store, "p", "data")
    for path, data in files.items():
        assert (view / path).read_bytes() == data
        assert (store / "v1" / "blobs") in (view / path).resolve().parents  # a copy, not the share


def test_a_file_changed_on_the_share_after_the_lock_is_an_error_not_a_drift(
        project: Project, tmp_path: Path):
    share = tmp_path / "nfs" / "dataset"
    _share(share)
    _write(project, "p", f'[models.data]\nsource = "{share}"\n')
    assert project.gpulock("lock").code == 0
    (share / "config.json").write_bytes(b'{"hidden": 16}')
    store = tmp_path / "store"
    result = project.gpulock("sync", "--models-only", "--frozen", "--store", str(store))
    assert result.code == 1
    assert "model 'data': config.json" in result.err and "the lock says" in result.err
    changed = hashlib.sha256((share / "config.json").read_bytes()).hexdigest()
    assert changed not in result.err  # a local file's hash is never printed
    assert not _view(store, "p", "data").exists()


def test_a_link_on_the_share_is_refused_at_lock(project: Project, tmp_path: Path):
    share = tmp_path / "nfs" / "dataset"
    _share(share)
    (share / "secrets").symlink_to("/etc")
    _write(project, "p", f'[models.data]\nsource = "{share}"\n')
    result = project.gpulock("lock")
    assert result.code == 1 and "is a symbolic link" in result.err


def test_an_s3_folder_and_an_s3_object_are_pinned_and_synced(
        project: Project, seaweedfs: SeaweedFS, tmp_path: Path, s3_credentials: None):
    client = seaweedfs.client()
    files = {"config.json": b"{}", "weights/model.safetensors": os.urandom(200_000)}
    for path, data in files.items():
        client.put_object(Bucket=seaweedfs.BUCKET, Key=f"models/tiny/{path}", Body=data)
    folder = f"s3://{seaweedfs.BUCKET}/models/tiny/?endpoint={seaweedfs.endpoint}"
    one = (f"s3://{seaweedfs.BUCKET}/models/tiny/weights/model.safetensors"
           f"?endpoint={seaweedfs.endpoint}")
    _write(project, "p", f'[models.tiny]\nsource = "{folder}"\n'
                         f'[models.weights]\nsource = "{one}"\n')
    store = tmp_path / "store"
    result = project.gpulock("sync", "--models-only", "--store", str(store))
    assert result.code == 0, result.err
    for path, data in files.items():
        assert (_view(store, "p", "tiny") / path).read_bytes() == data
    assert (_view(store, "p", "weights") / "model.safetensors").read_bytes() == files[
        "weights/model.safetensors"]


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
                          cwd=folder, capture_output=True, text=True, check=True).stdout


def test_a_git_repository_is_pinned_to_a_commit_and_synced(project: Project, tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    files = _share(repo)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "v1")
    _git(repo, "tag", "v1")
    first = _git(repo, "rev-parse", "HEAD").strip()
    (repo / "config.json").write_bytes(b'{"hidden": 99}')  # a later commit: not pinned
    _git(repo, "commit", "-q", "-am", "v2")
    _write(project, "p", f'[models.tiny]\nsource = "git+{repo.as_uri()}@v1"\n')
    store = tmp_path / "store"
    result = project.gpulock("sync", "--models-only", "--store", str(store))
    assert result.code == 0, result.err
    assert project.lock().models[0].commit == first
    for path, data in files.items():
        assert (_view(store, "p", "tiny") / path).read_bytes() == data


def test_a_git_lfs_pointer_without_git_lfs_is_a_clear_error(project: Project, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "model.bin").write_text("version https://git-lfs.github.com/spec/v1\n"
                                    f"oid sha256:{'a' * 64}\nsize 123\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "lfs")
    (tmp_path / "bin").mkdir()  # a PATH with git and without git-lfs
    os.symlink(str(shutil.which("git")), tmp_path / "bin" / "git")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    _write(project, "p", f'[models.tiny]\nsource = "git+{repo.as_uri()}@main"\n')
    result = project.gpulock("lock")
    assert result.code == 1
    assert "keeps files in Git LFS, and git-lfs is not installed" in result.err


def test_a_ref_model_reuses_another_projects_files_with_zero_downloads(
        project: Project, tmp_path: Path):
    share = tmp_path / "nfs" / "dataset"
    files = _share(share)
    store = tmp_path / "store"
    other = tmp_path / "other"
    other.mkdir()
    (other / "gpu.toml").write_text('[project]\nname = "shared"\npython = "3.11"\n'
                                    f'[groups.main]\npackages = []\n'
                                    f'[models.dataset]\nsource = "{share}"\n')
    assert project.gpulock("sync", "--models-only", "--manifest", str(other / "gpu.toml"),
                           "--store", str(store)).code == 0
    for path in files:
        (share / path).unlink()  # the share is gone: only the store has the files now
    _write(project, "mine", '[models.data]\nsource = "ref://shared/dataset"\n')
    result = project.gpulock("sync", "--models-only", "--store", str(store))
    assert result.code == 0, result.err
    assert "Fetching" not in result.err  # zero downloads
    for path, data in files.items():
        assert (_view(store, "mine", "data") / path).read_bytes() == data


def test_a_ref_to_a_project_the_store_does_not_know_is_a_clear_error(project: Project,
                                                                      tmp_path: Path):
    _write(project, "mine", '[models.data]\nsource = "ref://nobody/dataset"\n')
    result = project.gpulock("lock", "--store", str(tmp_path / "store"))
    assert result.code == 1
    assert "names project 'nobody', which has synced no models" in result.err


@pytest.mark.parametrize("source", ["ref://../x", "ref://a", "s3://Bad_Bucket/x",
                                    "file://otherhost/x", "git+https://h/r.git@"])
def test_a_malformed_model_source_is_a_manifest_error_with_its_line(source: str,
                                                                    project: Project):
    _write(project, "p", f'[models.data]\nsource = "{source}"\n')
    result = project.gpulock("lock")
    assert result.code == 1
    assert "gpu.toml:7:" in result.err, result.err  # the source line


def test_a_git_subdirectory_that_leaves_the_repository_is_a_manifest_error(project: Project,
                                                                            tmp_path: Path):
    _write(project, "p", '[models.m]\nsource = "git+file:///srv/repo@main#subdirectory='
                         '../../etc"\n')
    result = project.gpulock("lock")
    assert result.code == 1 and "has a '..' segment" in result.err


def test_a_fifo_planted_as_another_projects_root_is_refused_never_waited_on(
        project: Project, tmp_path: Path):
    roots = tmp_path / "store" / "v1" / "roots" / "models"
    roots.mkdir(parents=True)
    os.mkfifo(roots / "shared.json")
    _write(project, "mine", '[models.data]\nsource = "ref://shared/dataset"\n')
    run = subprocess.run([str(Path(__import__("sys").executable).parent / "gpulock"), "lock",
                          "--manifest", str(project.manifest), "--store",
                          str(tmp_path / "store")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "is damaged" in run.stderr
