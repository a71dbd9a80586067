"""pylock.gpu.toml: deterministic, round-trips exactly, and refuses damaged input clearly."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulock.errors import LockfileError
from gpulock.lock import lockfile
from gpulock.pins import FileRef, Lock, LockedPackage, VcsRef
from gpulock.target import Target

names = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True)
versions = st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}(\.[0-9])?(\+cu1[0-9]{2}|\+cpu)?",
                         fullmatch=True)
sha256 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
times = st.none() | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                 timezones=st.just(timezone.utc))


def file_refs(filename: str) -> st.SearchStrategy[FileRef]:
    return st.builds(lambda url, size, h, t: FileRef(filename, url, size, h, t),
                     st.sampled_from(["https://files.example/x", "file:///opt/w/x"]),
                     st.integers(0, 2**40), sha256, times)


@st.composite
def packages(draw: st.DrawFn, name: str) -> LockedPackage:
    kind = draw(st.sampled_from(["wheel", "sdist", "vcs"]))
    version = draw(versions)
    stem = f"{name.replace('-', '_')}-{version}"
    return LockedPackage(
        name=name, version=version,
        index=None if kind == "vcs" else draw(st.sampled_from(["https://pypi.org/simple",
                                                               "file:///opt/wheels"])),
        wheel=draw(file_refs(f"{stem}-py3-none-any.whl")) if kind == "wheel" else None,
        sdist=draw(file_refs(f"{stem}.tar.gz")) if kind == "sdist" else None,
        vcs=VcsRef("https://github.com/o/r", draw(st.from_regex(r"[0-9a-f]{40}", fullmatch=True)),
                   draw(st.none() | st.just("v1.0")),
                   draw(st.none() | st.just("sub"))) if kind == "vcs" else None,
        requires_python=draw(st.none() | st.just(">=3.9")),
        dependencies=tuple(sorted(draw(st.sets(names, max_size=3)))),
        groups=tuple(sorted(draw(st.sets(st.sampled_from(["a", "gpu", "std"]), max_size=2)))))


@st.composite
def locks(draw: st.DrawFn) -> Lock:
    package_names = sorted(draw(st.sets(names, max_size=6)))
    target = Target(python=draw(st.sampled_from(["3.10", "3.11", "3.12.4"])),
                    platform=draw(st.sampled_from(["linux_x86_64", "linux_aarch64"])),
                    glibc=draw(st.sampled_from(["2.17", "2.28", "2.35"])),
                    cuda=draw(st.none() | st.sampled_from(["12.1", "12.8"])))
    return Lock(target=target, manifest_hash="sha256:" + draw(sha256),
                packages=tuple(draw(packages(n)) for n in package_names))


@settings(max_examples=200, deadline=None)
@given(locks())
def test_write_read_write_is_identical(lock: Lock):
    text = lockfile.dumps(lock)
    again = lockfile.loads(text, Path("pylock.gpu.toml"))
    assert again == lock
    assert lockfile.dumps(again) == text


def sample() -> str:
    wheel = FileRef("a-1.0-py3-none-any.whl", "https://x/a.whl", 10, "0" * 64,
                    datetime(2025, 1, 1, tzinfo=timezone.utc))
    lock = Lock(Target("3.10"), "sha256:" + "1" * 64,
                (LockedPackage("a", "1.0", "https://pypi.org/simple", wheel=wheel),))
    return lockfile.dumps(lock)


def refused(text: str) -> str:
    with pytest.raises(LockfileError) as caught:
        lockfile.loads(text, Path("pylock.gpu.toml"))
    return str(caught.value)


def test_the_lock_is_a_pep_751_document():
    from gpulock.lock.lockfile import tomllib

    data = tomllib.loads(sample())
    assert data["lock-version"] == "1.0" and data["created-by"] == "gpulock"
    assert data["requires-python"] == "==3.10.*"
    assert data["environments"] == ["sys_platform == 'linux' and platform_machine == 'x86_64' "
                                    "and python_version == '3.10' and "
                                    "platform_python_implementation == 'CPython'"]
    (package,) = data["packages"]
    assert package["index"] == "https://pypi.org/simple"
    (wheel,) = package["wheels"]
    assert set(wheel) == {"name", "upload-time", "url", "size", "hashes"}


def test_a_truncated_lock_is_refused_with_a_way_out():
    text = sample()
    message = refused(text[: text.index("[tool.gpulock]")])
    assert "pylock.gpu.toml" in message and "gpulock lock" in message
    assert "not valid TOML" in refused(text[: len(text) // 2] + "[[")


def test_a_lock_from_a_newer_gpulock_is_refused():
    assert "written by a newer gpulock" in refused(sample().replace("format = 1", "format = 9"))
    assert "upgrade gpulock" in refused(sample().replace('lock-version = "1.0"',
                                                         'lock-version = "2.0"'))


def test_a_hand_edited_package_entry_is_refused_naming_it():
    broken = sample().replace("size = 10", 'size = "ten"')
    assert "package 'a' wheel: 'size' has the wrong type" in refused(broken)


def test_a_lock_not_written_by_gpulock_is_refused():
    assert "was not written by gpulock" in refused(sample().replace('created-by = "gpulock"',
                                                                    'created-by = "uv"'))


def _vcs_sample(url: str, subdirectory: str | None = None, commit: str = "a" * 40) -> str:
    lock = Lock(Target("3.10"), "sha256:" + "1" * 64,
                (LockedPackage("a", "1.0", vcs=VcsRef(url, commit, "v1", subdirectory)),))
    return lockfile.dumps(lock)


@pytest.mark.parametrize("url, subdirectory, commit, problem", [
    ("https://github.com/o/r", "../../..", "a" * 40, "subdirectory '../../..'"),
    ("--upload-pack=touch /tmp/x", None, "a" * 40, "git URL that must start with"),
    ("https://u:tok@github.com/o/r", None, "a" * 40, "git URL with credentials"),
    ("https://github.com/o/r", None, "HEAD; rm -rf /", "is not a git commit"),
    ("ext::sh -c touch% /tmp/x", None, "a" * 40, "git URL that must start with"),
])
def test_a_git_package_that_would_reach_outside_its_checkout_or_run_code_is_refused(
        url, subdirectory, commit, problem):
    message = refused(_vcs_sample(url, subdirectory, commit))
    assert "package 'a'" in message and problem in message


def test_models_round_trip_through_the_lock_exactly():
    from gpulock.pins import model_from_table

    model = {"name": "qwen", "source": "hf://org/qwen", "revision": "refs/pr/1",
             "commit": "c" * 40, "include": ["*.json"], "weights": {"bytes": 2},
             "files": [{"path": "a/config.json", "size": 2, "git-sha1": "d" * 40},
                       {"path": "model.safetensors", "size": 9, "sha256": "e" * 64}]}
    lock = Lock(Target("3.10"), "sha256:" + "1" * 64, (), (model_from_table(model, "a test"),))
    again = lockfile.loads(lockfile.dumps(lock), Path("pylock.gpu.toml"))
    assert [m.as_dict() for m in again.models] == [model]
    assert again.models == lock.models
