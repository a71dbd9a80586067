"""A binary cache shared by stores in two regions: a real S3 server (SeaweedFS), signed
records, and everything a hostile cache could hand a pod refused before it is stored."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gpulock import signing
from tests.conftest import Project
from tests.support.dists import make_sdist, make_wheel
from tests.support.s3 import SeaweedFS

pytestmark = pytest.mark.usefixtures("s3_credentials")


def _keys(folder: Path, name: str) -> tuple[Path, str]:
    secret, public = signing.keygen(name, folder)
    return secret, public.read_text().strip()


def _project(project: Project, index_url: str, cache: str, trusted: str, log: Path) -> None:
    project.write(f'[project]\nname = "regions"\npython = "{sys.version_info[0]}.'
                  f'{sys.version_info[1]}"\nindex = "{index_url}"\n'
                  '[groups.app]\npackages = ["dep"]\n'
                  f'[groups.src]\npackages = ["srcpkg"]\nenv = {{ GPULOCK_TEST_BUILD_LOG = '
                  f'"{log}" }}\n'
                  f'[cache]\nsubstituters = ["{cache}"]\ntrusted-keys = ["{trusted}"]\n')


def _index(make_index):  # type: ignore[no-untyped-def]
    index = make_index()
    make_wheel(index.folder, "dep", "1.0")
    make_sdist(index.folder, "srcpkg", "1.0", requires=["dep"])
    return index


def _built(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _entries(store: Path) -> list[str]:
    pkgs = store / "v1" / "pkgs"
    return sorted(p.name for p in pkgs.iterdir()) if pkgs.is_dir() else []


def test_keygen_writes_a_private_secret_and_a_one_line_public_key_and_never_overwrites(
        tmp_path: Path):
    secret, public = signing.keygen("team-1", tmp_path)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    key = signing.parse_secret(secret.read_text(), str(secret))
    assert public.read_text() == f"{key.public}\n" and public.read_text().startswith("team-1:")
    assert key.text().split(":")[1] not in repr(key)  # the secret never shows in a log
    with pytest.raises(signing.GpulockError, match="never overwrites"):
        signing.keygen("team-1", tmp_path)


def test_a_second_region_syncs_from_the_cache_alone_without_its_index_or_a_rebuild(
        make_index, project: Project, seaweedfs: SeaweedFS, tmp_path: Path):
    index = _index(make_index)
    cache = seaweedfs.bucket("regions")
    secret, public = _keys(tmp_path / "keys", "team-1")
    log = tmp_path / "builds.log"
    _project(project, index.url, cache, public, log)
    region_a, region_b = tmp_path / "region-a", tmp_path / "region-b"

    first = project.gpulock("sync", "--store", str(region_a))
    assert first.code == 0, first.err
    assert _built(log) == 1
    pushed = project.gpulock("push", "--store", str(region_a), "--key", str(secret))
    assert pushed.code == 0, pushed.err
    assert "Pushed 2 entries" in pushed.err
    again = project.gpulock("push", "--store", str(region_a), "--key", str(secret))
    assert "Pushed 0 entries" in again.err and "2 were there already" in again.err

    index.close()  # region B cannot reach the index, and must not build
    synced = project.gpulock("sync", "--store", str(region_b), "--frozen")
    assert synced.code == 0, synced.err
    assert _built(log) == 1  # the built entry came from the cache, not a second build
    assert _entries(region_b) == _entries(region_a)
    assert project.gpulock("verify", "--store", str(region_b)).code == 0
    run = subprocess.run([str(Path(sys.executable).parent / "gpulock"), "run", "--manifest",
                          str(project.manifest), "--store", str(region_b), "--", "python", "-c",
                          "import srcpkg, dep; print(srcpkg.BUILT, dep.VERSION)"],
                         capture_output=True, text=True, env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "1.0"]


def _objects(seaweedfs: SeaweedFS, prefix: str) -> list[str]:
    listed = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.BUCKET, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def _tamper_record(seaweedfs: SeaweedFS, cache: str, name: str, field: str) -> None:
    client, bucket = seaweedfs.client(), seaweedfs.BUCKET
    key = next(k for k in _objects(seaweedfs, f"{cache}/cache/entries/") if f"-{name}-" in k)
    record = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    if field == "version":
        record["version"] = "6.6.6"
    else:
        record["wheel"]["size"] += 1
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())


def _tamper_wheel(seaweedfs: SeaweedFS, cache: str, name: str) -> None:
    client, bucket = seaweedfs.client(), seaweedfs.BUCKET
    key = next(k for k in _objects(seaweedfs, f"{cache}/cache/wheels/") if f"/{name}-" in k)
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


@pytest.mark.parametrize("attack", ["wheel", "record-size", "record-version", "untrusted"])
def test_a_tampered_or_untrusted_cache_entry_is_refused_by_name_and_never_stored(
        attack: str, make_index, project: Project, seaweedfs: SeaweedFS, tmp_path: Path):
    index = _index(make_index)
    bucket = f"attack-{attack}"
    cache = seaweedfs.bucket(bucket)
    secret, public = _keys(tmp_path / "keys", "team-1")
    rogue, _ = _keys(tmp_path / "rogue", "rogue")
    log = tmp_path / "builds.log"
    _project(project, index.url, cache, public, log)
    assert project.gpulock("sync", "--store", str(tmp_path / "a")).code == 0
    signer = rogue if attack == "untrusted" else secret
    assert project.gpulock("push", "--store", str(tmp_path / "a"), "--key",
                           str(signer)).code == 0
    if attack == "wheel":
        _tamper_wheel(seaweedfs, bucket, "srcpkg")
    elif attack.startswith("record"):
        _tamper_record(seaweedfs, bucket, "srcpkg", attack.removeprefix("record-"))

    index.close()
    store = tmp_path / "b"
    result = project.gpulock("sync", "--store", str(store), "--frozen")
    assert result.code == 1  # nothing else could provide srcpkg: sync stops
    expected = {"wheel": "its wheel has sha256", "record-size": "does not verify",
                "record-version": "the record is for srcpkg 6.6.6",
                "untrusted": "signed by 'rogue', not by a trusted key"}[attack]
    refused = [line for line in result.err.splitlines() if "refused srcpkg 1.0" in line]
    assert refused and expected in refused[0], result.err
    assert not [e for e in _entries(store) if "-srcpkg-" in e]
    assert "Traceback" not in result.err
    leftovers = list((store / "v1" / "tmp").glob("substitute-*")) if store.exists() else []
    assert leftovers == []


def test_a_trusted_key_that_is_not_a_key_is_a_manifest_error_with_its_line(
        project: Project, tmp_path: Path):
    project.write('[project]\nname = "x"\npython = "3.11"\n[cache]\n'
                  'substituters = ["s3://bucket/cache"]\ntrusted-keys = ["team-1:bm90IGEga2V5"]\n')
    result = project.gpulock("lock")
    assert result.code == 1
    assert "gpu.toml:6:" in result.err and "32 bytes" in result.err


@pytest.mark.parametrize("tampered", [False, True])
def test_model_files_come_from_the_cache_by_their_locked_sha256(
        tampered: bool, make_index, project: Project, seaweedfs: SeaweedFS, tmp_path: Path):
    index = _index(make_index)
    weights = os.urandom(300_000)
    (index.folder / "model.pt").write_bytes(weights)
    prefix = f"models-{tampered}"
    cache = seaweedfs.bucket(prefix)
    secret, public = _keys(tmp_path / "keys", "team-1")
    _project(project, index.url, cache, public, tmp_path / "builds.log")
    files = index.url.replace("/simple", "/files")
    with project.manifest.open("a") as manifest:
        manifest.write(f'[models.vggt]\nsource = "{files}/model.pt"\n')
    assert project.gpulock("sync", "--store", str(tmp_path / "a")).code == 0
    pushed = project.gpulock("push", "--store", str(tmp_path / "a"), "--key", str(secret))
    assert "Pushed 1 model files" in pushed.err, pushed.err
    if tampered:
        client = seaweedfs.client()
        key = _objects(seaweedfs, f"{prefix}/cache/blobs/")[0]
        client.put_object(Bucket=seaweedfs.BUCKET, Key=key, Body=os.urandom(300_000))

    index.close()
    store = tmp_path / "b"
    result = project.gpulock("sync", "--store", str(store), "--frozen")
    view = store / "v1" / "files" / "regions" / "vggt" / "model.pt"
    if not tampered:
        assert result.code == 0, result.err
        assert view.read_bytes() == weights
        return
    assert result.code == 1
    assert "refused model 'vggt': model.pt from s3://" in result.err
    assert not view.exists()
    assert not list((store / "v1" / "blobs" / "sha256").rglob("*"))  # nothing stored


def _folder_cache(make_index, project: Project, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A project synced into store a and pushed to a folder cache: (cache, secret, log)."""
    index = _index(make_index)
    cache = tmp_path / "cache"
    secret, public = _keys(tmp_path / "keys", "team-1")
    log = tmp_path / "builds.log"
    _project(project, index.url, cache.as_uri(), public, log)
    assert project.gpulock("sync", "--store", str(tmp_path / "a")).code == 0
    assert project.gpulock("push", "--store", str(tmp_path / "a"), "--key",
                           str(secret)).code == 0
    return cache, secret, log


