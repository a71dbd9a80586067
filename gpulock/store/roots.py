"""GC roots: what `gpulock gc` must leave in the store besides the kept generations.

`roots/models/<project>.json` lists the models a project's last sync laid out (the lock's
pinned entries). `roots/tmp/<writer>.json` is a running sync's temporary root: the package
keys, the lock digest of the generation it builds and the models it is about to use,
written before it looks at the store and removed when it ends. While the sync runs, its
root's time is renewed every `BEAT_SECONDS`: the root is the sync's heartbeat, which keeps
its work in tmp/ (a long build, a paused download) its own for other hosts too. A killed
sync's temporary root is ignored once its writer is gone (scratch.abandoned).

While gc decides what goes it announces itself in `roots/gc/<writer>`, beating the file's
time as it works. A sync that has just written its root waits while such an announcement is
live: either gc read the roots after the sync wrote its own (and keeps what it names), or the
sync waits until gc has finished moving things. No flock is needed (network volumes ignore
it), and a killed gc holds nobody up: its announcement goes stale in `BEAT_STALE` seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpulock.errors import GpulockError
from gpulock.safeopen import Unsafe, read_json
from gpulock.store import Store
from gpulock.store.scratch import abandoned, alive_writers, tag, write_atomic

BEAT_SECONDS = 5.0  # a gc's mark and a sync's root are renewed this often
BEAT_STALE = 60.0  # a gc mark older (or newer: another clock) than this is a dead gc's
_ROOT_LIMIT = 256 * 2**20  # a root lists every file of the models it pins


@dataclass
class Live:
    """Package keys, lock digests of generations being built, and pinned models that stay."""

    pkgs: set[str] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)
    models: list[dict[str, Any]] = field(default_factory=list)


def _write(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, sort_keys=True))


@contextmanager
def temporary(store: Store, pkgs: Sequence[str] = (), digest: str | None = None,
              models: Sequence[dict[str, Any]] = ()) -> Iterator[Path]:
    """Root `pkgs`, the generation of lock `digest` and `models` while the block runs."""
    layout = store.layout
    path = layout.folder(layout.tmp_roots) / f"{tag()}.json"
    _write(path, {"pkgs": sorted(pkgs), "digests": [digest] if digest else [],
                  "models": list(models)})
    done = threading.Event()
    beating = threading.Thread(target=_beat, args=(path, done), daemon=True)
    beating.start()
    try:
        _wait_for_collectors(store)
        yield path
    finally:
        done.set()
        path.unlink(missing_ok=True)


def _beat(path: Path, done: threading.Event) -> None:
    while not done.wait(BEAT_SECONDS):
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)


def record_models(store: Store, project: str, models: Sequence[dict[str, Any]]) -> None:
    _write(store.layout.ready(store.layout.model_root(project)), {"models": list(models)})


def project_models(store: Store, project: str) -> list[Any] | None:
    """The models a project's last sync laid out (its lock's entries), or None."""
    path = store.layout.model_root(project)
    if not store.layout.present(path):
        return None
    models = _read(path).get("models")
    return models if isinstance(models, list) else None


def forget_models(store: Store, project: str) -> None:
    store.layout.model_root(project).unlink(missing_ok=True)


def temporary_roots(store: Store) -> Live:
    """What running syncs have rooted (roots of writers that are gone are gc's to remove)."""
    live = Live()
    alive = alive_writers(store.layout.tmp_roots)
    for path in _listing(store.layout.tmp_roots, ".json"):
        if abandoned(path, alive):
            continue
        data = _read(path)
        live.pkgs.update(_strings(path, data, "pkgs"))
        live.digests.update(_strings(path, data, "digests"))
        live.models.extend(data.get("models", []))
    return live


def model_roots(store: Store) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in _listing(store.layout.model_roots, ".json"):
        models = _read(path).get("models", [])
        if not isinstance(models, list):
            raise _damaged(path)
        found.extend(models)
    return found


@contextmanager
def collecting(store: Store) -> Iterator[Callable[[], None]]:
    """Announce a running gc for as long as the block runs; yield how to say it is alive."""
    layout = store.layout
    path = layout.folder(layout.collectors) / tag()
    path.touch()
    last = time.monotonic()

    def beat() -> None:
        nonlocal last
        if time.monotonic() - last >= BEAT_SECONDS:
            last = time.monotonic()
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    try:
        yield beat
    finally:
        path.unlink(missing_ok=True)


def _wait_for_collectors(store: Store) -> None:
    """Return once no gc is deciding what goes (a sync's new root is then never missed)."""
    said = False
    while live := [p for p in _listing(store.layout.collectors, "") if _collecting(p)]:
        if not said:
            print(f"waiting for gpulock gc ({live[0].name}) to finish choosing what to remove",
                  file=sys.stderr)
            said = True
        time.sleep(0.05)


def _collecting(path: Path) -> bool:
    try:
        fresh = abs(time.time() - path.lstat().st_mtime) < BEAT_STALE
    except FileNotFoundError:
        return False
    return fresh and not abandoned(path)


def _listing(folder: Path, suffix: str) -> list[Path]:
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in sorted(names) if n.endswith(suffix) and not n.startswith(".")]


def _strings(path: Path, data: dict[str, Any], key: str) -> list[str]:
    values = data.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _damaged(path)
    return values


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, _ROOT_LIMIT)
    except FileNotFoundError:
        return {}  # its sync just finished
    except (OSError, Unsafe):
        # A link, FIFO or folder planted where a root goes, or a file edited by hand (roots
        # are only ever renamed into place).
        data = None
    if not isinstance(data, dict):
        raise _damaged(path)
    return data


def _damaged(path: Path) -> GpulockError:
    """A root that cannot be read stops gc before it removes anything, and the advice never
    costs data: a project's model root removed would let gc take files that may exist
    nowhere else (the share they came from gone), so it is written again instead."""
    if path.parent.name == "models":
        return GpulockError(f"the GC root {path} is damaged, so gc removes nothing: run "
                            f"'gpulock sync' in project '{path.stem}' to write it again (not "
                            "'rm': gc would then take that project's model files)")
    return GpulockError(f"the GC root {path} of a running sync is damaged, so gc removes "
                        "nothing; remove it once that sync has ended")
