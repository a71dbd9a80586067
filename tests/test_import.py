"""`gpulock import`: today's dependency files become a gpu.toml that says what it left out."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gpulock.manifest import dump, parse
from tests.conftest import Project

DATA = Path(__file__).parent / "data" / "import"


def imported(project: Project, source: Path, *args: str) -> str:
    result = project.gpulock("import", str(source), *args)
    assert result.code == 0, result.err
    return result.err


def test_a_runpod_dependencies_yaml_and_its_models_become_one_gpu_toml(project: Project):
    said = imported(project, DATA / "dependencies.yaml", "--models", str(DATA / "config.py"))
    manifest = parse(project.manifest.read_text(), project.manifest)
    assert manifest.project.name == "speaker-diarization"
    assert manifest.project.python == "3.10" and manifest.project.cuda == "12.1"
    groups = {g.name: g for g in manifest.groups}
    assert [str(r) for r in groups["pytorch"].packages] == ["torch==2.4.1", "torchaudio==2.4.1"]
    assert groups["pytorch"].index == "https://download.pytorch.org/whl/cu121"
    assert groups["standard"].index is None and groups["funasr"].no_deps
    assert {m.name: m.source for m in manifest.models} == {
        "speech_campplus_speaker-diarization_common":
            "ms://iic/speech_campplus_speaker-diarization_common",
        "speech_fsmn_vad_zh-cn-16k-common-pytorch":
            "ms://damo/speech_fsmn_vad_zh-cn-16k-common-pytorch",
        "segmentation-3.0": "hf://pyannote/segmentation-3.0"}
    text = project.manifest.read_text()
    assert "# PyTorch built for CUDA 12.1\n[groups.pytorch]" in text
    assert "install_order: not needed" in text and "install_order: not needed" in said
    # The file round-trips: what lock reads is what import wrote.
    assert dump(parse(text, project.manifest)) == dump(manifest)


def test_a_requirements_file_is_read_as_pip_reads_it(project: Project, tmp_path: Path):
    (tmp_path / "base.txt").write_text("requests==2.31.0\n")
    (tmp_path / "constraints.txt").write_text("urllib3<2\n")
    source = tmp_path / "requirements.txt"
    source.write_text(
        "# the service\n-i https://deploy:hunter2@pypi.example/simple\n"
        "--extra-index-url https://download.pytorch.org/whl/cu121\n-r base.txt\n"
        "-c constraints.txt\n--pre\ntorch==2.4.1 --hash=sha256:" + "a" * 64 + "\n"
        'numpy>=1.23 ; python_version < "3.12"\ntransformers[torch]==4.35.0 \\\n'
        "    --hash=sha256:" + "b" * 64 + "\n-e ./local\n"
        "nvdiffrast @ git+https://github.com/NVlabs/nvdiffrast@v0.3.3\n")
    said = imported(project, source, "--python", "3.11")
    manifest = parse(project.manifest.read_text(), project.manifest)
    assert manifest.project.index == "https://pypi.example/simple"
    assert manifest.project.prerelease == "allow" and manifest.project.python == "3.11"
    assert [str(r) for r in manifest.groups[0].packages] == [
        "requests==2.31.0", "torch==2.4.1", 'numpy>=1.23; python_version < "3.12"',
        "transformers[torch]==4.35.0",
        "nvdiffrast @ git+https://github.com/NVlabs/nvdiffrast@v0.3.3"]
    for words in ("--extra-index-url https://download.pytorch.org/whl/cu121",
                  "constraint urllib3<2", "editable install", "hashes of torch",
                  "credentials in https://pypi.example/simple"):
        assert words in said, words
    assert "hunter2" not in said and "hunter2" not in project.manifest.read_text()


def test_a_pyproject_brings_its_dependencies_extras_and_groups(project: Project,
                                                               tmp_path: Path):
    source = tmp_path / "pyproject.toml"
    source.write_text('[project]\nname = "My Service"\nrequires-python = ">=3.11"\n'
                      'dependencies = ["fastapi>=0.100"]\n'
                      '[project.optional-dependencies]\ngpu = ["torch==2.4.1"]\n'
                      '[dependency-groups]\ndev = ["pytest", {include-group = "lint"}]\n'
                      'lint = ["ruff"]\n[tool.uv]\nindex-url = "https://x.example/simple"\n')
    said = imported(project, source)
    manifest = parse(project.manifest.read_text(), project.manifest)
    assert manifest.project.name == "My-Service" and manifest.project.python == "3.11"
    assert {g.name: [str(r) for r in g.packages] for g in manifest.groups} == {
        "main": ["fastapi>=0.100"], "gpu": ["torch==2.4.1"], "dev": ["pytest"],
        "lint": ["ruff"]}
    assert "include-group" in said and "[tool.uv]" in said


def test_import_never_overwrites_a_gpu_toml_unless_forced(project: Project):
    project.write("# mine\n")
    result = project.gpulock("import", str(DATA / "dependencies.yaml"))
    assert result.code == 1 and "already exists; pass --force" in result.err
    assert project.manifest.read_text() == "# mine\n"
    assert project.gpulock("import", str(DATA / "dependencies.yaml"), "--force").code == 0


names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
specifiers = st.sampled_from(["==2.4.1", ">=1.23", "", "[x]<2", '; python_version < "3.12"',
                              " @ git+https://example.org/c.git@v1"])
# A package is listed in one group only: named after its group.
requirements = st.lists(specifiers, max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(names, st.tuples(requirements, st.booleans(), st.none() | st.just(
                                            "https://example.org/simple")), max_size=3),
       st.dictionaries(names, st.sampled_from(["hf://o/m", "ms://o/m",
                                               "https://example.org/w.bin"]), max_size=2),
       st.sampled_from(["3.10", "3.12.4"]), st.none() | st.just("12.1"))
def test_dump_then_parse_then_dump_is_identical(groups, models, python, cuda):
    body = {"project": {"name": "p", "python": python, **({"cuda": cuda} if cuda else {})},
            "groups": {name: {"packages": [f"{name}-p{i}{spec}" for i, spec in enumerate(specs)],
                              **({"no_deps": True} if no_deps else {}),
                              **({"index": index} if index else {})}
                       for name, (specs, no_deps, index) in groups.items()},
            "models": {name: {"source": source} for name, source in models.items()}}
    import tomli_w

    first = dump(parse(tomli_w.dumps(body), Path("gpu.toml")), {"project": "a note"}, "hi")
    assert dump(parse(first, Path("gpu.toml")), {"project": "a note"}, "hi") == first


def test_python_version_written_as_a_bare_yaml_number_keeps_its_digits(project: Project,
                                                                      tmp_path: Path):
    source = tmp_path / "dependencies.yaml"
    source.write_text("groups:\n  main:\n    packages: [tqdm]\nmetadata:\n"
                      "  python_version: 3.10\n")
    imported(project, source)
    assert parse(project.manifest.read_text(), project.manifest).project.python == "3.10"


def test_unreadable_inputs_are_one_sentence_naming_the_file(project: Project, tmp_path: Path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tqdm\n")
    cases = {"models.json": ("{bad", "not readable JSON"),
             "models.yaml": ("a: [\n", "not readable YAML"),
             "config.py": ("def (", "not readable Python"),
             "binary.txt": (b"\xff\xfe\x00", "not a readable UTF-8 text file"),
             "nested.txt": ("-r missing.txt\n", "a file it includes cannot be read")}
    for name, (content, words) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        args = (str(path),) if name.endswith(".txt") else (str(requirements), "--models",
                                                             str(path))
        result = project.gpulock("import", *args)
        assert result.code == 1, (name, result.err)
        assert words in result.err and name in result.err, result.err
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
        assert not project.manifest.exists()
