"""Names become paths in one place: whatever string arrives, the store layout either refuses
it or returns a path inside the folder it belongs to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulock.store.layout import Layout, UnsafeNameError

BASE = Path("/store/v1")
pieces = st.sampled_from(["a", "..", ".", "", "/", "\\", "\x00", "\n", "-", "~", "é", "b.c",
                          "0" * 64, "f" * 40, "models--x", "--"])
hostile = st.lists(pieces, max_size=6).map("".join) | st.text(max_size=20)


def _inside(path: Path, folder: Path) -> bool:
    normal = os.path.normpath(path)
    return normal.startswith(str(folder) + os.sep) and "\x00" not in normal


PLACES = {
    "entry": (lambda layout, v: layout.entry(v), BASE / "pkgs"),
    "env": (lambda layout, v: layout.env(v), BASE / "envs"),
    "blob": (lambda layout, v: layout.blob(v), BASE / "blobs" / "sha256"),
    "git index": (lambda layout, v: layout.git_index(v), BASE / "blobs" / "git-sha1"),
    "hf repo": (lambda layout, v: layout.hf_repo("model", v), BASE / "hf"),
    "ms cache": (lambda layout, v: layout.ms_cache(v), BASE / "modelscope"),
    "ms repo": (lambda layout, v: layout.ms_repo("p", v), BASE / "modelscope" / "p" / "models"),
    "file view": (lambda layout, v: layout.file_view("p", v), BASE / "files" / "p"),
    "file view project": (lambda layout, v: layout.file_view(v, "m"), BASE / "files"),
    "tree": (lambda layout, v: layout.tree(v), BASE / "trees"),
    "model root": (lambda layout, v: layout.model_root(v), BASE / "roots" / "models"),
    "download": (lambda layout, v: layout.download_folder(v), BASE / "tmp" / "downloads"),
    "inside": (lambda layout, v: Layout.inside(BASE / "hf" / "s", v), BASE / "hf" / "s"),
    "named": (lambda layout, v: Layout.named(BASE / "tmp", v, "a name"), BASE / "tmp"),
    "ref": (lambda layout, v: Layout.ref(BASE / "hf" / "r", v), BASE / "hf" / "r" / "refs"),
    "ms snapshot": (lambda layout, v: Layout.ms_snapshot(BASE / "m", v), BASE / "m" /
                    "snapshots"),
    "commit": (lambda layout, v: Layout.commit_folder(BASE / "s", v), BASE / "s"),
}


@pytest.mark.parametrize("place", PLACES)
@settings(max_examples=300, deadline=None)
@given(value=hostile)
def test_a_name_is_refused_or_becomes_a_path_inside_its_folder(place, value):
    build, folder = PLACES[place]
    try:
        path = build(Layout(BASE), value)
    except UnsafeNameError as exc:
        assert "nothing was written" in str(exc)
        return
    assert _inside(path, folder), (value, path)
    assert os.path.normpath(path) == str(path)  # no `..` or `.` left to resolve
