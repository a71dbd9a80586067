"""The no-op sync, decided from bytes before anything heavy is imported.

A pod's sync is most often a no-op: the lock is the one its current generation was built
from. That is decidable from four small files: gpu.toml (its content hash must be the
lock's `manifest-hash`, or the lock is stale), the lock (its bytes and the interpreter give
the generation's `lock_digest`), the current generation's record, and the project's model
roots (the models its last sync laid out). When any of them says anything else, or cannot
be read, the full sync decides instead: this path may only ever say "nothing to do" when
the full path would say it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

_GENERATION = re.compile(r"gen-\d+")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def lock_digest(lock_text: str, python: str) -> str:
    """What a generation records of the lock and interpreter it was built from."""
    return hashlib.sha256((lock_text + "\0" + python).encode()).hexdigest()


def nothing_to_do(manifest_path: Path, lock_path: Path, store_root: Path | None,
                  models: bool = True) -> str | None:
    """The line a sync with nothing to do prints, or None when the full sync must look."""
    try:
        return _decide(manifest_path, lock_path, store_root, models)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _decide(manifest_path: Path, lock_path: Path, store_root: Path | None,
            models: bool) -> str | None:
    from gpulock.manifest_hash import content_hash, tomllib

    manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    lock_text = lock_path.read_text(encoding="utf-8")
    ours = tomllib.loads(lock_text)["tool"]["gpulock"]
    if ours["manifest-hash"] != content_hash(manifest):
        return None
    project = manifest["project"]
    name, python = project["name"], project["python"]
    if not _PROJECT.fullmatch(name) or project.get("install-python", project.get(
            "install_python")):
        return None  # the store's interpreter: the full path decides
    from gpulock.locations import default_store

    base = (store_root or default_store(manifest_path.parent)).absolute() / "v1"
    if os.path.lexists(base / "python"):
        return None  # the store may hold an interpreter sync would prefer
    record = _current_record(base / "envs" / name)
    interpreter = _cached_interpreter(python)
    if record is None or interpreter is None or record.get("python") != interpreter:
        return None
    if record.get("lock_digest") != lock_digest(lock_text, interpreter):
        return None
    locked_models = ours.get("models", [])
    if models and not _models_laid_out(base, name, locked_models):
        return None
    where = (f", {len(locked_models)} model(s) in {base / 'hf'}"
             if locked_models and models else "")
    return (f"'{name}' is up to date: generation {record['number']}, "
            f"{len(record['packages'])} packages{where}")


def _current_record(project_envs: Path) -> dict[str, Any] | None:
    name = os.readlink(project_envs / "current")
    if not _GENERATION.fullmatch(name) or os.path.islink(project_envs / name):
        return None
    record = json.loads((project_envs / name / "gpulock-generation.json").read_text())
    return record if isinstance(record, dict) else None


def _cached_interpreter(version: str) -> str | None:
    """The interpreter the full sync would take from this machine's cache, if still valid."""
    from gpulock.cache import Cache

    hit = Cache().get_json("interpreters", version)
    if not isinstance(hit, dict) or os.stat(hit["path"]).st_mtime_ns != hit["mtime_ns"]:
        return None
    return str(hit["path"])


def _models_laid_out(base: Path, project: str, locked: list[Any]) -> bool:
    """Whether the project's last sync laid out exactly the lock's models."""
    root = base / "roots" / "models" / f"{project}.json"
    if not locked:
        return not os.path.lexists(root)
    if os.path.islink(root):
        return False
    return bool(json.loads(root.read_text()).get("models") == locked)
