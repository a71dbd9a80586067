"""The command line as a user meets it: a real `gpulock` process, words instead of tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpulock.cli import build_parser
from tests.support.dists import make_wheel

DESIGN_COMMANDS = ["init", "lock", "sync", "env", "run", "diff", "status", "verify", "gc",
                   "rollback", "import"]


def gpulock(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpulock", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands_of_the_design(tmp_path: Path):
    result = gpulock("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in DESIGN_COMMANDS:
        assert f"    {command} " in result.stdout
    assert set(DESIGN_COMMANDS) <= set(build_parser()._subparsers._group_actions[0].choices)


def test_a_malformed_manifest_is_one_line_with_position_and_no_traceback(tmp_path: Path):
    (tmp_path / "gpu.toml").write_text('[project]\nname = "x"\npython = "3.10"\n'
                                       '[groups.a]\npackages = ["ok", "bad=="]\n')
    result = gpulock("lock", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: gpu.toml:5:1: invalid requirement 'bad==' in "
                                    "[groups.a]")
    assert "Traceback" not in result.stderr


def test_the_manifest_is_found_in_a_parent_folder(tmp_path: Path, make_index):
    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    (tmp_path / "gpu.toml").write_text(f'[project]\nname = "x"\npython = "3.10"\n'
                                       f'index = "{index.url}"\n[groups.a]\npackages = ["app"]\n')
    (tmp_path / "src").mkdir()
    result = gpulock("lock", cwd=tmp_path / "src")
    assert result.returncode == 0, result.stderr
    assert "+ app 1.0" in result.stderr
    assert (tmp_path / "pylock.gpu.toml").is_file()


def test_no_manifest_anywhere_points_to_init(tmp_path: Path):
    result = gpulock("lock", cwd=tmp_path)
    assert result.returncode == 1
    assert "no gpu.toml in" in result.stderr and "gpulock init" in result.stderr


def test_an_unreachable_index_is_one_sentence(tmp_path: Path):
    (tmp_path / "gpu.toml").write_text('[project]\nname = "x"\npython = "3.10"\n'
                                       'index = "http://127.0.0.1:9/simple"\n'
                                       '[groups.a]\npackages = ["app"]\n')
    result = gpulock("lock", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot fetch http://127.0.0.1:9/simple/app/" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_writes_a_manifest_that_locks_to_an_empty_lock(tmp_path: Path):
    assert gpulock("init", cwd=tmp_path).returncode == 0
    again = gpulock("init", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr
    result = gpulock("lock", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Resolved 0 packages" in result.stderr


def test_diff_says_what_changes_between_two_locks(tmp_path: Path, make_index):
    index = make_index()
    for name, version in [("a", "1.0"), ("a", "2.0"), ("b", "1.0"), ("c", "1.0")]:
        make_wheel(index.folder, name, version)
    manifest = tmp_path / "gpu.toml"
    head = f'[project]\nname = "x"\npython = "3.10"\nindex = "{index.url}"\n[groups.a]\n'
    manifest.write_text(head + 'packages = ["a<2", "b"]\n')
    assert gpulock("lock", "--lock", "pylock.old.toml", cwd=tmp_path).returncode == 0
    manifest.write_text(head + 'packages = ["a>=2", "c"]\n')
    assert gpulock("lock", "--lock", "pylock.new.toml", cwd=tmp_path).returncode == 0
    result = gpulock("diff", "pylock.old.toml", "pylock.new.toml", cwd=tmp_path)
    assert result.stdout.splitlines() == ["~ a 1.0 -> 2.0 (upgrade)", "- b 1.0", "+ c 1.0"]



def test_a_full_disk_is_one_sentence_and_leaves_current(tmp_path: Path, make_index,
                                                        monkeypatch, capsys):
    """ENOSPC while unpacking: a clear error, no partial entry, no generation switched."""
    import errno

    from gpulock.cli import main
    from gpulock.store import unpack

    index = make_index()
    make_wheel(index.folder, "app", "1.0")
    manifest = tmp_path / "gpu.toml"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest.write_text(f'[project]\nname = "x"\npython = "{python}"\nindex = "{index.url}"\n'
                        '[groups.a]\npackages = ["app"]\n')

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "store"))

    monkeypatch.setattr(unpack, "_real_dirs", full)
    code = main(["sync", "--manifest", str(manifest), "--store", str(tmp_path / "store")])
    assert code == 1
    err = capsys.readouterr().err
    assert f"error: No space left on device: {tmp_path / 'store'}; nothing was switched" in err
    assert "Traceback" not in err
    pkgs = tmp_path / "store" / "v1" / "pkgs"
    assert list(pkgs.iterdir()) == []
    assert list((tmp_path / "store" / "v1" / "tmp").glob("*")) in ([], [
        tmp_path / "store" / "v1" / "tmp" / "downloads"])
    assert not (tmp_path / "store" / "v1" / "envs" / "x" / "current").exists()


def test_a_reader_that_leaves_early_gets_no_error(monkeypatch: pytest.MonkeyPatch,
                                                  capfd: pytest.CaptureFixture[str]):
    """`gpulock env | head -1`: the pipe closes under gpulock's print; it says nothing of it
    (a BrokenPipeError is an OSError, and was reported as a failed sync)."""
    from gpulock import cli

    def closed(_args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_cmd_env", closed)
    assert cli.main(["env"]) == 1
    assert capfd.readouterr().err == ""
