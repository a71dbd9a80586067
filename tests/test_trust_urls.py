"""Trust: URLs and sizes a user or a lock gives never print a secret or plan the impossible.

A file:// wheel URL in a hand-edited lock never prints what the file it names holds, and is
read only as far as the locked size. A password in a URL of any scheme never reaches a
message, whatever characters it holds; a scheme that takes no login in its URL (s3://,
file://, the hubs') refuses one in one sentence, while an '@' in an S3 key or a folder's
path is just a character. A folder cache is written through descriptors, so a link swapped
in by whoever else writes the cache is never written through. A size no model file has
(from a lock or a lying S3 listing) is refused before anything is planned for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulock import credentials
from gpulock.errors import GpulockError
from gpulock.manifest import parse
from gpulock.store.substituters import open_substituter
from gpulock.store.substituters.backend import CacheError
from gpulock.store.substituters.folder import Folder
from gpulock.store.substituters.s3 import S3
from tests.conftest import Project
from tests.support.dists import make_wheel
from tests.support.lying_s3 import LyingS3
from tests.test_binary_cache import _built, _index, _keys, _project
from tests.test_trust import HOST_PYTHON, canary, refused, setup  # noqa: F401 (a fixture)
from tests.test_trust_s3 import _model, lying  # noqa: F401 (a fixture)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PASSWORD = "hunter2/Pa55"  # a '/' in it: no URL parser finds where it ends
PIECES = ("hunter2", "Pa55")


def _wheel_project(make_index, project: Project) -> tuple[Path, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """A project locked to one wheel: (the wheel, the lock's data)."""
    index = make_index()
    wheel = make_wheel(index.folder, "app", "1.0")
    setup(project, index.url, '"app"')
    project.lock()
    return wheel, tomllib.loads(project.lock_path.read_text())


def _aim_wheel(project: Project, data: dict[str, Any], url: str) -> None:
    """The lock edited by hand: its wheel's URL is `url`."""
    data["packages"][0]["wheels"][0]["url"] = url
    project.lock_path.write_text(tomli_w.dumps(data))


# -- finding 2: a file:// wheel URL names any file on the machine --------------------------

@pytest.mark.usefixtures("canary")
def test_a_file_wheel_url_aimed_at_a_secret_never_prints_its_hash_or_size(
        make_index, project: Project, tmp_path: Path):
    _, data = _wheel_project(make_index, project)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cr3t-key")
    _aim_wheel(project, data, secret.as_uri())
    result = project.gpulock("sync", "--frozen", "--store", str(tmp_path / "store"))
    said = refused(result, "app 1.0", str(secret), "holds other bytes", "it was not stored")
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in said
    assert f"({len(secret.read_bytes())} bytes)" not in said
    assert not list((tmp_path / "store" / "v1" / "pkgs").glob("*app*"))


@pytest.mark.usefixtures("canary")
def test_a_file_wheel_url_that_is_a_link_is_refused_never_followed(
        make_index, project: Project, tmp_path: Path):
    wheel, data = _wheel_project(make_index, project)
    link = tmp_path / "link.whl"
    link.symlink_to(wheel)  # even to the very wheel locked: where it leads is not the lock's
    _aim_wheel(project, data, link.as_uri())
    result = project.gpulock("sync", "--frozen", "--store", str(tmp_path / "store"))
    refused(result, "app 1.0", str(link), "cannot be read as a regular file")


def test_a_file_wheel_is_read_no_further_than_its_locked_size(
        make_index, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import gpulock.store.fetch

    _, data = _wheel_project(make_index, project)
    locked = data["packages"][0]["wheels"][0]["size"]
    huge = tmp_path / "huge"
    with huge.open("wb") as out:  # sparse: 64 MiB that take no disk
        out.truncate(64 << 20)
    _aim_wheel(project, data, huge.as_uri())
    hashed = [0]

    class Counted:
        def __init__(self) -> None:
            self.digest = hashlib.sha256()

        def update(self, chunk: bytes) -> None:
            hashed[0] += len(chunk)
            self.digest.update(chunk)

        def hexdigest(self) -> str:
            return self.digest.hexdigest()

    monkeypatch.setattr(gpulock.store.fetch, "hashlib", SimpleNamespace(sha256=Counted))
    result = project.gpulock("sync", "--frozen", "--store", str(tmp_path / "store"))
    refused(result, "app 1.0", "holds other bytes")
    assert 0 < hashed[0] <= locked + 1


# -- finding 3: a password that holds '/' in a source or a requirement ----------------------

SECRET_SOURCES = {
    "git model": f"git+https://oauth2:{PASSWORD}@127.0.0.1:9/repo.git@main",
    "file model": f"file://user:{PASSWORD}@localhost/x",
    "s3 model": f"s3://AKIAX:{PASSWORD}@bucket/p?endpoint=http://127.0.0.1:9",
    "hf model": f"hf://user:{PASSWORD}@org/name",
    "git requirement": f"git+https://oauth2:{PASSWORD}@127.0.0.1:9/repo.git@main",
}


@pytest.mark.usefixtures("canary", "s3_credentials")
@pytest.mark.parametrize("where", list(SECRET_SOURCES))
def test_a_password_holding_a_slash_in_a_source_url_is_never_printed(
        where: str, make_index, project: Project):
    url = SECRET_SOURCES[where]
    if where == "git requirement":
        setup(project, make_index().url, json.dumps(f"app @ {url}"))
    else:
        setup(project, make_index().url, models=f'[models.m]\nsource = "{url}"\n')
    for command in ("lock", "sync"):
        result = project.gpulock(command, "--store", str(project.root / "store"))
        said = refused(result, f"{project.manifest}:")
        assert not any(piece in result.err + result.out for piece in PIECES), said
    assert not project.lock_path.exists()


@pytest.mark.parametrize(("url", "scheme"), [
    (f"s3://AKIAX:{PASSWORD}@bucket/p", "s3"), ("s3://AKIAX@bucket/p", "s3"),
    (f"file://user:{PASSWORD}@localhost/x", "file")])
def test_a_login_where_the_scheme_takes_none_is_one_sentence_before_its_own_checks(
        url: str, scheme: str, project: Project):
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n'
                  f'[models.m]\nsource = "{url}"\n')
    said = refused(project.gpulock("lock"), f"{project.manifest}:5:1",
                   f"which {scheme}:// URLs never carry")
    assert not any(piece in said for piece in PIECES)
    assert "AKIAX" not in said


# -- the rule, for any password in a URL of any scheme --------------------------------------

USERS = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs"),
                              blacklist_characters="/?#@:"), min_size=1, max_size=8)
