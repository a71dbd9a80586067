"""Trust: a hostile S3 bucket or file share never floods the store or holds a sync.

A lying S3 endpoint on 127.0.0.1 (tests/support/lying_s3.py) serves objects larger than
their record or pin says, bodies that drip one byte at a time and listings whose
continuation tokens loop or never end. A substituter that lies or stalls is a warning and
sync takes the entry from the index instead; an s3:// model source that does is one
sentence. Either way no more than the expected bytes reach the disk, and every command
returns. A file share whose locked file became a FIFO is refused, never waited on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulock import signing
from gpulock.errors import GpulockError
from gpulock.manifest import Model
from gpulock.names import path_problem
from gpulock.sources import pin
from gpulock.sources.s3 import S3Source
from gpulock.store.layout import Layout
from gpulock.store.substituters.backend import CacheError
from gpulock.store.substituters.s3 import S3
from tests.conftest import Project, Result
from tests.support.dists import make_wheel
from tests.support.lying_s3 import LyingS3
from tests.test_trust import HOST_PYTHON, canary, refused  # noqa: F401 (canary: a fixture)

pytestmark = pytest.mark.usefixtures("s3_credentials")

PADDING = 64 << 20  # what a lying GET sends past the object's size
STALL = "2"  # GPULOCK_STALL_TIMEOUT in these tests, seconds
DRIP = 0.4  # seconds between the bytes of a dripping body: always under the stall


@pytest.fixture
def lying(monkeypatch: pytest.MonkeyPatch) -> Iterator[LyingS3]:
    monkeypatch.setenv("GPULOCK_STALL_TIMEOUT", STALL)
    server = LyingS3()
    yield server
    server.close()


def bounded(call: Callable[[], Result], seconds: float = 120) -> Result:
    """`call()`'s result; the test fails, rather than hangs, when it does not return."""
    out: list[Result | BaseException] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # shown by the assertion below
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"the command did not return within {seconds} s"
    assert isinstance(out[0], Result), out[0]
    return out[0]


def largest(*folders: Path) -> int:
    """The size of the largest file below `folders` (0 when there is none)."""
    sizes = [0]
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                with contextlib.suppress(FileNotFoundError):  # removed while we looked
                    sizes.append(os.lstat(os.path.join(root, name)).st_size)
    return max(sizes)


def watch(server: LyingS3, *folders: Path) -> list[int]:
    """The largest file below `folders`, taken after each MiB the server floods: a list
    holding one size, updated while the command runs."""
    seen = [0]
    server.on_padding = lambda: seen.__setitem__(0, max(seen[0], largest(*folders)))
    return seen


# -- the one way an S3 object is read --------------------------------------------------------

BIG = os.urandom((33 << 20) + 5)  # three 16 MiB ranges, the last one short


@pytest.mark.parametrize(("data", "expected", "outcome"), [
    (BIG, len(BIG), "whole"), (b"", 0, "whole"), (b"abc", 3, "whole"),
    (BIG, len(BIG) - 1, "more than"), (BIG[:(16 << 20) + 9], len(BIG), "smaller than"),
    (None, 10, "missing")])
def test_an_s3_object_is_read_in_ranges_and_never_past_its_expected_size(
        data: bytes | None, expected: int, outcome: str, lying: LyingS3, tmp_path: Path):
    if data is not None:
        lying.put("c/object", data)  # an honest server: ranges as asked
    target = tmp_path / "object"
    bucket = S3(lying.s3_url("c"))
    if outcome == "whole":
        assert bucket.download("object", target, expected)
        assert target.read_bytes() == data
        assert bucket.read("object", expected) == data
    elif outcome == "missing":
        assert not bucket.download("object", target, expected) and not target.exists()
        assert bucket.read("object", expected) is None
    else:
        with pytest.raises(CacheError, match=f"{outcome} the {expected:,} bytes expected"):
            bucket.download("object", target, expected)
        assert target.stat().st_size <= expected


# -- a substituter that lies or stalls: a warning, and the index instead -------------------

