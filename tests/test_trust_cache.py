"""Trust at the binary cache's edges (issue 18): push signs only what it re-verified, no
key error quotes a secret, no cache URL shows its password, and ref:// cycles are one
sentence that never makes gc lose a project's only copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulock import signing
from gpulock.errors import GpulockError
from tests.conftest import Project
from tests.support.dists import make_wheel
from tests.test_binary_cache import _index, _keys, _project
from tests.test_trust import refused


def _synced(make_index, project: Project, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A project (a wheel and a built sdist) synced into a store and its file:// cache,
    not yet pushed: (store, cache, secret key file)."""
    index = _index(make_index)
    cache, store = tmp_path / "cache", tmp_path / "store"
    secret, public = _keys(tmp_path / "keys", "team-1")
    _project(project, index.url, cache.as_uri(), public, tmp_path / "builds.log")
    synced = project.gpulock("sync", "--store", str(store))
    assert synced.code == 0, synced.err
    return store, cache, secret


def _entry(store: Path, name: str) -> Path:
    return next((store / "v1" / "pkgs").glob(f"*-{name}-*"))


def _signed(cache: Path) -> list[str]:
    """The entries a cache holds a signed record for."""
    entries = cache / "entries"
    return sorted(p.name for p in entries.iterdir()) if entries.is_dir() else []


def _swap_built_wheel(store: Path, tmp_path: Path) -> None:
    """Replace a built entry's kept wheel, and its hash in gpulock-entry.json to match: only
    the entry's file records still say what it was built as."""
    entry = _entry(store, "srcpkg")
    kept = next((entry / "built").iterdir())
    evil = make_wheel(tmp_path / "evil", "srcpkg", "1.0",
                      files={"srcpkg/__init__.py": b"import os; os.system('id')\n"})
    kept.chmod(0o644)
    kept.write_bytes(evil.read_bytes())
    manifest = entry / "gpulock-entry.json"
    data = json.loads(manifest.read_text())
    data["built"].update(sha256=hashlib.sha256(evil.read_bytes()).hexdigest(),
                         size=evil.stat().st_size)
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(data, sort_keys=True))


def _change_site_file(store: Path, _tmp_path: Path) -> None:
    """Change one unpacked file of an index wheel's entry."""
    module = next((_entry(store, "dep") / "site").rglob("*.py"))
    module.chmod(0o644)
    module.write_text("import os; os.system('id')\n")


DAMAGE = {"built wheel swapped": (_swap_built_wheel, "srcpkg 1.0"),
          "site file changed": (_change_site_file, "dep 1.0")}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("every", [False, True], ids=["project", "all"])
def test_push_refuses_an_entry_verify_flags_and_signs_nothing_for_it(
        damage: str, every: bool, make_index, project: Project, tmp_path: Path):
    store, cache, secret = _synced(make_index, project, tmp_path)
    tamper, label = DAMAGE[damage]
    tamper(store, tmp_path)
    assert project.gpulock("verify", "--store", str(store)).code != 0
    damaged = _entry(store, label.split()[0]).name
    result = project.gpulock("push", "--store", str(store), "--key", str(secret),
                             *(["--all"] if every else []))
    refused(result, label, damaged, "gpulock verify --repair")
    assert f"{damaged}.json" not in _signed(cache)
    assert not [p for p in (cache / "wheels").rglob("*") if label.split()[0] in p.name] \
        if (cache / "wheels").is_dir() else True


