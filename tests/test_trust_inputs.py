"""Trust: what indexes, sdists, pyprojects, nvidia-smi and gpu.toml comments hand gpulock.

Each attack runs through the CLI: a wheel or sdist whose metadata inflates far past any real
one, pyproject.toml of the wrong shape or nested thousands deep, nvidia-smi printing numbers
that are not, a gpu.toml comment holding a character YAML takes for a line break, a wheel
member nested 1,500 folders deep. Each must end in one sentence (or, where the input is
valid, simply work), with nothing oversized left in the cache or store and nothing outside
the store changed.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulock import k8s, manifest
from gpulock.cli import main
from gpulock.names import MEMBER_DEPTH_MAX
from gpulock.sync.doctor import count
from gpulock.untrusted import TEXT_MAX
from tests import test_trust
from tests.support.dists import make_wheel
from tests.test_trust import HOST_PYTHON, gpulock, refused, setup, synced

canary = test_trust.canary  # the fixture: nothing outside the store changed

HEAD = b"Metadata-Version: 2.1\nName: app\nVersion: 1.0\n\n"
BOMB = 256 * 2**20  # what the bombs inflate to: 16 times the bound, from about 250 KiB


class _Spaces(io.RawIOBase):
    """`size` spaces, read in chunks: a bomb's body without holding it in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = b" " * n
        self.left -= n
        return n


def _zip(path: Path, bombed: str, members: dict[str, bytes], size: int = BOMB,
         lie: bool = False) -> Path:
    """A zip whose member `bombed` is HEAD and `size` spaces, written as it is compressed;
    `lie`: its headers declare only HEAD's length."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open(bombed, "w") as member:
            member.write(HEAD)
            body = _Spaces(size)
            while chunk := body.read(2**20):
                member.write(chunk)
        for name, data in members.items():
            archive.writestr(name, data)
    if lie:
        data = bytearray(path.read_bytes())
        central = data.index(b"PK\x01\x02")  # the bombed member is the first
        data[22:26] = data[central + 24: central + 28] = len(HEAD).to_bytes(4, "little")
        path.write_bytes(bytes(data))
    return path


def _tar_gz(path: Path, members: dict[str, bytes | int]) -> Path:
    """A .tar.gz of `members`: bytes as they are, an int as that many spaces after HEAD."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, int):
                info.size = len(HEAD) + data
                archive.addfile(info, io.BufferedReader(_Chained(data)))
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


class _Chained(_Spaces):
    """HEAD, then spaces."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.head = HEAD

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        return super().readinto(buffer)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bombs, built once: wheels (honest and lying headers, and one small enough for a
    PEP 658 answer to reach gpulock), sdists (.tar.gz and .zip)."""
    folder = tmp_path_factory.mktemp("bombs")
    info = "app-1.0.dist-info"
    rest = {f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            f"{info}/RECORD": b""}
    made = {}
    for kind, size, lie in (("honest", BOMB, False), ("lying", BOMB, True),
                            ("pep 658", 32 * 2**20, False)):
        made[kind] = _zip(folder / kind.replace(" ", "") / "app-1.0-py3-none-any.whl",
                          f"{info}/METADATA", rest, size, lie)
    made["tar.gz"] = _tar_gz(folder / "app-1.0.tar.gz", {"app-1.0/PKG-INFO": BOMB})
    made["zip"] = _zip(folder / "app-1.0.zip", "app-1.0/PKG-INFO", {})
    return made


def _largest(*folders: Path) -> int:
    """The size of the largest file below `folders`."""
    return max((os.path.getsize(os.path.join(top, name)) for folder in folders
                for top, _, names in os.walk(folder) for name in names), default=0)


