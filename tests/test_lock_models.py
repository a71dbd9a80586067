"""Models in the lock: the real huggingface_hub client against a fake hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.support.hf_hub import git_blob_sha1
from tests.support.index_server import IndexServer

WEIGHTS = bytes(range(256)) * 20  # 5 KiB: stored in LFS by the fake hub


def write(project: Project, index: IndexServer, models: str) -> None:
    project.write(f'[project]\nname = "m"\npython = "3.10"\nindex = "{index.url}"\n'
                  f'[groups.main]\npackages = []\n{models}')


def model_entry(project: Project, name: str) -> dict:
    return next(m.as_dict() for m in project.lock().models if m.name == name)


def test_a_model_is_pinned_to_its_commit_with_every_files_hash(hub, make_index, project):
    repo = hub.repo("Qwen/Tiny")
    commit = repo.commit({"config.json": b'{"a": 1}', "model.safetensors": WEIGHTS,
                          "sub/dir/tokenizer.json": b"{}", "README.md": b"# tiny"})
    write(project, make_index(), '[models.qwen]\nsource = "hf://Qwen/Tiny"\n'
                                 'include = ["*.json", "*.safetensors"]\n')
    entry = model_entry(project, "qwen")
    assert entry["commit"] == commit and entry["revision"] == "main"
    files = {f["path"]: f for f in entry["files"]}
    assert set(files) == {"config.json", "model.safetensors", "sub/dir/tokenizer.json"}
    assert files["model.safetensors"]["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert files["model.safetensors"]["size"] == len(WEIGHTS)
    assert "sha256" not in files["config.json"]
    assert files["config.json"]["git-sha1"] == git_blob_sha1(b'{"a": 1}')


def test_filters_that_select_nothing_are_one_sentence(hub, make_index, project):
    hub.repo("org/tiny").commit({"config.json": b"{}", "README.md": b"# tiny"})
    write(project, make_index(), '[models.t]\nsource = "hf://org/tiny"\n'
                                 'include = ["*.safetensors"]\n')
    result = project.gpulock("lock")
    assert result.code == 1 and result.err.strip().splitlines() == [
        "error: model 't' (hf://org/tiny@main): no file matches include=['*.safetensors'] "
        "exclude=[]"]


def test_a_moved_branch_is_followed_only_when_upgraded(hub, make_index, project):
    repo = hub.repo("org/model")
    first = repo.commit({"config.json": b"1"})
    index = make_index()
    write(project, index, '[models.m]\nsource = "hf://org/model"\n')
    assert model_entry(project, "m")["commit"] == first
    second = repo.commit({"config.json": b"2", "extra.json": b"x"})
    hub.repo("org/other").commit({"a.json": b"{}"})
    # The manifest changes elsewhere (a second model): m's request did not, so its pin stays.
    write(project, index, '[models.m]\nsource = "hf://org/model"\n'
                          '[models.o]\nsource = "hf://org/other"\n')
    hub.requests.clear()
    assert model_entry(project, "m")["commit"] == first
    assert not any("org/model" in r for r in hub.requests)
    result = project.gpulock("lock", "--upgrade-package", "m")
    assert result.code == 0, result.err
    assert "~ model m" in result.err and "(1 added, 0 removed, 1 changed)" in result.err
    assert model_entry(project, "m")["commit"] == second


def test_tree_pages_are_followed(hub, make_index, project):
    hub.page_size = 2
    hub.repo("org/many").commit({f"shard-{i}.json": b"%d" % i for i in range(7)})
    write(project, make_index(), '[models.many]\nsource = "hf://org/many"\n')
    assert len(model_entry(project, "many")["files"]) == 7


def test_datasets_are_pinned_like_models(hub, make_index, project):
    commit = hub.repo("org/data", kind="dataset").commit({"train.parquet": WEIGHTS})
    write(project, make_index(), '[models.data]\nsource = "hf://datasets/org/data"\n')
    assert model_entry(project, "data")["commit"] == commit


def test_a_gated_repo_needs_a_token_that_never_reaches_the_lock(hub, make_index, project,
                                                                monkeypatch):
    hub.repo("meta/gated", gated=True).commit({"config.json": b"{}"})
    write(project, make_index(), '[models.g]\nsource = "hf://meta/gated"\n')
    refused = project.gpulock("lock")
    assert refused.code == 1
    assert "model 'g' (hf://meta/gated@main) is gated: accept its terms on the Hub and set " \
           "HF_TOKEN" in refused.err
    monkeypatch.setenv("HF_TOKEN", hub.token)
    result = project.gpulock("lock")
    assert result.code == 0, result.err
    assert hub.token not in project.lock_path.read_text() + result.err


@pytest.mark.parametrize(("source", "revision", "message"), [
    ("hf://org/missing", "main", "does not exist, or is private"),
    ("hf://org/present", "v9", "the repository has no revision 'v9'"),
])
def test_missing_repos_and_revisions_are_one_sentence(hub, make_index, project, source,
                                                      revision, message):
    hub.repo("org/present").commit({"a.json": b"{}"})
    write(project, make_index(), f'[models.x]\nsource = "{source}"\nrevision = "{revision}"\n')
    result = project.gpulock("lock")
    assert result.code == 1 and message in result.err
    assert "Traceback" not in result.err


def test_an_https_file_is_pinned_by_its_sha256_and_synced_as_a_file(make_index, project):
    index = make_index()
    (index.folder / "weights.bin").write_bytes(WEIGHTS)
    url = index.url.replace("/simple", "/files/weights.bin")
    write(project, index, f'[models.w]\nsource = "{url}"\n')
    entry = model_entry(project, "w")
    assert entry["files"] == [{"path": "weights.bin", "size": len(WEIGHTS),
                               "sha256": hashlib.sha256(WEIGHTS).hexdigest()}]
    store = project.root / "store"
    result = project.gpulock("sync", "--models-only", "--store", str(store))
    assert result.code == 0, result.err
    assert (store / "v1" / "files" / "m" / "w" / "weights.bin").read_bytes() == WEIGHTS


def safetensors(tensors: dict[str, tuple[str, list[int], int]]) -> bytes:
    """A real safetensors file: 8-byte header length, JSON header, then the data."""
    import json
    import struct

    header, offset, data = {}, 0, b""
    for name, (dtype, shape, width) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + count * width]}
        offset += count * width
        data += bytes(count * width)
    raw = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def test_lock_reports_parameters_dtypes_and_weight_memory_from_headers(hub, make_index,
                                                                       project):
    shard1 = safetensors({"a": ("BF16", [64, 128], 2), "b": ("BF16", [128], 2)})
    shard2 = safetensors({"c": ("F32", [256, 256], 4)})
    hub.repo("org/sharded").commit({"model-00001-of-00002.safetensors": shard1,
                                    "model-00002-of-00002.safetensors": shard2,
                                    "model.safetensors.index.json": b"{}"})
    write(project, make_index(), '[models.s]\nsource = "hf://org/sharded"\n')
    result = project.gpulock("lock")
    assert result.code == 0, result.err
    parameters = 64 * 128 + 128 + 256 * 256
    assert f"{parameters:,} parameters (BF16, F32)" in result.err
    entry = model_entry(project, "s")
    assert entry["weights"] == {"parameters": parameters, "dtypes": ["BF16", "F32"],
                                "bytes": (64 * 128 + 128) * 2 + 256 * 256 * 4}
    # Only the headers were read: two small ranges per shard, never the tensors.
    assert all(r.startswith("bytes=") for f, r in hub.ranges if f.endswith(".safetensors"))


def test_an_archive_with_extract_is_unpacked_once_into_a_tree(make_index, project):
    import io
    import tarfile

    index = make_index()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in {"scene/images/0.txt": b"zero", "scene/calib.txt": b"K"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (index.folder / "scene.tar.gz").write_bytes(buffer.getvalue())
    url = index.url.replace("/simple", "/files/scene.tar.gz")
    write(project, index, f'[models.scene]\nsource = "{url}"\nextract = true\n')
    assert model_entry(project, "scene")["extract"] is True
    store = project.root / "store"
    result = project.gpulock("sync", "--models-only", "--store", str(store))
    assert result.code == 0, result.err
    view = store / "v1" / "files" / "m" / "scene"
    assert (view / "scene" / "images" / "0.txt").read_bytes() == b"zero"
    assert (view / "scene" / "calib.txt").read_bytes() == b"K"


def test_an_archive_escaping_its_tree_is_refused(make_index, project):
    import io
    import zipfile

    index = make_index()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../evil.txt", b"x")
    (index.folder / "evil.zip").write_bytes(buffer.getvalue())
    url = index.url.replace("/simple", "/files/evil.zip")
    write(project, index, f'[models.evil]\nsource = "{url}"\nextract = true\n')
    result = project.gpulock("sync", "--models-only", "--store", str(project.root / "store"))
    assert result.code == 1 and "outside its own tree" in result.err
    assert "nothing was extracted" in result.err
    assert not (project.root / "store" / "v1" / "files" / "m" / "evil").exists()


def _seven_zip(folder: Path, files: dict[str, bytes]) -> None:
    import py7zr

    source = folder / "tree"
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    with py7zr.SevenZipFile(folder / "data.7z", "w") as archive:
        archive.writeall(source, "eth3d")


def test_seed_004_weights_over_https_and_a_7z_dataset_are_read_from_files(make_index, project,
                                                                         tmp_path: Path):
    index = make_index()
    weights = os.urandom(50_000)
    (index.folder / "model.pt").write_bytes(weights)
    _seven_zip(tmp_path, {"courtyard/images/dslr_images/0.JPG": b"jpeg",
                          "courtyard/dslr_calibration_undistorted/cameras.txt": b"K 1 2"})
    (index.folder / "multi_view.7z").write_bytes((tmp_path / "data.7z").read_bytes())
    files = index.url.replace("/simple", "/files")
    write(project, index, f'[models.vggt]\nsource = "{files}/model.pt"\n'
                          f'[models.eth3d]\nsource = "{files}/multi_view.7z"\nextract = true\n')
    store = project.root / "store"
    result = project.gpulock("sync", "--models-only", "--store", str(store))
    assert result.code == 0, result.err
    views = store / "v1" / "files" / "m"
    assert (views / "vggt" / "model.pt").read_bytes() == weights
    scene = views / "eth3d" / "eth3d" / "courtyard"
    assert (scene / "images" / "dslr_images" / "0.JPG").read_bytes() == b"jpeg"
    assert (scene / "dslr_calibration_undistorted" / "cameras.txt").read_bytes() == b"K 1 2"


@pytest.mark.parametrize("kind", ["escaping", "link"])
def test_a_7z_archive_that_would_leave_its_tree_is_refused(make_index, project, tmp_path: Path,
                                                           kind):
    import py7zr

    index = make_index()
    with py7zr.SevenZipFile(index.folder / "evil.7z", "w") as archive:
        if kind == "escaping":  # py7zr's public writer refuses such a name: a hostile one
            archive._writestr(b"x", "../evil.txt")
        else:
            (tmp_path / "target").write_text("x")
            (tmp_path / "link").symlink_to("/etc/passwd")
            archive.write(tmp_path / "link", "data/link")
    url = index.url.replace("/simple", "/files/evil.7z")
    write(project, index, f'[models.evil]\nsource = "{url}"\nextract = true\n')
    result = project.gpulock("sync", "--models-only", "--store", str(project.root / "store"))
    assert result.code == 1 and "nothing was extracted" in result.err, result.err
    assert "Traceback" not in result.err
    assert not any((project.root / "store" / "v1" / "trees").iterdir())


def test_a_hub_that_cannot_be_reached_is_one_sentence(make_index, project, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    write(project, make_index(), '[models.tiny]\nsource = "hf://org/tiny"\n')
    result = project.gpulock("lock")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert result.err.startswith("error: model 'tiny' (hf://org/tiny@main): "), result.err
    assert "127.0.0.1:9" in result.err