PASSWORDS = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from("/:@#? "),
                    min_size=8, max_size=24)
SCHEMES = {"https://": "host/simple", "http://": "127.0.0.1:8080/simple",
           "git+https://": "host/org/repo.git", "git+file://": "host/srv/repo",
           "file://": "localhost/srv/x", "s3://": "bucket/p", "hf://": "org/name",
           "ms://": "org/name", "ref://": "project/model"}
PLACES = ("index", "group index", "requirement", "model", "substituter")


def _manifest(place: str, url: str) -> str:
    """A gpu.toml holding `url` in one place."""
    data: dict[str, Any] = {"project": {"name": "m", "python": HOST_PYTHON},
                            "groups": {"main": {"packages": []}}}
    if place == "index":
        data["project"]["index"] = url
    elif place == "group index":
        data["groups"]["main"]["index"] = url
    elif place == "requirement":
        data["groups"]["main"]["packages"] = [f"app @ {url}"]
    elif place == "model":
        data["models"] = {"m": {"source": url}}
    else:
        data["cache"] = {"substituters": [url]}
    return tomli_w.dumps(data)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(user=USERS, password=PASSWORDS, scheme=st.sampled_from(list(SCHEMES)),
       place=st.sampled_from(PLACES))
def test_no_message_or_kept_url_holds_a_password_of_any_scheme(user: str, password: str,
                                                                scheme: str, place: str):
    url = f"{scheme}{user}:{password}@{SCHEMES[scheme]}"
    said: list[str] = [credentials.shown(url), credentials.login_problem(url) or ""]
    try:
        manifest = parse(_manifest(place, url), Path("gpu.toml"))
        kept = [manifest.project.index, *(g.index or "" for g in manifest.groups),
                *(str(r) for g in manifest.groups for r in g.packages),
                *(m.source for m in manifest.models), *manifest.cache.substituters]
        said += kept  # a URL kept is a URL the lock and every later message may hold
    except GpulockError as exc:
        said.append(str(exc))
    finally:
        credentials.forget()
    for make in (S3, open_substituter):
        try:
            said.append(make(url).url)
        except GpulockError as exc:
            said.append(str(exc))
    assert not [text for text in said if password in text]


@pytest.mark.parametrize("url", [
    "git+https://host/org/repo.git@v1.0#subdirectory=pkg", "https://user:pw@host/simple",
    "s3://bucket/team@gpu/cache?endpoint=http://127.0.0.1:9", "file:///srv/team@gpu/cache"])
def test_a_url_whose_login_is_clear_is_shown_whole_but_for_its_password(url: str):
    assert credentials.login_problem(url) is None
    assert credentials.shown(url) == url.replace("user:pw@", "")


# -- finding 8a: an '@' in an S3 key or a folder's path is no login --------------------------

@pytest.mark.usefixtures("s3_credentials")
def test_an_s3_cache_whose_key_holds_an_at_is_taken_and_read(
        project: Project, lying: LyingS3):  # noqa: F811 (the fixture)
    url = lying.s3_url("team@gpu/cache")
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n'
                  f'[cache]\nsubstituters = ["{url}"]\n')
    assert project.gpulock("lock").code == 0
    lying.put("team@gpu/cache/x", b"entry")
    cache = open_substituter(url)
    assert cache.url == url and cache.read("x", 100) == b"entry"


