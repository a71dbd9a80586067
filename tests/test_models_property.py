"""Random repositories → lock → sync: the views hold exactly the files, blobs are shared."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulock.cli import main
from tests.support.hf_hub import FakeHub

names = st.sampled_from(["config.json", "model.safetensors", "a.bin", "vocab.txt"])
folders = st.lists(st.sampled_from(["sub", "deep", "x"]), max_size=2)
paths = st.builds(lambda d, n: "/".join([*d, n]), folders, names)
contents = st.sampled_from([b"", b"{}", b"shared" * 300, os.urandom(2000), b"tiny"])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.dictionaries(paths, contents, min_size=1, max_size=5), min_size=1,
                max_size=3))
def test_views_hold_exactly_the_locked_files_and_shared_blobs_exist_once(
        tmp_path_factory, monkeypatch, capsys, repos):
    root = tmp_path_factory.mktemp("models")
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("GPULOCK_CACHE", str(root / "cache"))
    try:
        models = ""
        for i, files in enumerate(repos):
            # A file must not also be a folder of the same repository.
            files = {p: d for p, d in files.items()
                     if not any(q.startswith(p + "/") for q in files)}
            repos[i] = files
            hub.repo(f"org/r{i}").commit(files)
            models += f'[models.r{i}]\nsource = "hf://org/r{i}"\n'
        manifest = root / "gpu.toml"
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        manifest.write_text(f'[project]\nname = "p"\npython = "{python}"\n'
                            f'[groups.main]\npackages = []\n{models}')
        store = root / "store"
        assert main(["sync", "--models-only", "--manifest", str(manifest), "--store",
                     str(store)]) == 0, capsys.readouterr().err
    finally:
        hub.close()
    for i, files in enumerate(repos):
        (snapshot,) = (store / "v1" / "hf" / f"models--org--r{i}" / "snapshots").iterdir()
        seen = {}
        for folder, _dirs, found in os.walk(snapshot):
            for name in found:
                path = os.path.join(folder, name)
                seen[os.path.relpath(path, snapshot)] = Path(path).read_bytes()
        assert seen == files
    blobs = [p for p in (store / "v1" / "blobs" / "sha256").rglob("*") if p.is_file()]
    distinct = {hashlib.sha256(d).hexdigest() for files in repos for d in files.values()}
    assert sorted(p.parent.name + p.name for p in blobs) == sorted(distinct)


segments = st.sampled_from(["a", "b.txt", "..", ".", "", "\x00", "x\\y", "é", "x y", "-v",
                            ".hidden", "a\nb", "~", "CON"])
hostile_paths = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "/"]),
                          st.lists(segments, min_size=1, max_size=4))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.dictionaries(hostile_paths, contents, min_size=1, max_size=4))
def test_any_hub_listing_is_refused_at_lock_or_laid_out_strictly_inside_its_snapshot(
        tmp_path_factory, monkeypatch, capsys, files):
    from tests.support.canary import plant, state

    root = tmp_path_factory.mktemp("hostile")
    canary = plant(root / "canary")
    before = state(canary)
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("GPULOCK_CACHE", str(root / "cache"))
    try:
        hub.repo("org/r").commit(files)
        manifest = root / "gpu.toml"
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        manifest.write_text(f'[project]\nname = "p"\npython = "{python}"\n'
                            '[groups.main]\npackages = []\n[models.r]\nsource = "hf://org/r"\n')
        store = root / "store"
        capsys.readouterr()
        code = main(["sync", "--models-only", "--manifest", str(manifest), "--store",
                     str(store)])
        err = capsys.readouterr().err
    finally:
        hub.close()
    assert state(canary) == before
    assert {p.name for p in root.iterdir()} <= {"cache", "canary", "gpu.toml",
                                                 "pylock.gpu.toml", "store"}
    if code != 0:
        assert "Traceback" not in err and err.startswith("error: model 'r'"), err
        return
    (snapshot,) = (store / "v1" / "hf" / "models--org--r" / "snapshots").iterdir()
    inside = os.path.realpath(store / "v1")
    for folder, dirs, names in os.walk(snapshot):
        for name in [*dirs, *names]:
            path = os.path.join(folder, name)
            assert os.path.realpath(path).startswith(inside + os.sep)
    seen = {os.path.relpath(os.path.join(f, n), snapshot) for f, _d, ns in os.walk(snapshot)
            for n in ns}
    assert seen == set(files)
