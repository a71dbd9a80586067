"""`gpulock import`: today's dependency files become a gpu.toml that says what it left out."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulock.errors import GpulockError
from gpulock.importer import import_file
from gpulock.manifest import PLATFORMS, PRERELEASES, dump, parse
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
        "main": ["fastapi>=0.100"], "gpu": ["torch==2.4.1"], "dev": ["pytest", "ruff"]}
    assert "[tool.uv]" in said


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
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
maybe = st.none() | st.booleans()
groups_ = st.dictionaries(names, st.fixed_dictionaries({
    "packages": requirements, "no_deps": st.booleans(), "no_build_isolation": st.booleans(),
    "index": st.none() | st.just("https://example.org/simple"),
    "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), texts,
                           max_size=3),
    "no_build": maybe, "prerelease": st.none() | st.sampled_from(PRERELEASES)}), max_size=3)
models_ = st.dictionaries(names, st.fixed_dictionaries({
    "source": st.sampled_from(["hf://o/m", "ms://o/m", "https://example.org/w.zip"]),
    "revision": st.none() | st.sampled_from(["main", "v1.0"]),
    "include": st.lists(st.sampled_from(["*.json", "*.safetensors", "sub/*"]), max_size=2),
    "exclude": st.lists(st.sampled_from(["*.bin", "onnx/*"]), max_size=2)}), max_size=2)
projects = st.fixed_dictionaries({
    "python": st.sampled_from(["3.10", "3.12.4"]), "cuda": st.none() | st.just("12.1"),
    "platform": st.sampled_from(PLATFORMS), "glibc": st.sampled_from(["2.17", "2.28"]),
    "index": st.none() | st.just("https://mirror.example/simple"), "no_build": st.booleans(),
    "prerelease": st.sampled_from(PRERELEASES)})


def _toml_body(project: dict, groups: dict, models: dict, imports: list[str]) -> dict:
    body: dict = {"project": {"name": "p", **{k: v for k, v in project.items() if v is not None}},
                  "groups": {}, "models": {}}
    for name, group in groups.items():
        body["groups"][name] = {k: v for k, v in group.items() if v is not None and k != "packages"}
        body["groups"][name]["packages"] = [f"{name}-p{i}{spec}"
                                            for i, spec in enumerate(group["packages"])]
    for name, model in models.items():
        body["models"][name] = {k: v for k, v in model.items() if v is not None}
        body["models"][name]["extract"] = model["source"].endswith(".zip")
    if imports:
        body["verify"] = {"imports": imports}
    return body


@settings(max_examples=80, deadline=None)
@given(projects, groups_, models_, st.lists(st.sampled_from(["torch", "numpy"]), max_size=2,
                                            unique=True))
def test_dump_then_parse_gives_the_same_manifest_and_the_same_text(project, groups, models,
                                                                    imports):
    import tomli_w

    manifest = parse(tomli_w.dumps(_toml_body(project, groups, models, imports)),
                     Path("gpu.toml"))
    first = dump(manifest, {"project": "a note", "groups.x": "two\nlines"}, "hi")
    assert parse(first, Path("gpu.toml")) == manifest
    assert dump(parse(first, Path("gpu.toml")), {"project": "a note", "groups.x": "two\nlines"},
                "hi") == first


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
             "nested.txt": ("-r missing.txt\n", "-r 'missing.txt': no such file"),
             "aliases.yaml": ("a: &a [x, x]\nb: [*a, *a]\n", "uses YAML aliases"),
             "zero.txt": ("-r /dev/zero\n", "reads only files in")}
    for name, (content, words) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        args = ((str(path),) if name.endswith(".txt") or name == "aliases.yaml"
                else (str(requirements), "--models", str(path)))
        result = project.gpulock("import", *args)
        assert result.code == 1, (name, result.err)
        assert words in result.err and name in result.err, result.err
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
        assert not project.manifest.exists()


def test_the_seeds_own_files_import_verbatim_and_round_trip(tmp_path: Path):
    # runpod-model-manager's speaker-diarization project as its users keep it: Chinese
    # comments, a PyTorch index, a no_deps group, metadata, and a config.py whose `models`
    # property holds the ModelScope repositories (read, never run: it imports its package).
    seed = DATA / "seed000"
    result = import_file(seed / "dependencies.yaml", models=seed / "config.py")
    manifest = result.manifest()
    assert manifest.project.name == "speaker-diarization" and manifest.project.cuda == "12.1"
    groups = {g.name: g for g in manifest.groups}
    assert len(groups["standard"].packages) == 25 and groups["funasr"].no_deps
    assert [m.source for m in manifest.models][:1] == [
        "ms://iic/speech_campplus_speaker-diarization_common"]
    assert len(manifest.models) == 4
    text = result.text()
    assert dump(parse(text, Path("gpu.toml")), result.notes, result.header()) == text


@pytest.mark.parametrize("name, content", [
    ("requirements.txt", "-i https://mirror.example/simple\ntorch==2.4.1\n"
                         'numpy ; python_version < "3.12"\n'),
    ("pyproject.toml", '[project]\nname = "svc"\nrequires-python = ">=3.10"\n'
                       'dependencies = ["fastapi"]\n[project.optional-dependencies]\n'
                       'gpu = ["torch"]\n'),
    ("dependencies.yaml", "groups:\n  g:\n    index_url: https://x.example/whl/cu121\n"
                          "    packages: [torch]\n    description: the torch\n"),
])
def test_every_format_writes_a_file_that_dumps_back_to_itself(tmp_path: Path, name, content):
    (tmp_path / name).write_text(content)
    result = import_file(tmp_path / name, python="3.10")
    text = result.text()
    assert dump(parse(text, Path("gpu.toml")), result.notes, result.header()) == text


def test_requirement_lines_given_as_urls_keep_their_urls(tmp_path: Path):
    source = tmp_path / "requirements.txt"
    source.write_text("git+https://github.com/org/repo.git@v1#egg=repo\n"
                      "git+https://user:tok@github.com/org/priv.git@main#egg=priv\n"
                      "https://files.example.org/torch-2.4.1%2Bcu121-cp310-cp310-"
                      "linux_x86_64.whl\ngit+https://github.com/org/noegg.git\n")
    result = import_file(source, python="3.10")
    assert [str(r) for r in result.manifest().groups[0].packages] == [
        "repo @ git+https://github.com/org/repo.git@v1",
        "priv @ git+https://github.com/org/priv.git@main"]
    said = "\n".join(result.dropped)
    assert "only git+ URLs can be locked" in said and "torch @ https://" in said
    assert "noegg.git names no package" in said and "tok" not in result.text()


def test_pyproject_groups_never_replace_each_other_and_self_references_expand(
        tmp_path: Path):
    source = tmp_path / "pyproject.toml"
    source.write_text('[project]\nname = "svc"\nrequires-python = "~=3.9"\n'
                      'dependencies = ["fastapi"]\n'
                      '[project.optional-dependencies]\nmain = ["uvicorn"]\n'
                      'dev = ["pytest"]\nall = ["svc[dev,main]"]\n'
                      '[dependency-groups]\ndev = ["ruff", {include-group = "lint"}]\n'
                      'lint = ["mypy"]\n')
    result = import_file(source)
    groups = {g.name: [str(r) for r in g.packages] for g in result.manifest().groups}
    # Each package stays in the first group that lists it: all groups resolve together.
    assert groups == {"main": ["fastapi"], "main-2": ["uvicorn"], "dev": ["pytest"],
                      "dev-2": ["ruff", "mypy"]}
    assert result.manifest().project.python == "3.9"
    assert "group 'main' is named 'main-2' in gpu.toml" in result.dropped
    assert "group 'all': all its packages are in earlier groups" in result.dropped


def test_yaml_names_that_collide_keys_it_lacks_and_groups_it_skips_are_said(tmp_path: Path):
    source = tmp_path / "dependencies.yaml"
    source.write_text("groups:\n  a b:\n    packages: torch\n    pip_args: [-U]\n"
                      "  a-b:\n    packages: [numpy]\ninstall_order: [a b]\nenv: {X: 1}\n")
    result = import_file(source, python="3.10")
    groups = {g.name: [str(r) for r in g.packages] for g in result.manifest().groups}
    assert groups == {"a-b": ["torch"], "a-b-2": ["numpy"]}
    said = "\n".join(result.dropped)
    for words in ("'a-b' is named 'a-b-2'", "pip_args: gpu.toml has no such setting",
                  "env: gpu.toml has no such setting", "'a-b' is not in install_order"):
        assert words in said, words


def test_a_models_dict_that_is_computed_is_one_sentence_and_one_repo_is_a_list(
        tmp_path: Path):
    config = tmp_path / "config.py"
    config.write_text("MS = ['iic/a']\nclass P:\n    @property\n    def models(self):\n"
                      "        return {'modelscope': MS}\n")
    with pytest.raises(GpulockError, match=r"config.py:5: the models dict is computed"):
        import_file(DATA / "dependencies.yaml", models=config)
    listed = tmp_path / "models.yaml"
    listed.write_text("modelscope: iic/a\nhuggingface: [org/b]\n")
    result = import_file(DATA / "dependencies.yaml", models=listed)
    assert {m.name: m.source for m in result.manifest().models} == {"a": "ms://iic/a",
                                                                      "b": "hf://org/b"}


def test_import_never_quotes_a_secret_or_a_file_outside_the_project(project: Project,
                                                                    tmp_path: Path,
                                                                    monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_ENVSECRET")
    folder = tmp_path / "service"
    folder.mkdir()
    (folder / ".env").write_text("HF_TOKEN=hf_DOTENVSECRET\n")
    (folder / "c.txt").write_text("bar @ git+https://u:CONSECRET@h.example/r.git\n")
    source = folder / "requirements.txt"
    source.write_text("requests\n-r .env\n-c c.txt\n"
                      "-e git+https://user:EDITSECRET@git.example/r.git#egg=foo\n"
                      'foo @ https://u:INVALIDSECRET@host/x.whl ; python_version >>> "3"\n')
    result = project.gpulock("import", str(source), "--python", "3.11")
    assert result.code == 0, result.err
    written = project.manifest.read_text()
    for secret in ("DOTENVSECRET", "CONSECRET", "EDITSECRET", "INVALIDSECRET", "ENVSECRET"):
        assert secret not in written and secret not in result.err, secret
    assert ".env:1: a line pip's parser cannot read" in written
    escaping = folder / "more.txt"
    escaping.write_text("-r /proc/self/environ\n")
    refused = project.gpulock("import", str(escaping), "--force")
    assert refused.code == 1 and "reads only files in" in refused.err
    assert "ENVSECRET" not in refused.err and project.manifest.read_text() == written


def test_control_characters_in_notes_leave_a_readable_gpu_toml(tmp_path: Path):
    source = tmp_path / "dependencies.yaml"
    source.write_text('groups:\n  g:\n    packages: [torch]\n    description: "a\\x01b"\n')
    text = import_file(source, python="3.10").text()
    assert "# a?b" in text and parse(text, Path("gpu.toml")).groups[0].name == "g"


def test_a_requirements_file_may_include_files_of_the_folder_import_runs_in(
        tmp_path: Path, monkeypatch):
    (tmp_path / "common.txt").write_text("tqdm\n")
    (tmp_path / "svc").mkdir()
    source = tmp_path / "svc" / "requirements.txt"
    source.write_text("-r ../common.txt\nnumpy\n")
    monkeypatch.chdir(tmp_path)
    packages = import_file(source, python="3.10").manifest().groups[0].packages
    assert [str(r) for r in packages] == ["tqdm", "numpy"]
    monkeypatch.chdir(tmp_path / "svc")
    with pytest.raises(GpulockError, match=r"-r '\.\./common\.txt': gpulock import reads only"):
        import_file(source, python="3.10")
