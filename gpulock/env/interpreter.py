"""Finding the target's CPython on this machine.

Builds (and, on the pod, environments) must run on the lock's Python minor version. uv's
discovery is asked first; pyenv installs are looked up directly because a pyenv shim for
a version that is installed but not selected makes uv's search fail outright.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from gpulock.errors import GpulockError

if TYPE_CHECKING:
    from gpulock.store import Store

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


# The found interpreter's version and its base install: a venv's python (uv finds the active
# or nearest .venv first; gpulock's own, say) would break every env when that venv goes.
# 3.10's sys._base_executable still names the venv's python, hence base_prefix first.
_BASE_PYTHON = """\
import os, platform, sys
base = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
if not os.path.isfile(base):
    base = getattr(sys, "_base_executable", sys.executable)
print(platform.python_version())
print(os.path.realpath(base))
"""


def find_interpreter(version: str, store: Store | None = None, *,
                     platform: str = "linux_x86_64", install: bool = False,
                     log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
                     ) -> tuple[str, str]:
    """The target's CPython (its base install) and full version.

    First the one uv installed into `store` (pythons.managed: a pod that synced with
    --install-python keeps using it, as do the other projects on the volume); else, when
    `install`, uv installs it there now; else this machine's own, remembered in this
    machine's cache.

    Discovery runs subprocesses (hundreds of execs through pyenv shims); a no-op sync must
    not pay that, so the answer is kept and trusted while the binary's mtime is unchanged.
    It is kept in the user's cache, not on the shared volume: it describes this machine, and
    a path planted in the store must never become the interpreter sync runs (the store's
    own interpreters are taken only from where uv installs them, see pythons.py).
    """
    if store is not None:
        from gpulock.env import pythons

        arch = pythons.arch_of(platform)
        found = pythons.managed(store.layout, version, arch)
        if found is not None:
            return found
        if install:
            return pythons.install(store, version, arch, log)
    from gpulock.cache import INTERPRETERS, Cache

    cache = Cache()
    hit = cache.get_json(INTERPRETERS, version)
    if isinstance(hit, dict):
        try:
            if os.stat(hit["path"]).st_mtime_ns == hit["mtime_ns"]:
                return str(hit["path"]), str(hit["version"])
        except (OSError, KeyError, TypeError):
            pass
    python = find_python(version)
    if python is None:
        raise GpulockError(f"CPython {version}, the lock's target, is not installed on this "
                           "machine: run 'gpulock sync --install-python' to install it into "
                           f"the store with uv (or 'uv python install {version}')")
    full, python = subprocess.run([python, "-c", _BASE_PYTHON], capture_output=True, text=True,
                                  check=True).stdout.split("\n")[:2]
    cache.put_json(INTERPRETERS, version, {"path": python, "version": full,
                                             "mtime_ns": os.stat(python).st_mtime_ns})
    return python, full