def _pushed_to_the_lying_bucket(make_index, project: Project, server: LyingS3,  # type: ignore[no-untyped-def]
                                tmp_path: Path, packages: tuple[str, ...] = ("dep",),
                                **lie: float) -> int:
    """`packages` synced into store a and pushed to a folder cache, whose objects the lying
    endpoint then serves under `cache/`, the wheels' with `lie`; the last wheel's size."""
    index = make_index()
    for name in packages:
        make_wheel(index.folder, name, "1.0", files={f"{name}/data.bin": os.urandom(4000)})
    secret, public = signing.keygen("team-1", tmp_path / "keys")
    folder = tmp_path / "folder-cache"
    project.write(f'[project]\nname = "regions"\npython = "{HOST_PYTHON}"\n'
                  f'index = "{index.url}"\n[groups.app]\npackages = {list(packages)!r}\n'
                  f'[cache]\nsubstituters = ["{folder.as_uri()}"]\n'
                  f'trusted-keys = ["{public.read_text().strip()}"]\n')
    assert project.gpulock("sync", "--store", str(tmp_path / "a")).code == 0
    pushed = project.gpulock("push", "--store", str(tmp_path / "a"), "--key", str(secret))
    assert pushed.code == 0, pushed.err
    size = 0
    for path in folder.rglob("*"):
        if path.is_file():
            wheel = path.name.endswith(".whl")
            server.put(f"cache/{path.relative_to(folder).as_posix()}", path.read_bytes(),
                       **(lie if wheel else {}))
            size = path.stat().st_size if wheel else size
    return size


