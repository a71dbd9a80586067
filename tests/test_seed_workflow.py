"""Seed 000 end to end: a RunPod project's dependencies.yaml and models, imported, locked,
synced into a relative store, and run the serverless way: a plain CPython of the same version
with only the Dockerfile ENV block `gpulock env` prints, from another folder, loading its
models offline through the very client versions the project pins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpulock.env.interpreter import find_python
from tests.conftest import Project
from tests.support.clients import client_python
from tests.support.dists import make_wheel

DATA = Path(__file__).parent / "data" / "import"


def dockerfile_env(block: str, base_path: str) -> dict[str, str]:
    """The environment a Dockerfile's `ENV KEY="value"` lines give a container."""
    env: dict[str, str] = {}
    for line in block.splitlines():
        match = re.fullmatch(r'ENV (\w+)="((?:[^"\\]|\\.)*)"', line)
        assert match, line
        value = re.sub(r"\\(.)", r"\1", match.group(2).replace("$PATH", base_path)
                       .replace("\\$", "\0")).replace("\0", "$")
        env[match.group(1)] = value
    return env


@pytest.fixture(scope="session")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients")


def test_the_seed_workflow_from_dependencies_yaml_to_a_serverless_shell(
        make_index, hub, modelscope, project: Project, tmp_path: Path, clients):
    python310 = find_python("3.10")
    if python310 is None:
        pytest.skip("CPython 3.10, the seed's target, is not installed here")
    hf_client = client_python("huggingface_hub 0.17.3", clients)
    ms_client = client_python("modelscope 1.11.0", clients)
    # The PyTorch index of the seed, as a folder of wheels named like its cu121 URL.
    cu121 = tmp_path / "whl" / "cu121"
    for name in ("torch", "torchaudio"):
        make_wheel(cu121, name, "2.4.1+cu121")
    default = make_index()
    for name, version in (("tqdm", "4.67.1"), ("numpy", "1.23.5"), ("fastapi", "0.121.0")):
        make_wheel(default.folder, name, version)
    make_wheel(default.folder, "uvicorn", "0.33.0", entry_points=(
        "[console_scripts]\nuvicorn = uvicorn:main\n"), files={"uvicorn/__init__.py": (
            b"def main():\n    import sys, torch, funasr\n"
            b"    print('serving from', sys.version.split()[0])\n")})
    make_wheel(default.folder, "funasr", "1.2.7", requires=["umap"])  # wrong: no_deps
    seed = (DATA / "dependencies.yaml").read_text().replace(
        "https://download.pytorch.org/whl/cu121", cu121.as_uri())
    (project.root / "dependencies.yaml").write_text(seed)
    ms_files = {"configuration.json": b'{"task": "speaker-diarization"}',
                "campplus.bin": os.urandom(30_000)}
    hf_files = {"config.json": b'{"model_type": "pyannet"}', "pytorch_model.bin":
                os.urandom(40_000)}
    modelscope.repos["iic/campplus"] = {"master": ms_files}
    hub.repo("pyannote/segmentation").commit(hf_files)
    (project.root / "models.json").write_text(json.dumps(
        {"modelscope": ["iic/campplus"], "huggingface": ["pyannote/segmentation"]}))

    cli = [sys.executable, "-m", "gpulock"]
    run = {**os.environ}
    step = subprocess.run([*cli, "import", "dependencies.yaml", "--models", "models.json"],
                          cwd=project.root, env=run, capture_output=True, text=True)
    assert step.returncode == 0, step.stderr
    # The seed's "null" index is PyPI; here the local server stands in for it.
    text = project.manifest.read_text()
    project.manifest.write_text(text.replace('python = "3.10"\n',
                                             f'python = "3.10"\nindex = "{default.url}"\n'))
    for args in (["lock"], ["sync", "--store", "store"]):
        step = subprocess.run([*cli, *args], cwd=project.root, env=run, capture_output=True,
                              text=True)
        assert step.returncode == 0, step.stderr
    block = subprocess.run([*cli, "env", "--store", "store", "--format", "dockerfile"],
                           cwd=project.root, env=run, capture_output=True, text=True,
                           check=True).stdout
    hub.close()
    modelscope.close()

    image = dockerfile_env(block, "/usr/bin:/bin")
    image["HOME"] = str(tmp_path / "home")
    elsewhere = tmp_path / "app"
    elsewhere.mkdir()
    served = subprocess.run(["uvicorn"], cwd=elsewhere, env=image, capture_output=True,
                            text=True)
    assert served.returncode == 0 and "serving from 3.10" in served.stdout, served.stderr
    plain = subprocess.run([python310, "-c", "import torch, fastapi, funasr; "
                            "print(torch.VERSION)"], cwd=elsewhere, env=image,
                           capture_output=True, text=True)
    assert plain.returncode == 0 and plain.stdout.strip() == "2.4.1+cu121", plain.stderr
    # The clients run from venvs of their own (in the seed they come with the env): the
    # image's variables, not its PYTHONPATH.
    clients_env = {k: v for k, v in image.items() if k != "PYTHONPATH"}
    hf_probe = ("from huggingface_hub import snapshot_download, hf_hub_download\n"
                "import os\nfolder = snapshot_download('pyannote/segmentation', "
                "local_files_only=True)\n"
                "print(sorted(os.listdir(folder)), hf_hub_download('pyannote/segmentation', "
                "'config.json'))\n")
    loaded = subprocess.run([str(hf_client), "-c", hf_probe], cwd=elsewhere, env=clients_env,
                            capture_output=True, text=True)
    assert loaded.returncode == 0 and "['config.json', 'pytorch_model.bin']" in loaded.stdout, \
        loaded.stderr
    ms_probe = ("from modelscope.hub.snapshot_download import snapshot_download\nimport os\n"
                "folder = snapshot_download('iic/campplus', local_files_only=True)\n"
                "print(open(os.path.join(folder, 'configuration.json')).read())\n")
    loaded = subprocess.run([str(ms_client), "-c", ms_probe], cwd=elsewhere, env=clients_env,
                            capture_output=True, text=True)
    assert loaded.returncode == 0 and "speaker-diarization" in loaded.stdout, loaded.stderr[-2000:]
