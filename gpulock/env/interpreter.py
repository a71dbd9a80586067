"""Finding the target's CPython on this machine.

Builds (and, on the pod, environments) must run on the lock's Python minor version. uv's
discovery is asked first; pyenv installs are looked up directly because a pyenv shim for
a version that is installed but not selected makes uv's search fail outright.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

_PRINT_MINOR = "import sys; print('%d.%d' % sys.version_info[:2])"


def _runs(executable: str, minor: str) -> bool:
    try:
        out = subprocess.run([executable, "-c", _PRINT_MINOR], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == minor


@cache
def find_python(version: str) -> str | None:
    """The path of a CPython matching `version` ("3.10" or "3.10.12"), or None."""
    from uv import find_uv_bin

    minor = ".".join(version.split(".")[:2])
    try:
        uv: str | None = find_uv_bin()
    except FileNotFoundError:
        uv = None  # gpulock installed without its uv binary (a worker's image)
    if uv is not None:
        found = subprocess.run([uv, "python", "find", "--no-python-downloads", version],
                               capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    elif version.count(".") < 2:  # PATH's pythonX.Y, as uv's discovery would find it
        on_path = shutil.which(f"python{minor}")
        if on_path and _runs(on_path, minor):
            return on_path
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    prefix = version if version.count(".") == 2 else f"{version}."
    candidates = sorted((p for p in root.glob(f"{prefix}*") if p.name.startswith(prefix)),
                        key=lambda p: [int(x) for x in p.name.split(".") if x.isdigit()],
                        reverse=True) if root.is_dir() else []
    for folder in candidates:
        executable = folder / "bin" / f"python{minor}"
        if executable.is_file() and _runs(str(executable), minor):
            return str(executable)
    return None
