"""The model clients real projects pin, each in a venv of its own, for offline-load tests.

Venvs are made with uv from PyPI once per test session; where PyPI cannot be reached, the
test that needs one skips and says so.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from uv import find_uv_bin

# What each client needs to import and load offline. modelscope 1.x declares far more than
# its hub needs (torch-free, but datasets, oss2...): only what `modelscope.hub` imports.
CLIENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "huggingface_hub 0.14.1": (("huggingface_hub==0.14.1",), ()),
    "huggingface_hub 0.17.3": (("huggingface_hub==0.17.3",), ()),
    "huggingface_hub 0.19.4": (("huggingface_hub==0.19.4",), ()),
    "huggingface_hub 0.20.3": (("huggingface_hub==0.20.3",), ()),
    "transformers 4.35.0": (("transformers==4.35.0",), ()),
}
_MODELSCOPE_HUB_NEEDS = ("addict", "gast", "pandas", "pyyaml", "requests", "simplejson",
                         "sortedcontainers", "tqdm", "yapf", "packaging", "filelock",
                         "setuptools", "urllib3")
for _version in ("1.9.5", "1.11.0", "1.14.0", "1.20.0"):
    CLIENTS[f"modelscope {_version}"] = (_MODELSCOPE_HUB_NEEDS, (f"modelscope=={_version}",))


def client_python(name: str, root: Path) -> Path:
    """The python of a venv holding client `name` (see CLIENTS), made once under `root`."""
    requirements, without_deps = CLIENTS[name]
    folder = root / hashlib.sha256(name.encode()).hexdigest()[:16]
    python = folder / "bin" / "python"
    if (folder / "ready").exists():
        return python
    uv = find_uv_bin()
    subprocess.run([uv, "venv", "-q", "--python", sys.base_prefix + "/bin/python3", str(folder)],
                   check=True, capture_output=True)
    for packages, flags in ((requirements, []), (without_deps, ["--no-deps"])):
        if not packages:
            continue
        done = subprocess.run([uv, "pip", "install", "-q", "--python", str(python), *flags,
                               *packages], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"{name} could not be installed from PyPI: "
                        f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    (folder / "ready").touch()
    return python
