"""The clients a lock pins load the synced models offline: old releases as well as new.

transformers 4.35 brings huggingface_hub 0.17.3, which reads HUGGINGFACE_HUB_CACHE, not
HF_HUB_CACHE; modelscope 1.x before modelscope-hub reads `<owner>/<name>/` (and later
`hub/<owner>/<name___>`) with its pickled index files, not modelscope-hub's snapshots. Each
client runs from a venv of its own (tests/support/clients), in a fresh process, with the
hub stopped and only what `gpulock env` exports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.support.clients import client_python

HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
FILES = {"config.json": json.dumps({"model_type": "bert", "hidden_size": 8,
                                    "num_attention_heads": 2}).encode(),
         "model.safetensors": os.urandom(200_000), "tokenizer/vocab.json": b'{"a": 0}'}
LISTING = ("import json, os\n"
           "def listing(folder):\n"
           "    found = {}\n"
           "    for root, _, names in os.walk(folder):\n"
           "        for n in names:\n"
           "            if not n.startswith('.'):\n"
           "                p = os.path.join(root, n)\n"
           "                found[os.path.relpath(p, folder)] = open(p, 'rb').read().hex()\n"
           "    return found\n")


@pytest.fixture(scope="session")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients")


def synced_exports(project: Project, models: str) -> dict[str, str]:
    project.write(f'[project]\nname = "m"\npython = "{HOST_PYTHON}"\n'
                  f'[groups.main]\npackages = []\n{models}')
    store = str(project.root / "store")
    result = project.gpulock("sync", "--store", store)
    assert result.code == 0, result.err
    return json.loads(project.gpulock("env", "--store", store, "--format", "json").out)


def offline(python: Path, probe: str, exports: dict[str, str], home: Path) -> object:
    """What `probe` prints (json, last line), run by `python` with only the exports."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONNOUSERSITE": "1",
           **{k: v for k, v in exports.items() if k not in ("PATH", "PYTHONPATH")}}
    result = subprocess.run([str(python), "-c", LISTING + probe], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Before 0.20, snapshot_download asks the Hub even with HF_HUB_OFFLINE=1 unless it is given
# local_files_only=True (hf_hub_download, and so from_pretrained, need only the variable);
# from 0.20 on the variable alone is enough.
@pytest.mark.parametrize("client, asked", [("huggingface_hub 0.14.1", "local_files_only=True"),
                                           ("huggingface_hub 0.17.3", "local_files_only=True"),
                                           ("huggingface_hub 0.19.4", "local_files_only=True"),
                                           ("huggingface_hub 0.20.3", "")])
def test_an_old_huggingface_hub_loads_the_synced_snapshot_offline(hub, project, clients,
                                                                 tmp_path, client, asked):
    python = client_python(client, clients)
    commit = hub.repo("org/tiny").commit(FILES)
    exports = synced_exports(project, '[models.tiny]\nsource = "hf://org/tiny"\n')
    hub.close()
    seen = offline(python, "from huggingface_hub import snapshot_download, hf_hub_download\n"
                           f"folder = snapshot_download('org/tiny', {asked})\n"
                           "one = hf_hub_download('org/tiny', 'config.json')\n"
                           "print(json.dumps([folder, listing(folder), one]))\n",
                   exports, tmp_path)
    folder, files, one = seen  # type: ignore[misc]
    assert folder.endswith(f"models--org--tiny/snapshots/{commit}")
    assert files == {p: d.hex() for p, d in FILES.items()}
    assert Path(one).read_bytes() == FILES["config.json"]


def test_transformers_4_35_from_pretrained_reads_the_synced_snapshot_offline(hub, project,
                                                                             clients,
                                                                             tmp_path):
    python = client_python("transformers 4.35.0", clients)
    hub.repo("org/tiny").commit(FILES)
    exports = synced_exports(project, '[models.tiny]\nsource = "hf://org/tiny"\n')
    hub.close()
    seen = offline(python, "from transformers import AutoConfig\n"
                           "config = AutoConfig.from_pretrained('org/tiny')\n"
                           "print(json.dumps([config.model_type, config.hidden_size]))\n",
                   exports, tmp_path)
    assert seen == ["bert", 8]


# Up to 1.13 the client reads <owner>/<name>; from 1.14 a '.' in the name is '___' on disk;
# by 1.20 the model cache root is MODELSCOPE_CACHE/hub. Dotted names (Qwen2.5-0.5B) are
# where the layouts part.
@pytest.mark.parametrize("version, repo", [("1.9.5", "Qwen/Qwen2.5-0.5B"),
                                           ("1.11.0", "org/tiny"),
                                           ("1.14.0", "Qwen/Qwen2.5-0.5B"),
                                           ("1.20.0", "Qwen/Qwen2.5-0.5B")])
def test_modelscope_1_x_loads_the_synced_model_offline(modelscope, project, clients, tmp_path,
                                                       version, repo):
    python = client_python(f"modelscope {version}", clients)
    modelscope.repos[repo] = {"master": FILES}
    exports = synced_exports(project, f'[models.tiny]\nsource = "ms://{repo}"\n')
    modelscope.close()
    seen = offline(python, "from modelscope.hub.snapshot_download import snapshot_download\n"
                           f"folder = snapshot_download('{repo}', local_files_only=True)\n"
                           "print(json.dumps([folder, listing(folder)]))\n",
                   exports, tmp_path)
    folder, files = seen  # type: ignore[misc]
    assert Path(folder).is_relative_to(exports["MODELSCOPE_CACHE"])
    assert files == {p: d.hex() for p, d in FILES.items()}
    # That client rewrites its .mdl when it loads: the store must still verify.
    checked = project.gpulock("verify", "--store", str(project.root / "store"))
    assert checked.code == 0, checked.err
