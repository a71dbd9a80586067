"""GC roots: what `gpulock gc` must leave in the store besides the kept generations.

`roots/models/<project>.json` lists the models a project's last sync laid out (the lock's
pinned entries). `roots/tmp/<writer>.json` is a running sync's temporary root: the package
keys and models it is about to use, written before it looks at the store and removed when it
ends. A killed sync's temporary root is ignored once its writer is gone (scratch.abandoned).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpulock.errors import GpulockError
from gpulock.scratch import abandoned, tag, write_atomic
from gpulock.store import Store


@dataclass
class Live:
    """Package keys and pinned models (as locked dicts) that must stay."""

    pkgs: set[str] = field(default_factory=set)
    models: list[dict[str, Any]] = field(default_factory=list)


def _write(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, sort_keys=True))


@contextmanager
def temporary(store: Store, pkgs: Sequence[str] = (),
              models: Sequence[dict[str, Any]] = ()) -> Iterator[Path]:
    """Root `pkgs` and `models` for as long as the block runs."""
    path = store.base / "roots" / "tmp" / f"{tag()}.json"
    _write(path, {"pkgs": sorted(pkgs), "models": list(models)})
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def record_models(store: Store, project: str, models: Sequence[dict[str, Any]]) -> None:
    _write(store.base / "roots" / "models" / f"{project}.json", {"models": list(models)})


def forget_models(store: Store, project: str) -> None:
    (store.base / "roots" / "models" / f"{project}.json").unlink(missing_ok=True)


def temporary_roots(store: Store) -> Live:
    """What running syncs have rooted; abandoned roots are dropped on the way."""
    live = Live()
    folder = store.base / "roots" / "tmp"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if abandoned(path):
            path.unlink(missing_ok=True)
            continue
        data = _read(path)
        live.pkgs.update(data.get("pkgs", []))
        live.models.extend(data.get("models", []))
    return live


def model_roots(store: Store) -> list[dict[str, Any]]:
    folder = store.base / "roots" / "models"
    found: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        found.extend(_read(path).get("models", []))
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}  # its sync just finished
    except ValueError:
        data = None  # roots are only ever renamed into place: this one was edited by hand
    if not isinstance(data, dict):
        raise GpulockError(f"the GC root {path} is damaged; fix or remove it (nothing was "
                           "collected)")
    return data