def _place(bomb: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.link(bomb, folder / bomb.name)


# -- decompression bombs -----------------------------------------------------------------

@pytest.mark.parametrize("bomb, server, words", [
    ("honest", {}, ["larger than 16 MiB"]),
    ("lying", {}, ["larger than 16 MiB"]),
    ("honest", {"ranges": False}, ["larger than 16 MiB"]),
    ("lying", {"ranges": False}, ["CRC"]),  # zipfile stops at the declared size
    ("pep 658", {"serve_metadata": True}, [".metadata", "larger than 16 MiB"]),
    ("honest", None, ["larger than 16 MiB"]),
], ids=["ranges", "ranges, lying header", "whole download", "whole download, lying header",
        "pep 658", "find-links folder"])
def test_a_wheel_whose_metadata_inflates_past_the_bound_is_refused_at_lock_and_not_cached(
        make_index, project, canary, tmp_path, bombs, bomb, server, words):
    if server is None:
        folder = tmp_path / "wheels"
        _place(bombs[bomb], folder)
        setup(project, folder.as_uri(), '"app"')
    else:
        index = make_index(**server)
        _place(bombs[bomb], index.folder)
        setup(project, index.url, '"app"')
    said = refused(project.gpulock("lock"), "app-1.0-py3-none-any.whl", *words)
    assert "METADATA" in said or ".metadata" in said
    assert not project.lock_path.exists()
    assert _largest(tmp_path / "cache", project.root) <= TEXT_MAX


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_sdist_whose_pkg_info_inflates_past_the_bound_is_refused_at_lock_and_not_cached(
        make_index, project, canary, tmp_path, bombs, kind):
    index = make_index()
    _place(bombs[kind], index.folder)
    setup(project, index.url, '"app"')
    refused(project.gpulock("lock"), f"the PKG-INFO of app-1.0.{kind}", "larger than 16 MiB")
    assert _largest(tmp_path / "cache", project.root) <= TEXT_MAX


def test_a_wheel_whose_entry_points_inflate_past_the_bound_is_refused_at_sync(
        make_index, project, canary):
    index = make_index()
    wheel = make_wheel(index.folder, "app", "1.0")
    bombed = index.folder / "bombed.whl"
    with zipfile.ZipFile(wheel) as plain:
        _zip(bombed, "app-1.0.dist-info/entry_points.txt",
             {i.filename: plain.read(i) for i in plain.infolist()}, 32 * 2**20)
    bombed.replace(wheel)
    setup(project, index.url, '"app"')
    project.lock()
    refused(gpulock(project, "sync"), "app 1.0", "entry_points.txt", "larger than 16 MiB")
    assert not any((project.root / "store" / "v1" / "pkgs").iterdir())


# -- pyproject.toml from outside: an sdist's, and `gpulock import`'s ---------------------

DEEP_ARRAY = "x = " + "[" * 20_000 + "]" * 20_000 + "\n"


@pytest.mark.parametrize("pyproject, words", [
    ('build-system = "x"\n', ["build-system is not a table"]),
    (DEEP_ARRAY, ["too deeply"]),
    ("[build-system]\nrequires = [1]\n", ["build-system.requires is not a list of strings"]),
    ('[build-system]\nrequires = ["!!!"]\n', ["'!!!'", "not a requirement"]),
    ("[build-system]\nbuild-backend = 5\n", ["build-backend is not a string"]),
    ("# " + "x" * (TEXT_MAX + 10) + "\n", ["larger than 16 MiB"]),
], ids=["string table", "deep", "numeric requires", "bad requirement", "numeric backend",
        "huge"])
def test_an_sdists_pyproject_of_the_wrong_shape_is_one_sentence_at_lock(
        make_index, project, canary, pyproject, words):
    index = make_index()
    _tar_gz(index.folder / "app-1.0.tar.gz", {
        "app-1.0/PKG-INFO": HEAD,  # Metadata 2.1: the sdist's metadata must be built
        "app-1.0/pyproject.toml": pyproject.encode()})
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\nindex = "{index.url}"\n'
                  '[groups.main]\nno_build_isolation = true\npackages = ["app"]\n')
    refused(project.gpulock("lock"), "the pyproject.toml of app-1.0.tar.gz", *words)
    assert not project.lock_path.exists()