@pytest.mark.parametrize("lie", ["oversized", "dripping"])
def test_a_substituter_that_floods_or_drips_is_a_warning_and_sync_takes_the_index(
        lie: str, make_index, project: Project, lying: LyingS3, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    how = {"padding": PADDING} if lie == "oversized" else {"drip": DRIP}
    wheel = _pushed_to_the_lying_bucket(make_index, project, lying, tmp_path, **how)
    url = lying.s3_url("cache")
    monkeypatch.setenv("GPULOCK_SUBSTITUTERS", url)
    store = tmp_path / "b"
    seen = watch(lying, store)

    result = bounded(lambda: project.gpulock("sync", "--store", str(store), "--frozen"))
    assert result.code == 0, result.err  # dep came from the index instead
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"refused dep 1.0 from {url}" in warnings[0], result.err
    said = (f"more than the {wheel:,} bytes expected of it" if lie == "oversized"
            else "GPULOCK_STALL_TIMEOUT")
    assert said in warnings[0], warnings[0]
    assert "Traceback" not in result.err
    assert seen[0] <= wheel and largest(store) < 1 << 20  # never more than the record's size
    assert lying.sent["cache/" + next(k.removeprefix("cache/") for k in lying.objects
                                      if k.endswith(".whl"))] < PADDING // 2
    assert project.gpulock("verify", "--store", str(store)).code == 0


def test_a_substituter_that_stalls_is_not_asked_again_in_that_sync(
        make_index, project: Project, lying: LyingS3, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    _pushed_to_the_lying_bucket(make_index, project, lying, tmp_path,
                                ("dep", "dep2", "dep3"), drip=DRIP)
    monkeypatch.setenv("GPULOCK_SUBSTITUTERS", lying.s3_url("cache"))
    lying.gets.clear()
    result = bounded(lambda: project.gpulock("sync", "--store", str(tmp_path / "b"),
                                             "--frozen", "--jobs", "1"))
    assert result.code == 0, result.err  # all three from the index
    assert result.err.count("it is not asked again in this sync") == 1, result.err
    assert len([key for key in lying.gets if key.endswith(".whl")]) == 1, lying.gets


# -- an s3:// model source that lies or stalls: one sentence --------------------------------

def _model(project: Project, server: LyingS3, data: bytes) -> str:
    server.put("models/m/weights.bin", data)
    project.write(f'[project]\nname = "p"\npython = "{HOST_PYTHON}"\n'
                  '[groups.main]\npackages = []\n'
                  f'[models.m]\nsource = "{server.s3_url("models/m/")}"\n')
    return "models/m/weights.bin"


@pytest.mark.usefixtures("canary")
@pytest.mark.parametrize(("command", "lie"), [("lock", "oversized"), ("sync", "oversized"),
                                              ("sync", "dripping")])
def test_an_s3_model_that_floods_or_drips_is_one_sentence_and_never_fills_the_disk(
        command: str, lie: str, project: Project, lying: LyingS3, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    key = _model(project, lying, os.urandom(1000))
    store, scratch = tmp_path / "store", tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where lock reads objects to
    if command == "sync":
        assert project.gpulock("lock").code == 0
    lying.objects[key].padding = PADDING if lie == "oversized" else 0
    lying.objects[key].drip = DRIP if lie == "dripping" else 0.0
    seen = watch(lying, store, scratch)

    args = ("lock",) if command == "lock" else ("sync", "--frozen", "--models-only")
    result = bounded(lambda: project.gpulock(*args, "--store", str(store)))
    said = "more than the 1,000 bytes" if lie == "oversized" else "GPULOCK_STALL_TIMEOUT"
    refused(result, "model 'm'", "weights.bin", said)
    assert seen[0] <= 1000 and largest(store, scratch) <= 1000
    assert lying.sent[key] < PADDING // 2
    assert not (store / "v1" / "files" / "p" / "m").exists()


@pytest.mark.usefixtures("canary")
@pytest.mark.parametrize(("listing", "said"), [("alternate", "a listing that loops"),
                                               ("endless-same", "listed 'weights.bin' twice"),
                                               ("endless-fresh", "goes on past 30 entries")])
def test_an_s3_listing_that_loops_or_never_ends_is_given_up_in_one_sentence(
        listing: str, said: str, project: Project, lying: LyingS3, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    import gpulock.http

    monkeypatch.setattr(gpulock.http, "LISTING_LIMIT", 30)  # the 1,000,000 of hub listings
    _model(project, lying, b"weights")
    lying.listing = listing
    result = bounded(lambda: project.gpulock("lock", "--store", str(tmp_path / "store")))
    refused(result, "model 'm'", "listing s3://lies/models/m", said)
    assert not project.lock_path.exists()


# -- S3 keys become model paths by the hubs' rule, checked before any object is read -------

pieces = st.sampled_from(["a", "..", ".", "", "/", "\\", "\x00", "\n", "b.c", "é", "--",
                          "x" * 300, "y" * 5000])
keys = st.lists(pieces, min_size=1, max_size=5).map("".join) | st.text(min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(keys, min_size=1, max_size=4, unique=True))
def test_keys_an_s3_listing_holds_are_refused_or_pinned_as_safe_paths_before_any_is_read(
        names: list[str]):
    read: list[str] = []

    def download(self: S3, name: str, target: Path, limit: int, progress: object = None
                 ) -> bool:
        read.append(name)
        target.write_bytes(b"x" * limit)
        return True

    model = Model(name="m", source="s3://bucket/models/m?endpoint=http://127.0.0.1:1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(S3, "listing", lambda self: [(n, 3) for n in names])
        patch.setattr(S3, "download", download)
        try:
            pinned = S3Source().pin(model, None)  # type: ignore[arg-type]
        except GpulockError as exc:
            assert str(exc).startswith("model 'm': ") and "\n" not in str(exc)
            assert len(str(exc)) < 1000  # a huge key is not echoed whole
            pinned = None
        problem = pinned.problem(S3Source()) if pinned is not None else None
        if problem is not None:  # keys that are a file and a folder (`a`, `a/b`): the pin
            assert "both as a file and as a folder" in problem  # is refused as `lock` pins
            with pytest.raises(GpulockError, match="refused, as what the server answered"):
                pin(model, None)  # type: ignore[arg-type]
    assert all(path_problem(name) is None for name in read)
    for file in pinned.files if pinned is not None else ():
        Layout.inside(Path("/store/v1/files/p/m"), file.path)


# -- a file share whose locked file became a FIFO ------------------------------------------

def test_a_locked_share_file_replaced_by_a_fifo_is_refused_never_waited_on(
        project: Project, tmp_path: Path):
    share = tmp_path / "nfs" / "dataset"
    share.mkdir(parents=True)
    (share / "weights.bin").write_bytes(os.urandom(5000))
    project.write(f'[project]\nname = "p"\npython = "{HOST_PYTHON}"\n'
                  f'[groups.main]\npackages = []\n[models.data]\nsource = "{share.as_uri()}"\n')
    assert project.gpulock("lock").code == 0
    (share / "weights.bin").unlink()
    os.mkfifo(share / "weights.bin")
    store = tmp_path / "store"
    run = subprocess.run([sys.executable, "-m", "gpulock", "sync", "--frozen", "--models-only",
                          "--manifest", str(project.manifest), "--store", str(store)],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ))
    refused(Result(run.returncode, run.stdout, run.stderr), "model 'data'", "weights.bin",
            "is a FIFO, not a regular file")
    assert not (store / "v1" / "files" / "p" / "data").exists()
