"""Models on the volume: the lock's files in the store, seen through the Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Project, dead_writers_part
from tests.support.dists import make_wheel
from tests.support.hf_hub import FakeHub

WEIGHTS = os.urandom(300_000)
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
FILES = {"config.json": b'{"hidden": 8}', "model.safetensors": WEIGHTS,
         "tokenizer/vocab.json": b'{"a": 0}', "README.md": b"# hi"}


def setup(project: Project, index_url: str, models: str) -> None:
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\nindex = "{index_url}"\n'
                  f'[groups.main]\npackages = []\n{models}')


def sync(project: Project, *args: str) -> tuple[int, str]:
    result = project.gpulock("sync", "--store", str(project.root / "store"), *args)
    return result.code, result.err


def exports(project: Project) -> dict[str, str]:
    result = project.gpulock("env", "--store", str(project.root / "store"), "--format", "json")
    return json.loads(result.out)


def test_synced_models_load_offline_through_the_real_client(hub, make_index, project):
    commit = hub.repo("org/tiny").commit(FILES)
    setup(project, make_index().url, '[models.tiny]\nsource = "hf://org/tiny"\n'
                                     'exclude = ["*.md"]\n')
    code, err = sync(project)
    assert code == 0, err
    values = exports(project)
    assert values["HF_HUB_OFFLINE"] == "1"
    hub.close()  # from here on the network is gone
    probe = ("import json, os, sys; from huggingface_hub import snapshot_download, "
             "hf_hub_download\n"
             "folder = snapshot_download('org/tiny')\n"
             "files = {}\n"
             "for root, _, names in os.walk(folder):\n"
             "    for n in names:\n"
             "        p = os.path.join(root, n)\n"
             "        files[os.path.relpath(p, folder)] = open(p, 'rb').read().hex()\n"
             "config = hf_hub_download('org/tiny', 'config.json')\n"
             "print(json.dumps({'folder': folder, 'files': files, 'config': config}))\n")
    env = {**os.environ, **{k: v for k, v in values.items() if k.startswith("HF_")}}
    env.pop("HF_ENDPOINT")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["folder"].endswith(f"models--org--tiny/snapshots/{commit}")
    assert seen["files"] == {p: d.hex() for p, d in FILES.items() if p != "README.md"}
    assert Path(seen["config"]).read_bytes() == FILES["config.json"]


def test_a_file_shared_by_two_repos_is_stored_once_and_a_rerun_fetches_nothing(hub,
                                                                             make_index,
                                                                             project):
    hub.repo("org/a").commit({"model.safetensors": WEIGHTS, "config.json": b"a"})
    hub.repo("org/b").commit({"model.safetensors": WEIGHTS, "config.json": b"b"})
    setup(project, make_index().url, '[models.a]\nsource = "hf://org/a"\n'
                                     '[models.b]\nsource = "hf://org/b"\n')
    assert sync(project)[0] == 0
    blobs = [p for p in (project.root / "store" / "v1" / "blobs" / "sha256").rglob("*")
             if p.is_file()]
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    assert sum(1 for p in blobs if p.parent.name + p.name == digest) == 1
    assert len(blobs) == 3
    hub.resolved.clear()
    code, err = sync(project)
    assert code == 0 and "is up to date" in err
    assert hub.resolved == []


def test_a_file_changed_upstream_is_an_error_and_no_snapshot_appears(hub, make_index, project):
    repo = hub.repo("org/moving")
    commit = repo.commit({"model.safetensors": WEIGHTS, "config.json": b"{}"})
    setup(project, make_index().url, '[models.m]\nsource = "hf://org/moving"\n')
    project.lock()
    repo.commits[commit]["model.safetensors"] = b"tampered" + WEIGHTS[8:]
    code, err = sync(project, "--frozen")
    assert code == 1
    assert "model 'm': model.safetensors from" in err and "changed upstream" in err
    hf = project.root / "store" / "v1" / "hf" / "models--org--moving"
    assert not (hf / "snapshots" / commit).exists()


def test_a_sync_that_fails_on_a_model_leaves_the_current_environment(hub, make_index,
                                                                      project):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    hub.repo("org/kept").commit({"config.json": b"{}"})
    setup(project, index.url, '[models.kept]\nsource = "hf://org/kept"\n')
    assert sync(project)[0] == 0
    env = project.root / "store" / "v1" / "envs" / "m"
    before = os.readlink(env / "current")
    repo = hub.repo("org/moving")
    commit = repo.commit({"model.safetensors": WEIGHTS})
    project.write(project.manifest.read_text().replace("packages = []", 'packages = ["app"]')
                  + '[models.m]\nsource = "hf://org/moving"\n')
    project.lock()
    repo.commits[commit]["model.safetensors"] = b"tampered" + WEIGHTS[8:]
    code, err = sync(project, "--frozen")
    assert code == 1 and "changed upstream" in err
    assert os.readlink(env / "current") == before  # the new packages wait for their models


def test_models_only_and_no_models(hub, make_index, project):
    hub.repo("org/tiny").commit({"config.json": b"{}"})
    setup(project, make_index().url, '[models.tiny]\nsource = "hf://org/tiny"\n')
    code, err = sync(project, "--no-models")
    assert code == 0, err
    assert hub.resolved == []
    status = project.gpulock("status", "--store", str(project.root / "store"))
    assert "model tiny: hf://org/tiny@" in status.out and "0/1 files" in status.out
    code, err = sync(project, "--models-only")
    assert code == 0, err
    assert hub.resolved == ["config.json"]
    status = project.gpulock("status", "--store", str(project.root / "store"))
    commit = hub.repo("org/tiny").branches["main"]
    snapshot = project.root / "store" / "v1" / "hf" / "models--org--tiny" / "snapshots" / commit
    assert status.out.rstrip().endswith(f"complete  {snapshot}")  # where the model is


def test_a_killed_sync_resumes_the_large_file_it_was_fetching(hub, make_index, project):
    import signal
    import time

    big = os.urandom(30 * 2**20)
    hub.repo("org/big").commit({"model.safetensors": big})
    setup(project, make_index().url, '[models.big]\nsource = "hf://org/big"\n')
    project.lock()
    hub.slow = 0.05  # 30 MiB at ~5 MiB/s: about six seconds
    parts = project.root / "store" / "v1" / "tmp" / "models"
    child = subprocess.Popen([sys.executable, "-m", "gpulock", "sync", "--models-only",
                              "--frozen", "--manifest", str(project.manifest), "--store",
                              str(project.root / "store")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list(parts.glob(f"{hashlib.sha256(big).hexdigest()}.part.*"))
        if found and found[0].stat().st_size > 4 * 2**20:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    have = found[0].stat().st_size
    assert 0 < have < len(big)
    hf = project.root / "store" / "v1" / "hf" / "models--org--big"
    assert not (hf / "snapshots").exists()  # nothing partial is visible in the cache

    hub.slow = 0.0
    code, err = sync(project, "--models-only", "--frozen")
    assert code == 0, err
    resumed = [r for f, r in hub.ranges if f == "model.safetensors"][-1]
    assert resumed.startswith("bytes=") and int(resumed[6:].rstrip("-")) >= have
    (link,) = (hf / "snapshots").glob("*/model.safetensors")
    assert hashlib.sha256(link.read_bytes()).hexdigest() == hashlib.sha256(big).hexdigest()


def test_modelscope_models_are_pinned_by_file_hashes_and_load_offline(modelscope, make_index,
                                                                      project):
    files = {"configuration.json": b'{"task": "asr"}', "model.pt": WEIGHTS,
             "sub/am.mvn": b"mvn"}
    modelscope.repos["iic/tiny-asr"] = {"master": dict(files)}
    setup(project, make_index().url, '[models.asr]\nsource = "ms://iic/tiny-asr"\n')
    lock = project.lock()
    (pinned,) = lock.models
    entry = pinned.as_dict()
    assert entry["revision"] == "master" and "commit" not in entry
    assert {f["path"]: f["sha256"] for f in entry["files"]} == {
        p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    code, err = sync(project, "--frozen")
    assert code == 0, err
    values = exports(project)
    modelscope.close()
    probe = ("import json, os; from modelscope import snapshot_download\n"
             "folder = snapshot_download('iic/tiny-asr', local_files_only=True)\n"
             "found = {}\n"
             "for root, _, names in os.walk(folder):\n"
             "    for n in names:\n"
             "        p = os.path.join(root, n)\n"
             "        found[os.path.relpath(p, folder)] = open(p, 'rb').read().hex()\n"
             "print(json.dumps(found))\n")
    env = {**os.environ, "MODELSCOPE_CACHE": values["MODELSCOPE_CACHE"]}
    env.pop("MODELSCOPE_ENDPOINT", None)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        p: d.hex() for p, d in files.items()}


def test_a_modelscope_file_changed_upstream_fails_the_sync(modelscope, make_index, project):
    modelscope.repos["iic/moving"] = {"master": {"model.pt": WEIGHTS}}
    setup(project, make_index().url, '[models.m]\nsource = "ms://iic/moving"\n')
    project.lock()
    modelscope.repos["iic/moving"]["master"]["model.pt"] = b"new" + WEIGHTS[3:]
    code, err = sync(project, "--frozen")
    assert code == 1 and "model 'm': model.pt from" in err and "changed upstream" in err


def killed_in_ranges(hub: FakeHub, index_url: str, project: Project,
                     monkeypatch: pytest.MonkeyPatch, big: bytes, first: bytes) -> Path:
    """A locked model whose 1 MiB range 0 a killed sync wrote (as `first`) and recorded."""
    from gpulock.models import ranges

    monkeypatch.setattr(ranges, "PARALLEL_FROM", 2**20)
    monkeypatch.setattr(ranges, "RANGE_MIN", 2**20)
    hub.repo("org/big").commit({"model.safetensors": big})
    setup(project, index_url, '[models.big]\nsource = "hf://org/big"\n')
    project.lock()
    part = dead_writers_part(project.root / "store" / "v1" / "tmp" / "models",
                             hashlib.sha256(big).hexdigest())
    part.write_bytes(first + bytes(len(big) - len(first)))
    Path(f"{part}.ranges").write_text(json.dumps({"step": 2**20, "size": len(big),
                                                  "done": [0]}))
    hub.ranges.clear()  # the lock read the safetensors header with a range of its own
    return part


def test_a_large_file_arrives_as_parallel_ranges_and_resumes_only_the_missing_ones(
        hub, make_index, project, monkeypatch):
    big = os.urandom(4 * 2**20)
    killed_in_ranges(hub, make_index().url, project, monkeypatch, big, big[: 2**20])
    code, err = sync(project, "--models-only", "--frozen")
    assert code == 0, err
    asked = sorted(r for f, r in hub.ranges if f == "model.safetensors")
    assert asked == [f"bytes={i * 2**20}-{(i + 1) * 2**20 - 1}" for i in (1, 2, 3)]
    (link,) = (project.root / "store" / "v1" / "hf" / "models--org--big" / "snapshots"
               ).glob("*/model.safetensors")
    assert link.read_bytes() == big


def test_a_corrupt_kept_range_is_caught_by_the_hash_and_the_file_fetched_again(
        hub, make_index, project, monkeypatch):
    big = os.urandom(3 * 2**20)
    # Range 0 recorded as done, but with the wrong bytes.
    part = killed_in_ranges(hub, make_index().url, project, monkeypatch, big, b"x" * 2**20)
    code, err = sync(project, "--models-only", "--frozen")
    assert code == 0, err
    assert not part.exists()
    # Ranges 1 and 2 first; the whole file fails its hash, and is fetched again from byte 0:
    # range 0, then the rest as one stream or as pieces (as fast as range 0 came).
    asked = [r for f, r in hub.ranges if f == "model.safetensors"]
    piece = [f"bytes={i * 2**20}-{(i + 1) * 2**20 - 1}" for i in range(3)]
    assert sorted(asked[:2]) == piece[1:] and asked[2] == piece[0]
    assert sorted(asked[3:]) in ([f"bytes={2**20}-{3 * 2**20 - 1}"], piece[1:])
    (link,) = (project.root / "store" / "v1" / "hf" / "models--org--big" / "snapshots"
               ).glob("*/model.safetensors")
    assert link.read_bytes() == big


@pytest.mark.parametrize("one_stream_for", [0.0, 1e9])
def test_a_fresh_large_file_goes_as_one_stream_or_as_pieces_as_its_first_piece_came(
        hub, make_index, project, monkeypatch, one_stream_for):
    from gpulock.models import ranges

    monkeypatch.setattr(ranges, "PARALLEL_FROM", 2**20)
    monkeypatch.setattr(ranges, "RANGE_MIN", 2**20)
    monkeypatch.setattr(ranges, "ONE_STREAM_FOR", one_stream_for)
    big = os.urandom(4 * 2**20)
    hub.repo("org/big").commit({"model.safetensors": big})
    setup(project, make_index().url, '[models.big]\nsource = "hf://org/big"\n')
    project.lock()
    hub.ranges.clear()
    code, err = sync(project, "--models-only", "--frozen")
    assert code == 0, err
    asked = [r for f, r in hub.ranges if f == "model.safetensors"]
    piece = [f"bytes={i * 2**20}-{(i + 1) * 2**20 - 1}" for i in range(4)]
    assert asked[0] == piece[0]
    # A first piece that would bring the rest within ONE_STREAM_FOR: the rest in one range.
    assert sorted(asked[1:]) == (piece[1:] if one_stream_for == 0 else
                                 [f"bytes={2**20}-{4 * 2**20 - 1}"])
    (link,) = (project.root / "store" / "v1" / "hf" / "models--org--big" / "snapshots"
               ).glob("*/model.safetensors")
    assert link.read_bytes() == big


def store_blob(project: Project, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return project.root / "store" / "v1" / "blobs" / "sha256" / digest[:2] / digest[2:]


def cli(project: Project, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpulock", *args, "--manifest",
                           str(project.manifest), "--store", str(project.root / "store")],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def test_a_full_disk_during_a_model_download_names_the_model_and_file(hub, make_index, project,
                                                                     monkeypatch):
    hub.repo("org/tiny").commit(FILES)
    setup(project, make_index().url, '[models.tiny]\nsource = "hf://org/tiny"\n')
    project.lock()
    monkeypatch.setenv("GPULOCK_FAULT", "enospc:model")
    code, err = sync(project, "--frozen")
    assert code == 1 and "error: model 'tiny': " in err and "No space left on device" in err
    assert "Traceback" not in err
    assert not (project.root / "store" / "v1" / "hf" / "models--org--tiny" / "snapshots"
                ).exists()
    monkeypatch.delenv("GPULOCK_FAULT")
    assert sync(project, "--frozen")[0] == 0


@pytest.mark.parametrize("fast", [False, True], ids=["sha256", "xxh3"])
def test_a_bit_flip_in_a_model_file_is_found_by_verify_and_fetched_again(hub, make_index,
                                                                        project, fast):
    hub.repo("org/tiny").commit(FILES)
    setup(project, make_index().url, '[models.tiny]\nsource = "hf://org/tiny"\n')
    assert sync(project)[0] == 0
    blob = store_blob(project, WEIGHTS)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0x40
    blob.write_bytes(bytes(data))
    mode = ["--fast"] if fast else []
    found = cli(project, "verify", *mode)
    assert found.returncode == 1
    assert f"damaged blob {hashlib.sha256(WEIGHTS).hexdigest()}: has " in found.stderr
    repaired = cli(project, "verify", "--repair", *mode)
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired model 'tiny' file model.safetensors" in repaired.stderr
    (link,) = (project.root / "store" / "v1" / "hf" / "models--org--tiny" / "snapshots"
               ).glob("*/model.safetensors")
    assert link.read_bytes() == WEIGHTS


def test_two_model_syncs_at_once_without_flock_store_each_file_once(hub, make_index, project):
    big = os.urandom(8 * 2**20)
    hub.repo("org/big").commit({"model.safetensors": big, "config.json": b"{}"})
    setup(project, make_index().url, '[models.big]\nsource = "hf://org/big"\n')
    project.lock()
    hub.slow = 0.03  # about a second each: the two downloads overlap
    children = [subprocess.Popen(
        [sys.executable, "-m", "gpulock", "sync", "--frozen", "--models-only", "--manifest",
         str(project.manifest), "--store", str(project.root / "store")],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "GPULOCK_NO_FLOCK": "1"})
        for _ in range(2)]
    for child in children:
        assert child.wait(timeout=300) == 0, child.stderr.read()
    assert store_blob(project, big).read_bytes() == big
    blobs = [p for p in (project.root / "store" / "v1" / "blobs" / "sha256").rglob("*")
             if p.is_file()]
    assert len(blobs) == 2
    assert cli(project, "verify").returncode == 0


def test_gc_drops_a_superseded_commit_and_keeps_what_the_new_one_shares(hub, make_index,
                                                                       project):
    repo = hub.repo("org/moving")
    first = repo.commit({"model.safetensors": WEIGHTS, "config.json": b'{"v": 1}'})
    setup(project, make_index().url, '[models.m]\nsource = "hf://org/moving"\n')
    assert sync(project)[0] == 0
    second = repo.commit({"model.safetensors": WEIGHTS, "config.json": b'{"v": 2}'})
    project.lock("--upgrade-package", "m")
    assert sync(project, "--frozen")[0] == 0
    snapshots = project.root / "store" / "v1" / "hf" / "models--org--moving" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == sorted([first, second])
    collected = cli(project, "gc")
    assert collected.returncode == 0 and "1 model file(s)" in collected.stderr
    assert [p.name for p in snapshots.iterdir()] == [second]
    assert store_blob(project, WEIGHTS).is_file()
    assert not store_blob(project, b'{"v": 1}').exists()
    assert (snapshots / second / "config.json").read_bytes() == b'{"v": 2}'
    assert cli(project, "verify").returncode == 0


def test_a_model_dropped_from_the_manifest_is_left_to_gc(hub, make_index, project):
    hub.repo("org/tiny").commit(FILES)
    index = make_index()
    setup(project, index.url, '[models.tiny]\nsource = "hf://org/tiny"\n')
    assert sync(project)[0] == 0
    setup(project, index.url, "")
    assert sync(project)[0] == 0
    collected = cli(project, "gc")
    assert collected.returncode == 0 and f"{len(FILES)} model file(s)" in collected.stderr
    assert not (project.root / "store" / "v1" / "hf" / "models--org--tiny").exists()
    assert not store_blob(project, WEIGHTS).exists()


def test_gc_keeps_the_modelscope_1_x_folders_of_pinned_models_and_drops_the_rest(
        modelscope, make_index, project):
    modelscope.repos["Qwen/Qwen2.5-0.5B"] = {"master": {"config.json": b'{"q": 1}'}}
    modelscope.repos["iic/gone"] = {"master": {"model.pt": WEIGHTS}}
    index = make_index()
    both = ('[models.qwen]\nsource = "ms://Qwen/Qwen2.5-0.5B"\n'
            '[models.gone]\nsource = "ms://iic/gone"\n')
    setup(project, index.url, both)
    assert sync(project)[0] == 0
    cache = project.root / "store" / "v1" / "modelscope" / "m"
    qwen = [("Qwen", "Qwen2.5-0.5B"), ("Qwen", "Qwen2___5-0___5B"),
            ("hub", "Qwen", "Qwen2___5-0___5B")]
    for parts in [*qwen, ("iic", "gone"), ("hub", "iic", "gone")]:
        assert (cache.joinpath(*parts) / ".msc").is_file(), parts
    setup(project, index.url, both.split("[models.gone]")[0])
    assert sync(project)[0] == 0
    assert cli(project, "gc").returncode == 0
    for parts in qwen:
        assert (cache.joinpath(*parts) / "config.json").read_bytes() == b'{"q": 1}', parts
    assert not (cache / "iic").exists() and not (cache / "hub" / "iic").exists()
    assert cli(project, "verify").returncode == 0


def test_a_ranges_record_for_other_pieces_is_not_trusted(tmp_path: Path):
    from gpulock.models.ranges import done_pieces

    state = tmp_path / "blob.part.ranges"
    state.write_text(json.dumps({"step": 16, "size": 64, "done": [0, 2, 9, "x"]}))
    assert done_pieces(state, 16, 64, 4) == {0, 2}  # out of range and non-ints dropped
    assert done_pieces(state, 32, 64, 2) == set()   # cut in other pieces: start over
    assert done_pieces(state, 16, 80, 5) == set()   # another file size
    state.write_text("[0, 1]")                        # an older gpulock's list
    assert done_pieces(state, 16, 64, 4) == set()
    state.unlink()
    assert done_pieces(state, 16, 64, 4) == set()
