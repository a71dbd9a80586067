"""gpu.toml: every mistake is reported with file, line, column and a way out."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpulock.errors import ManifestError
from gpulock.manifest import load, parse

EXAMPLE = Path(__file__).parent.parent / "gpu.toml.example"


def error(text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse(text, Path("gpu.toml"))
    return str(caught.value)


GOOD = """\
[project]
name = "speaker-diarization"
python = "3.10"
cuda = "12.1"

[groups.pytorch]
index = "https://download.pytorch.org/whl/cu121"
packages = ["torch==2.4.1", "torchaudio==2.4.1"]

[groups.special]
no_deps = true
packages = ["funasr==1.1.0"]

[groups.build]
packages = ["nvdiffrast @ git+https://github.com/NVlabs/nvdiffrast@v0.3.3"]
no_build_isolation = true
env = { TORCH_CUDA_ARCH_LIST = "8.6;8.9" }

[models.qwen]
source = "hf://Qwen/Qwen2.5-0.5B-Instruct"
revision = "main"
include = ["*.json", "*.safetensors"]

[verify]
imports = ["torch"]
"""


def test_a_full_manifest_parses_into_groups_models_and_verify():
    manifest = parse(GOOD, Path("gpu.toml"))
    assert manifest.project.python == "3.10" and manifest.project.cuda == "12.1"
    assert manifest.project.platform == "linux_x86_64" and manifest.project.glibc == "2.28"
    assert [g.name for g in manifest.groups] == ["pytorch", "special", "build"]
    assert manifest.groups[1].no_deps
    assert manifest.groups[2].env == (("TORCH_CUDA_ARCH_LIST", "8.6;8.9"),)
    assert manifest.index_for("torch") == "https://download.pytorch.org/whl/cu121"
    assert manifest.index_for("Funasr") == "https://pypi.org/simple"
    assert manifest.models[0].include == ("*.json", "*.safetensors")
    assert manifest.verify_imports == ("torch",)


def test_the_example_manifest_in_the_repo_is_valid():
    manifest = load(EXAMPLE)
    assert manifest.groups and manifest.models


def test_invalid_toml_names_line_and_column():
    assert error('[project]\nname = "x"\npython = 3.10.1\n').startswith("gpu.toml:3:")


def test_unknown_keys_suggest_the_right_one_with_their_line():
    text = GOOD.replace('index = "https://download', 'index_url = "https://download')
    assert error(text) == ("gpu.toml:7:1: unknown key 'index_url' in [groups.pytorch]; "
                           "did you mean 'index'?")
    assert "did you mean 'no_deps'?" in error(GOOD.replace("no_deps", "no_dep"))
    assert "did you mean 'packages'?" in error(GOOD.replace("packages = [\"funasr",
                                                            "pakages = [\"funasr"))


def test_unknown_tables_suggest_the_right_one():
    message = error(GOOD.replace("[verify]", "[verfy]"))
    assert message == "gpu.toml:24:1: unknown table [verfy]; did you mean [verify]?"


def test_wrong_types_say_what_was_expected():
    message = error(GOOD.replace("no_deps = true", 'no_deps = "yes"'))
    assert message == ("gpu.toml:11:1: 'no_deps' in [groups.special] must be true or false, "
                       "not the string 'yes'")
    assert "must be a list of strings, but holds the number 3" in error(
        GOOD.replace('"torchaudio==2.4.1"', "3"))


def test_bad_requirement_strings_are_quoted():
    message = error(GOOD.replace("torch==2.4.1", "torch=2.4.1"))
    assert message.startswith("gpu.toml:8:1: invalid requirement 'torch=2.4.1' in "
                              "[groups.pytorch]: ")


def test_inline_table_keys_are_located():
    message = error(GOOD.replace('TORCH_CUDA_ARCH_LIST = "8.6;8.9"', "TORCH_CUDA_ARCH_LIST = 8"))
    assert message.startswith("gpu.toml:17:")
    assert "env.TORCH_CUDA_ARCH_LIST in [groups.build] must be a string" in message


@pytest.mark.parametrize(("edit", "expected"), [
    (('python = "3.10"', 'python = "ten"'), "python = 'ten' must be a CPython version"),
    (('cuda = "12.1"', 'cuda = "twelve"'), "cuda = 'twelve' must look like \"12.1\""),
    (('cuda = "12.1"', 'platform = "linux_x86"'), "did you mean 'linux_x86_64'?"),
    (('source = "hf://Qwen/Qwen2.5-0.5B-Instruct"', 'source = "s4://bucket/x"'),
     "must start with hf://, ms://, https://, s3://"),
    (('source = "hf://Qwen/Qwen2.5-0.5B-Instruct"', 'source = "hf://Qwen"'),
     "must name a repository as owner/name"),
    (('index = "https://download.pytorch.org/whl/cu121"', 'index = "download.pytorch.org"'),
     "must be an http(s):// URL or a file:// folder"),
    (('packages = ["funasr==1.1.0"]', 'packages = ["torch"]'),
     "torch is listed in both [groups.pytorch] and [groups.special]"),
])
def test_invalid_values_are_explained(edit, expected):
    assert expected in error(GOOD.replace(*edit))


def test_project_name_and_python_are_required():
    assert error('[project]\nname = "x"\n') == "gpu.toml:1:1: [project] needs 'python'"
    assert "missing [project] table" in error("[groups.a]\npackages = []\n")


def test_a_missing_manifest_points_to_init(tmp_path):
    with pytest.raises(ManifestError, match="run 'gpulock init'"):
        load(tmp_path / "gpu.toml")


def test_the_content_hash_ignores_comments_formatting_and_verify():
    base = parse(GOOD, Path("gpu.toml")).content_hash
    spread = '[\n  "torch==2.4.1",\n  "torchaudio==2.4.1",\n]'
    reformatted = "# top comment\n" + GOOD.replace('["torch==2.4.1", "torchaudio==2.4.1"]', spread)
    assert parse(reformatted, Path("gpu.toml")).content_hash == base
    assert parse(GOOD.replace('imports = ["torch"]', 'imports = ["x"]'),
                 Path("gpu.toml")).content_hash == base
    assert parse(GOOD.replace("2.4.1", "2.4.0"), Path("gpu.toml")).content_hash != base