@pytest.mark.parametrize("what", ["entries", "wheels"])
def test_a_fifo_planted_in_a_folder_cache_is_refused_never_waited_on(
        what: str, make_index, project: Project, tmp_path: Path):
    cache, _, log = _folder_cache(make_index, project, tmp_path)
    planted = next(p for p in (cache / what).rglob("*") if p.is_file() and "srcpkg" in p.name)
    planted.unlink()
    os.mkfifo(planted)
    run = subprocess.run([str(Path(sys.executable).parent / "gpulock"), "sync", "--manifest",
                          str(project.manifest), "--store", str(tmp_path / "b"), "--frozen"],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert run.returncode == 0, run.stderr  # refused, then built from the index instead
    assert "refused srcpkg 1.0" in run.stderr and "not a regular file" in run.stderr
    assert _built(log) == 2


def test_push_never_writes_through_a_link_planted_in_a_folder_cache(
        make_index, project: Project, tmp_path: Path):
    cache, secret, _ = _folder_cache(make_index, project, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(cache / "entries")
    (cache / "entries").symlink_to(elsewhere)
    result = project.gpulock("push", "--store", str(tmp_path / "a"), "--key", str(secret))
    assert result.code == 1 and "is a symbolic link" in result.err
    assert "push never writes through a link" in result.err
    assert list(elsewhere.iterdir()) == []


def test_a_signing_key_in_the_environment_is_never_echoed(
        make_index, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _folder_cache(make_index, project, tmp_path)
    bare = "U0VDUkVUU0VDUkVUU0VDUkVUU0VDUkVUU0VDUkVUU0VDUkVU"
    monkeypatch.setenv("GPULOCK_SIGNING_KEY", bare)  # a key without its NAME: prefix
    result = project.gpulock("push", "--store", str(tmp_path / "a"))
    assert result.code == 1 and bare not in result.err and "NAME:base64" in result.err
