"""Interpreters on the volume: the target's CPython, installed by uv into the store.

A serverless image's own Python is often another minor version than the environment's, or
there is none. `sync --install-python` (or `[project] install-python = true`) runs
`uv python install` with its install folder set to the store's `python/` folder, so the
interpreter lives on the volume beside the packages, shared by every project that targets
it, and the generations built on it link their `bin/python` to it.

uv does the download and checks the archive against the sha256 its downloads list names
(python-build-standalone's, or the list `UV_PYTHON_DOWNLOADS_JSON_URL` names; a mirror set
with `UV_PYTHON_INSTALL_MIRROR` serves the same archives). Those settings, like the rest
of the caller's environment, reach uv unchanged; gpulock sets only where uv installs
(`UV_PYTHON_INSTALL_DIR`), where it keeps its cache while it runs (a folder of the store's
`tmp/`, removed after), and `--no-bin`, so nothing is written outside the store.

The store is on a shared volume, so an interpreter found there is used only when it is
where uv puts one and nothing else: a regular file `python<X.Y>` in a real folder
`python/cpython-<X.Y.Z>-linux-<arch>-gnu/bin/` (no link anywhere on the way, and resolved
it is still inside `python/`). uv's own links beside them (`cpython-3.10-linux-...`, which
name the newest patch of a minor) are never followed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from gpulock.credentials import redact
from gpulock.errors import GpulockError
from gpulock.store import Store
from gpulock.store.layout import Layout

Log = Callable[[str], None]

_FOLDER = re.compile(r"cpython-(3\.\d{1,2}\.\d{1,3})-linux-([a-z0-9_]+)-gnu")
_PRINT_VERSION = "import platform; print(platform.python_version())"


def arch_of(platform: str) -> str:
    """The architecture of a gpu.toml platform (`linux_x86_64` -> `x86_64`)."""
    return platform.split("_", 1)[1]


def managed(layout: Layout, version: str, arch: str) -> tuple[str, str] | None:
    """The store's uv-installed CPython for `version` ("3.10": its newest patch there, or
    "3.10.13": that one) and `arch`, as (interpreter path, full version); None when the
    store has none that passes the checks in this module's docstring."""
    wanted = version if version.count(".") == 2 else None
    minor = ".".join(version.split(".")[:2])
    try:
        names = os.listdir(layout.python) if _real_folder(layout.python) else []
    except OSError:
        return None
    found: list[tuple[tuple[int, ...], str]] = []
    for name in names:
        match = _FOLDER.fullmatch(name)
        if not match or match.group(2) != arch:
            continue
        full = match.group(1)
        if (wanted and full != wanted) or ".".join(full.split(".")[:2]) != minor:
            continue
        if _sound(layout, layout.interpreter(full, arch)):
            found.append((tuple(int(part) for part in full.split(".")), full))
    if not found:
        return None
    full = max(found)[1]
    return str(layout.interpreter(full, arch)), full


def _real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _sound(layout: Layout, interpreter: Path) -> bool:
    """Whether `interpreter` is a regular executable file reached through real folders
    only, from `python/` down, and lies inside `python/` once resolved."""
    folder = interpreter.parent
    for path in (layout.python, folder.parent, folder):
        if not _real_folder(path):
            return False
    try:
        mode = os.lstat(interpreter).st_mode
    except OSError:
        return False
    if not stat.S_ISREG(mode) or not mode & stat.S_IXUSR:
        return False
    top = os.path.realpath(layout.python)
    return os.path.realpath(interpreter).startswith(top + os.sep)


def install(store: Store, version: str, arch: str, log: Log) -> tuple[str, str]:
    """Install CPython `version` for `arch` into the store with uv; return (interpreter
    path, full version). Nothing is written outside the store; a failure is one sentence,
    with credentials and query strings left out of any URL uv names."""
    from uv import find_uv_bin

    layout = store.layout
    folder = layout.folder(layout.python)
    request = f"cpython-{version}-linux-{arch}-gnu"
    log(f"Installing CPython {version} into {folder} with uv")
    cache = store.work_dir("uv-cache")
    environ = {key: value for key, value in os.environ.items()
               if key not in ("UV_PYTHON_CACHE_DIR", "UV_PYTHON_BIN_DIR")}
    environ.update(UV_PYTHON_INSTALL_DIR=str(folder), UV_CACHE_DIR=str(cache),
                   UV_NO_PROGRESS="1")
    try:
        ran = subprocess.run([find_uv_bin(), "python", "install", "--no-bin", request],
                             capture_output=True, text=True, env=environ, check=False)
    except OSError as exc:
        raise GpulockError(f"cannot run uv to install CPython {version}: {exc.strerror}"
                           ) from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    found = managed(layout, version, arch)
    if ran.returncode != 0 and found is None:
        raise GpulockError(f"uv could not install CPython {version} into {folder}: "
                           f"{_reason(ran.stderr)}; no interpreter was installed")
    if found is None:
        raise GpulockError(f"uv said it installed CPython {version}, but {folder} holds no "
                           f"{request.replace(version, version + '*')} folder with a "
                           "bin/python that gpulock can use")
    python, full = found
    said = _runs(python)
    if said != full:
        problem = (f"says it is CPython {said}, not the {full} its folder names"
                   if re.fullmatch(r"\d+\.\d+\.\d+\S*", said)
                   else f"does not run on this machine ({said or 'it printed nothing'})")
        raise GpulockError(f"the CPython uv installed at {python} {problem}; remove "
                           f"{Path(python).parents[1]} and check the downloads list or "
                           "mirror it came from")
    log(f"Installed CPython {full} at {python}")
    return python, full


def _runs(python: str) -> str:
    """What `python` says its version is, or why it did not run."""
    try:
        out = subprocess.run([python, "-c", _PRINT_VERSION], capture_output=True, text=True,
                             timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if out.returncode != 0:
        return " ".join((out.stderr.strip().splitlines() or ["(no output)"])[-1].split())
    return out.stdout.strip()


_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s`'\"<>]+", re.IGNORECASE)


def _scrub(text: str) -> str:
    """`text` with every URL's user:password and query string (a token) left out."""
    return _URL.sub(lambda m: redact(m.group()).split("?", 1)[0].split("#", 1)[0], text)


def _reason(stderr: str) -> str:
    """uv's error and its causes, as one clause: `error: X` / `cause: Y` -> `X: Y`."""
    lines = [line.strip() for line in stderr.splitlines()]
    said = [line.split(":", 1)[1].strip() for line in lines
            if line.startswith(("error:", "cause:", "Caused by:"))]
    said = [part.rstrip(".") for part in said if part]
    # uv repeats the innermost cause with and without its context: keep the longer one.
    said = [part for index, part in enumerate(said)
            if not any(part in other for other in said[:index])]
    if any(part.startswith("Hash mismatch") for part in said):
        said.append("the downloaded archive's sha256 is not the one the downloads list "
                    "names")
    text = ": ".join(said) or " ".join((lines or ["uv printed nothing"])[-1].split())
    return _scrub(text)