def test_a_folder_cache_whose_path_holds_an_at_is_pushed_to_and_synced_from(
        make_index, project: Project, tmp_path: Path):
    index = _index(make_index)
    cache = tmp_path / "team@gpu" / "cache"
    secret, public = _keys(tmp_path / "keys", "team-1")
    log = tmp_path / "builds.log"
    _project(project, index.url, f"file://{cache}", public, log)
    assert project.gpulock("sync", "--store", str(tmp_path / "a")).code == 0
    pushed = project.gpulock("push", "--store", str(tmp_path / "a"), "--key", str(secret))
    assert pushed.code == 0 and "Pushed 2 entries" in pushed.err, pushed.err
    index.close()
    synced = project.gpulock("sync", "--store", str(tmp_path / "b"), "--frozen")
    assert synced.code == 0, synced.err
    assert _built(log) == 1  # the built entry came from the cache


# -- finding 8b: a folder swapped for a link while a push writes below it -------------------

@pytest.mark.parametrize("swapped", ["wheels", "wheels/ab"])
def test_a_folder_swapped_for_a_link_during_a_push_is_never_written_through(
        swapped: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    (elsewhere / "ab").mkdir(parents=True)  # what the link leads to, laid out as the cache
    source = tmp_path / "x.whl"
    source.write_bytes(b"wheel")
    real_open = os.open

    def swapping(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        """Whoever else writes the cache swaps the folder in, just before the file opens."""
        if ".upload-" in os.fspath(path) and not (root / swapped).is_symlink():
            os.rename(root / swapped, tmp_path / "aside")
            (root / swapped).symlink_to(elsewhere if swapped == "wheels" else elsewhere / "ab")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swapping)
    Folder(root.as_uri()).upload("wheels/ab/x.whl", source)
    monkeypatch.undo()
    assert (root / swapped).is_symlink()  # the swap happened
    assert [p for p in elsewhere.rglob("*") if p.is_file()] == []
    assert (tmp_path / "aside").exists()


def test_a_link_planted_in_a_folder_cache_is_refused_at_every_level(tmp_path: Path):
    source = tmp_path / "x.whl"
    source.write_bytes(b"wheel")
    for level in ("wheels", "wheels/ab", "wheels/ab/x.whl"):
        root, elsewhere = tmp_path / f"cache-{level.count('/')}", tmp_path / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        (root / level).parent.mkdir(parents=True, exist_ok=True)
        (root / level).symlink_to(elsewhere)
        if level.endswith(".whl"):  # the file's own name: replaced by the rename, not followed
            Folder(root.as_uri()).upload("wheels/ab/x.whl", source)
            assert (root / level).read_bytes() == b"wheel" and not (root / level).is_symlink()
        else:
            with pytest.raises(CacheError, match="is a symbolic link"):
                Folder(root.as_uri()).upload("wheels/ab/x.whl", source)
        assert list(elsewhere.iterdir()) == []


# -- finding 4: a size no model file has -----------------------------------------------------

@pytest.mark.usefixtures("s3_credentials")
def test_an_s3_download_of_a_huge_size_plans_its_ranges_lazily(
        lying: LyingS3, tmp_path: Path):  # noqa: F811 (the fixture)
    lying.put("p/x", b"ten bytes!")
    with pytest.raises(CacheError, match="smaller than"):
        S3(lying.s3_url("p")).download("x", tmp_path / "x", 10**18)


@dataclass
class Swollen(LyingS3):
    """A bucket whose listing gives every object a size no file has."""

    size: int = 10**18

    def _page(self, keys: list[str], token: str) -> tuple[list[tuple[str, int]], str]:
        page, following = super()._page(keys, token)
        return [(key, self.size) for key, _ in page], following


@pytest.mark.usefixtures("canary", "s3_credentials")
@pytest.mark.parametrize("size", [10**18, 1 << 41, -1])
def test_an_s3_listing_with_a_size_no_file_has_is_refused_before_any_read(
        size: int, project: Project):
    server = Swollen(size=size)
    try:
        _model(project, server, b"weights")
        result = project.gpulock("lock")
        refused(result, "model 'm'", "weights.bin", f"as {size:,} bytes", "nothing was pinned")
        assert server.gets == [] and not project.lock_path.exists()
    finally:
        server.close()


@pytest.mark.usefixtures("canary")
@pytest.mark.parametrize("size", [1 << 41, 10**18, -5, True, "12", 1.5])
def test_a_locked_model_file_size_no_file_has_is_refused(size: object, project: Project,
                                                          tmp_path: Path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "weights.bin").write_bytes(b"weights")
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n'
                  f'[models.m]\nsource = "{share}"\n')
    project.lock()
    data = tomllib.loads(project.lock_path.read_text())
    data["tool"]["gpulock"]["models"][0]["files"][0]["size"] = size
    project.lock_path.write_text(tomli_w.dumps(data))
    result = project.gpulock("sync", "--frozen", "--store", str(tmp_path / "store"))
    whole = isinstance(size, int) and not isinstance(size, bool)
    refused(result, *(("model 'm'", "'weights.bin'", "not 0 to 1,099,511,627,776") if whole
                      else ("'size' has the wrong type",)))
    assert not (tmp_path / "store" / "v1" / "blobs").exists()