@pytest.mark.parametrize("project_table, words", [
    ("dependencies = " + "[" * 20_000 + "]" * 20_000, ["too deeply"]),
    ("optional-dependencies = 5", ["[project] optional-dependencies must be a table",
                                   "the number 5"]),
    ("dynamic = 5", ["[project] dynamic must be a list"]),
    ("dependencies = 5", ["[project] dependencies must be a list"]),
    ("name = 5", ["[project] name must be a string"]),
    ('name = "x"\n[dependency-groups]\n[[dependency-groups.x]]\n'
     "y = 1\n[tool]\nuv = 1", None),
    ('name = "x"\n[tool.uv]\n[dependency-groups]\n', None),
], ids=["deep", "numeric extras", "numeric dynamic", "numeric dependencies", "numeric name",
        "group of tables", "empty tables"])
def test_an_imported_pyproject_of_the_wrong_shape_is_one_sentence(project, tmp_path,
                                                                  project_table, words):
    source = tmp_path / "src" / "pyproject.toml"
    source.parent.mkdir()
    source.write_text(f"[project]\n{project_table}\n")
    result = project.gpulock("import", str(source))
    if words is None:  # valid TOML of a legal shape: imported, what does not fit is said
        assert result.code == 0, result.err
        return
    refused(result, str(source), *words)
    assert not project.manifest.exists()


@pytest.mark.parametrize("top", ["dependency-groups = 5", "tool = 5"])
def test_an_imported_pyprojects_top_level_tables_must_be_tables(project, tmp_path, top):
    source = tmp_path / "pyproject.toml"
    source.write_text(f'{top}\n[project]\nname = "x"\n')
    refused(project.gpulock("import", str(source)), top.split()[0], "must be a table")
    assert not project.manifest.exists()


# -- gpu.toml: nesting tomllib would recurse into --------------------------------------------

_DEEP = "y = " + "[" * 5_000 + "]" * 5_000 + "\n"


def _manifest(body: str) -> str:
    return (f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n[groups.main]\npackages = []\n'
            f"[x]\n{body}")


@pytest.mark.parametrize("quote", ["'''", '"""'])
def test_deep_nesting_after_a_multi_line_string_ending_in_quotes_is_found_with_its_place(
        project, canary, quote):
    mark = quote[0]
    # The string holds "it's'": its last quote, taken for an opening one, would hide the
    # nesting up to the next quote from a scan.
    project.write(_manifest(f"a = {quote}it{mark}s{quote}{mark}\n{_DEEP}z = {mark}b{mark}\n"))
    refused(project.gpulock("lock"), "gpu.toml:8:", "nested more than 100 deep")


def test_deep_nesting_the_scan_misses_is_still_one_sentence(project, canary, monkeypatch):
    monkeypatch.setattr(manifest, "_too_deep", lambda text: None)
    project.write(_manifest(_DEEP))
    refused(project.gpulock("lock"), "gpu.toml", "nested more than 100 deep")


# -- k8s: gpu.toml text into a ConfigMap -----------------------------------------------------

@pytest.mark.parametrize("character", ["\x85", "\u2028", "\u2029"])
def test_a_gpu_toml_comment_with_a_character_yaml_breaks_lines_at_goes_into_the_configmap(
        make_index, project, character):
    project.write(f'# the team{character}s pod\n[project]\nname = "m"\npython = "{HOST_PYTHON}"'
                  f'\nindex = "{make_index().url}"\n[groups.main]\npackages = []\n')
    project.lock()
    project.capsys.readouterr()
    code = main(["k8s", "job", "--manifest", str(project.manifest)])
    out = project.capsys.readouterr().out
    assert code == 0
    config = next(d for d in yaml.safe_load_all(out) if d["kind"] == "ConfigMap")
    assert config["data"]["gpu.toml"] == project.manifest.read_text(encoding="utf-8")


_BREAKS = st.sampled_from(["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029", "\t", " ", "#",
                           "\ufeff", "'", '"', "\\", ": ", "- ", "|", ">"])
_TEXT = st.lists(st.one_of(st.text(max_size=8), _BREAKS), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=10), value=_TEXT)
def test_any_text_round_trips_through_the_yaml_k8s_writes(key, value):
    documents = [{"kind": "ConfigMap", "data": {key: value, "gpu.toml": f"a\n{value}\n"}}]
    assert list(yaml.safe_load_all(k8s.dump(documents))) == documents


