"""The no-op sync, decided from bytes before anything heavy is imported.

A pod's sync is most often a no-op: the lock is the one its current generation was built
from. That is decidable from three small files: gpu.toml (its content hash must be the
lock's `manifest-hash`, or the lock is stale), the lock (its bytes and the interpreter give
the generation's `lock_digest`) and the current generation's record, once the store's own
folders are checked to be real folders. When any of them says anything else, or cannot
be read, or the lock has models (a sync re-checks their views and extracted trees), the full
sync decides instead: this path may only ever say "nothing to do" when the full path would
say it too.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from gpulock.places import (
    BASE,
    CURRENT,
    ENVS,
    GENERATION_FORMAT,
    GENERATION_RECORD,
    MODEL_ROOTS,
    PYTHON,
    RECORD_LIMIT,
    ROOTS,
)
from gpulock.safeopen import Unsafe, read_json

_GENERATION = re.compile(r"gen-\d+")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def lock_digest(lock_text: str, python: str) -> str:
    """What a generation records of the lock and interpreter it was built from."""
    return hashlib.sha256((lock_text + "\0" + python).encode()).hexdigest()


def current_format(record: dict[str, Any]) -> bool:
    """Whether a generation's record says it has this gpulock's layout (or a newer one)."""
    made = record.get("format", 1)
    return isinstance(made, int) and made >= GENERATION_FORMAT


def nothing_to_do(manifest_path: Path, lock_path: Path, store_root: Path | None,
                  models: bool = True) -> str | None:
    """The line a sync with nothing to do prints, or None when the full sync must look."""
    try:
        return _decide(manifest_path, lock_path, store_root, models)
    except (OSError, Unsafe, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _decide(manifest_path: Path, lock_path: Path, store_root: Path | None,
            models: bool) -> str | None:
    from gpulock.manifest_hash import content_hash, tomllib

    manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    lock_text = lock_path.read_text(encoding="utf-8")
    ours = tomllib.loads(lock_text)["tool"]["gpulock"]
    if ours["manifest-hash"] != content_hash(manifest):
        return None
    if "targets" in manifest:
        return None  # which target this pod runs takes its driver: the full path decides
    project = manifest["project"]
    name, python = project["name"], project["python"]
    if not _PROJECT.fullmatch(name) or project.get("install-python", project.get(
            "install_python")) or project.get("local-start"):
        return None  # the store's interpreter, a generation's pack: the full path decides
    from gpulock.locations import default_store

    root = (store_root or default_store(manifest_path.parent)).absolute()
    base = root / BASE
    if os.path.lexists(base / PYTHON) or not _sound_store(root):
        return None  # an interpreter sync would prefer, or a store the full path refuses
    record = _current_record(base / ENVS / name)
    interpreter = _cached_interpreter(python)
    if record is None or interpreter is None or record.get("python") != interpreter:
        return None
    if record.get("lock_digest") != lock_digest(lock_text, interpreter) \
            or not current_format(record):
        return None
    if models and (ours.get("models") or os.path.lexists(base / ROOTS / MODEL_ROOTS /
                                                         f"{name}.json")):
        return None  # views and extracted trees to re-check, or models to forget
    return (f"'{name}' is up to date: generation {record['number']}, "
            f"{len(record['packages'])} packages")


def _sound_store(root: Path) -> bool:
    """Whether the full sync would open this store: no newer layout, no planted links."""
    from gpulock.locations import sound_store

    if any(n.startswith("v") and n[1:].isdigit() and int(n[1:]) > 1 for n in os.listdir(root)):
        return False
    return sound_store(root / BASE)


def _current_record(project_envs: Path) -> dict[str, Any] | None:
    if not stat.S_ISDIR(os.lstat(project_envs).st_mode):
        return None  # a link or file planted where the project's folder goes
    name = os.readlink(project_envs / CURRENT)
    if not _GENERATION.fullmatch(name) or os.path.islink(project_envs / name):
        return None
    # Read as every store file is (the volume is shared): a FIFO planted here must not hang
    # the sync that merely asks whether it has anything to do.
    record = read_json(project_envs / name / GENERATION_RECORD, RECORD_LIMIT)
    return record if isinstance(record, dict) else None


def _cached_interpreter(version: str) -> str | None:
    """The interpreter the full sync would take from this machine's cache, if still valid."""
    from gpulock.cache import INTERPRETERS, Cache

    hit = Cache().get_json(INTERPRETERS, version)
    if not isinstance(hit, dict) or os.stat(hit["path"]).st_mtime_ns != hit["mtime_ns"]:
        return None
    return str(hit["path"])