def test_push_signs_the_bytes_it_verified_even_when_the_wheel_is_swapped_just_after(
        make_index, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from gpulock.store.substituters import push

    store, cache, secret = _synced(make_index, project, tmp_path)
    checked = push.verified_records

    def then_swapped(opened, key):  # type: ignore[no-untyped-def]
        records = checked(opened, key)
        if "-srcpkg-" in key:  # the race: replaced right after verify passed it
            _swap_built_wheel(store, tmp_path)
        return records

    monkeypatch.setattr(push, "verified_records", then_swapped)
    result = project.gpulock("push", "--store", str(store), "--key", str(secret))
    damaged = _entry(store, "srcpkg").name
    refused(result, "srcpkg 1.0", damaged, "changed while it was pushed")
    assert f"{damaged}.json" not in _signed(cache)
    assert not list((cache / "wheels").rglob("srcpkg-*"))


def test_push_skips_a_model_file_whose_bytes_changed_in_the_store(project: Project,
                                                                  tmp_path: Path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "weights.bin").write_bytes(b"w" * 10_000)
    secret, public = _keys(tmp_path / "keys", "team-1")
    cache, store = tmp_path / "cache", tmp_path / "store"
    project.write(f'[project]\nname = "m"\npython = "3.11"\n[groups.main]\npackages = []\n'
                  f'[models.data]\nsource = "{share}"\n'
                  f'[cache]\nsubstituters = ["{cache.as_uri()}"]\ntrusted-keys = ["{public}"]\n')
    assert project.gpulock("sync", "--models-only", "--store", str(store)).code == 0
    blob = next(p for p in (store / "v1" / "blobs" / "sha256").rglob("*") if p.is_file())
    blob.chmod(0o644)
    blob.write_bytes(b"x" * 10_000)
    result = project.gpulock("push", "--all", "--store", str(store), "--key", str(secret))
    refused(result, f"the model file {blob.parent.name}{blob.name}", "gpulock verify --repair")
    assert not (cache / "blobs").exists() or not list((cache / "blobs").iterdir())


def _windows(secret: str, width: int = 8) -> set[str]:
    """Every `width`-character piece of `secret`: none may reach a message."""
    return {secret[i:i + width] for i in range(len(secret) - width + 1)}


@pytest.mark.parametrize("given_as", ["environment", "key file", "key argument"])
def test_a_signing_key_with_name_and_key_swapped_is_refused_without_quoting_it(
        given_as: str, make_index, project: Project, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    store, _, secret = _synced(make_index, project, tmp_path)
    name, encoded = secret.read_text().strip().split(":")
    swapped = f"{encoded}:{name}"
    key: list[str] = []
    if given_as == "environment":
        monkeypatch.setenv("GPULOCK_SIGNING_KEY", swapped)
    elif given_as == "key file":
        (tmp_path / "swapped.secret").write_text(swapped + "\n")
        key = ["--key", str(tmp_path / "swapped.secret")]
    else:  # the key itself where its file belongs
        key = ["--key", secret.read_text().strip()]
    result = project.gpulock("push", "--store", str(store), *key)
    refused(result)
    assert not [piece for piece in _windows(encoded) if piece in result.err + result.out]


def _key_texts() -> st.SearchStrategy[tuple[str, str]]:
    """(a key's text as someone might give it, the secret base64 it holds)."""
    names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
    # What a file and the environment can hold: no NUL, no lone surrogate.
    noise = st.text(alphabet=st.characters(blacklist_categories=["Cs"],
                                           blacklist_characters="\x00"), max_size=12)

    @st.composite
    def texts(draw: st.DrawFn) -> tuple[str, str]:
        seed = draw(st.binary(min_size=32, max_size=32))
        key = signing.SecretKey(draw(names), seed)
        encoded = key.text().partition(":")[2]
        cut = draw(st.integers(0, len(encoded)))
        junk = draw(noise)
        shape = draw(st.sampled_from([
            f"{encoded}:{key.name}", encoded, f"{junk}{encoded}", f"{encoded}{junk}",
            f"{key.name}:{encoded[:cut]}", f"{key.name}:{encoded[:cut]}{junk}{encoded[cut:]}",
            f"{encoded[:cut]}:{encoded[cut:]}", f"{key.name} {encoded}", f"{junk}:{encoded}",
            f"{key.name}:{encoded}:{junk}", f"{key.name}:{encoded[:44]}"]))
        return shape, encoded

    return texts()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(given_key=_key_texts())
def test_no_key_error_quotes_any_piece_of_the_secret(given_key: tuple[str, str],
                                                      tmp_path_factory: pytest.TempPathFactory):
    text, encoded = given_key
    key_file = tmp_path_factory.mktemp("key") / "given.secret"
    key_file.write_text(text)
    attempts = [lambda: signing.parse_secret(text, "KEY"),
                lambda: signing.parse_public(text, "KEY"),
                lambda: signing.load_secret(str(key_file)),  # --key FILE
                lambda: signing.load_secret(text),  # --key given the key itself
                lambda: signing.load_secret(None)]  # $GPULOCK_SIGNING_KEY
    for attempt in attempts:
        with mock.patch.dict(os.environ, {"GPULOCK_SIGNING_KEY": text}):
            try:
                attempt()
            except GpulockError as exc:
                said = str(exc)
                assert not [piece for piece in _windows(encoded) if piece in said], said


PASSWORD = "hunter2-Pa55"


def _cache_urls(tmp_path: Path) -> dict[str, str]:
    """Cache URLs that carry a login, each in a form a parser may misread."""
    folder = (tmp_path / "cache").as_posix()
    return {"file userinfo": f"file://deploy:{PASSWORD}@localhost{folder}",
            "file password with slash": f"file://deploy:{PASSWORD}/x@localhost{folder}",
            "s3 userinfo": f"s3://AKIA:{PASSWORD}@bucket/cache",
            "s3 password with slash": f"s3://AKIA:{PASSWORD}/x@bucket/cache",
            "s3 endpoint userinfo": f"s3://bucket/cache?endpoint=http://u:{PASSWORD}@127.0.0.1:1"}


CACHE_FORMS = ["file userinfo", "file password with slash", "s3 userinfo",
               "s3 password with slash", "s3 endpoint userinfo"]


@pytest.mark.parametrize("form", CACHE_FORMS)
@pytest.mark.parametrize("via", ["push --to", "GPULOCK_SUBSTITUTERS"])
def test_a_cache_url_with_a_password_never_shows_it(
        form: str, via: str, make_index, project: Project, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    store, _, secret = _synced(make_index, project, tmp_path)
    url = _cache_urls(tmp_path)[form]
    if via == "push --to":
        result = project.gpulock("push", "--store", str(store), "--key", str(secret),
                                 "--to", url)
    else:
        monkeypatch.setenv("GPULOCK_SUBSTITUTERS", url)
        result = project.gpulock("sync", "--store", str(tmp_path / "region-b"))
    refused(result, "substituter")
    assert PASSWORD not in result.err + result.out


@settings(max_examples=200, deadline=None, derandomize=True)
@given(user=st.text(max_size=8), password=st.text(min_size=8, max_size=24),
       scheme=st.sampled_from(["file://", "s3://"]))
def test_no_cache_url_is_shown_with_its_password(user: str, password: str, scheme: str):
    from gpulock.store.substituters import open_substituter

    url = f"{scheme}{user}:{password}@bucket/cache"
    try:
        shown = open_substituter(url).url
    except GpulockError as exc:
        shown = str(exc)
    assert password not in shown


def _models_project(folder: Path, name: str, source: str) -> Path:
    """A project folder holding only a model, `source`: its gpu.toml."""
    folder.mkdir(exist_ok=True)
    (folder / "gpu.toml").write_text(f'[project]\nname = "{name}"\npython = "3.11"\n'
                                     f'[groups.main]\npackages = []\n'
                                     f'[models.data]\nsource = "{source}"\n')
    return folder / "gpu.toml"


def _models(project: Project, manifest: Path, store: Path, *command: str):  # type: ignore[no-untyped-def]
    args = {"sync": ["--models-only"], "lock": []}.get(command[0], [])
    return project.gpulock(command[0], *command[1:], *args, "--manifest", str(manifest),
                            "--store", str(store))


@pytest.fixture
def two_projects(project: Project, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """'shared' pins a folder that is gone since; 'mine' references it with ref://: both
    synced, the store holds the only copy. (store, shared's manifest, mine's, a blob)"""
    share = tmp_path / "share"
    share.mkdir()
    for index in range(3):
        (share / f"part-{index}.bin").write_bytes(os.urandom(5_000))
    store = tmp_path / "store"
    shared = _models_project(tmp_path / "shared", "shared", str(share))
    mine = _models_project(tmp_path / "mine", "mine", "ref://shared/data")
    for manifest in (shared, mine):
        synced = _models(project, manifest, store, "sync")
        assert synced.code == 0, synced.err
    for path in share.iterdir():
        path.unlink()
    blob = next(p for p in (store / "v1" / "blobs" / "sha256").rglob("*") if p.is_file())
    return store, shared, mine, blob


def _blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "v1" / "blobs" / "sha256").rglob("*") if p.is_file()}


@pytest.mark.parametrize("loop", ["itself", "each other"])
def test_lock_refuses_to_pin_a_ref_that_leads_back_to_the_project(
        loop: str, two_projects, project: Project):
    store, shared, _, _ = two_projects
    source = "ref://shared/data" if loop == "itself" else "ref://mine/data"
    _models_project(shared.parent, "shared", source)
    result = _models(project, shared, store, "lock")
    cycle = ("ref://shared/data -> ref://shared/data" if loop == "itself"
             else "ref://shared/data -> ref://mine/data -> ref://shared/data")
    refused(result, cycle, "lead back to themselves")
    refused(_models(project, shared, store, "sync"), cycle)


def _hand_made_cycle(store: Path, project_name: str, source: str) -> None:
    """What an older gpulock (or a hand) left: a root whose model references in a loop."""
    root = store / "v1" / "roots" / "models" / f"{project_name}.json"
    data = json.loads(root.read_text())
    data["models"][0]["source"] = source
    root.write_text(json.dumps(data))


@pytest.mark.parametrize("loop", ["itself", "each other"])
def test_a_ref_cycle_left_in_the_store_with_a_blob_lost_is_one_sentence_and_gc_keeps_all(
        loop: str, two_projects, project: Project):
    store, _, mine, blob = two_projects
    _hand_made_cycle(store, "shared", "ref://shared/data" if loop == "itself"
                     else "ref://mine/data")
    kept = _blobs(store)
    blob.unlink()  # one copy lost: a sync would fetch it from the model's source
    shutil.rmtree(store / "v1" / "files")  # and lay out the views again
    result = _models(project, mine, store, "sync", "--frozen")
    line = refused(result, "ref://shared/data -> ", "lead back to themselves")
    assert "RecursionError" not in line and "GC root" not in line
    for command in (["gc", "--dry-run"], ["gc"]):
        collected = _models(project, mine, store, *command)
        assert collected.code == 0, collected.err
        assert _blobs(store) == kept - {blob.name}  # nothing another project pins went
    assert _models(project, mine, store, "verify").code == 1  # the lost one is named
    repaired = _models(project, mine, store, "verify", "--repair")
    refused(repaired, "ref://shared/data -> ", "lead back to themselves")
    assert _blobs(store) == kept - {blob.name}


def test_gc_that_cannot_read_a_model_root_removes_nothing_and_never_says_to_delete_it(
        make_index, project: Project, tmp_path: Path):
    store, _, _ = _synced(make_index, project, tmp_path)
    project.write(project.manifest.read_text().replace('["dep"]', "[]").replace(
        '["srcpkg"]', "[]"))
    assert project.gpulock("sync", "--store", str(store)).code == 0  # generation 2: empty
    root = store / "v1" / "roots" / "models" / "other.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text('{"models": ')  # cut short
    before = sorted(p.relative_to(store) for p in store.rglob("*") if "roots" not in p.parts)
    result = project.gpulock("gc", "--keep", "1", "--store", str(store))
    line = refused(result, str(root), "'gpulock sync' in project 'other'")
    assert "remove it" not in line
    after = sorted(p.relative_to(store) for p in store.rglob("*") if "roots" not in p.parts)
    assert after == before  # generation 1 and its entries are where they were