# -- nvidia-smi: numbers that are not ------------------------------------------------------

def _nvidia_smi(folder: Path, rows: list[str]) -> str:
    """A PATH whose `nvidia-smi` prints a driver banner and these `--query-gpu` rows."""
    folder.mkdir()
    (folder / "rows").write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\ncase "$1" in --query-gpu=*) cat "{folder}/rows";; *) echo '
                      '"| Driver Version: 550.54.15   CUDA Version: 12.4 |";; esac\n')
    script.chmod(0o755)
    return f"{folder}:/usr/bin:/bin"


GOOD = "0, NVIDIA H100 80GB HBM3, 9.0, 80000, 81559"


@pytest.mark.parametrize("row", [
    "0, H100, 9.0, inf, 81559", "0, H100, 9.0, 80000, 1e400", "², H100, 9.0, 80000, 81559",
    "0, H100, 9.0, 80000, ²", "0, H100, 9.0, nan, 81559", "9" * 5_000 + ", H100, 9.0, 1, 1",
    "0, H100, 9.0, -5, 81559", "0, H100\x1b[2J, 9.0, 80000, ٣",
], ids=["inf", "1e400", "superscript index", "superscript memory", "nan", "5000 digits",
        "negative", "escape and arabic digit"])
def test_nvidia_smi_printing_what_is_not_a_number_is_a_warning_in_doctor_and_sync(
        make_index, project, tmp_path, monkeypatch, row):
    setup(project, make_index().url)
    project.lock()
    monkeypatch.setenv("PATH", _nvidia_smi(tmp_path / "driver", [row, GOOD]))
    result = gpulock(project, "doctor")
    assert result.code == 0, result.err + result.out
    warning = next(line for line in result.out.splitlines() if "described a GPU" in line)
    assert warning.startswith("warn") and len(warning) < 400
    assert "\x1b" not in result.out and "GPU 0: NVIDIA H100 80GB HBM3" in result.out
    assert "Traceback" not in result.err
    synced(project)


@settings(max_examples=500)
@given(st.text(max_size=30))
def test_a_count_is_a_plain_decimal_number_or_none(text):
    found = count(text)
    plain = text.isascii() and text.partition(".")[0].isdigit() and len(
        text.partition(".")[0]) <= 12 and (text.partition(".")[2].isdigit()
                                           or "." not in text)
    assert found == (int(text.partition(".")[0]) if plain else None)


@given(st.integers(min_value=0, max_value=10**12 - 1))
def test_every_count_nvidia_smi_prints_is_read(number):
    assert count(str(number)) == number and count(f"{number}.5") == number


# -- a wheel member nested deeper than Python walks by recursion -----------------------------

def _deep_wheel(folder: Path, version: str, segments: int) -> Path:
    """app `version` with a module `segments` path segments deep (a legal path of 2 bytes a
    folder)."""
    return make_wheel(folder, "app", version, files={
        "app/__init__.py": b"", "app/" + "d/" * (segments - 2) + "x.py": b"X = 1\n"})


def test_a_wheel_member_nested_1500_folders_deep_is_refused_at_sync(make_index, project,
                                                                    canary):
    index = make_index()
    _deep_wheel(index.folder, "1.0", 1_500)
    setup(project, index.url, '"app"')
    project.lock()
    said = refused(gpulock(project, "sync"), "app 1.0",
                   f"nested more than {MEMBER_DEPTH_MAX} folders deep")
    assert len(said) < 600
    assert not any((project.root / "store" / "v1" / "pkgs").iterdir())


def test_a_wheel_member_at_the_depth_limit_syncs_verifies_and_is_collected(make_index, project,
                                                                          canary):
    index = make_index()
    _deep_wheel(index.folder, "1.0", MEMBER_DEPTH_MAX)
    setup(project, index.url, '"app"')
    project.lock()
    synced(project)
    setup(project, index.url)
    project.lock()
    synced(project)
    assert gpulock(project, "gc", "--keep", "1").code == 0
    assert not any((project.root / "store" / "v1" / "pkgs").iterdir())

