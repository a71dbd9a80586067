"""`gpulock gc`: remove what no kept generation, root or running sync references.

Kept: per project the current generation and the `keep` newest ones; the store entries
they link; the models each project's last sync laid out (roots/models/); whatever a
running sync has rooted (roots/tmp/). Removed: other generations, unreferenced entries,
blobs and model views, and work in progress whose writer is gone.

No lock makes this safe against a sync starting meanwhile (network volumes ignore flock).
Instead a dead entry is first renamed out of `pkgs/` (a sync that looks now sees it absent
and fetches it again), then the temporary roots are read once more: an entry a sync rooted
in between is renamed back before anything is deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpulock import generation, roots
from gpulock.models import from_dict
from gpulock.scratch import abandoned, tag
from gpulock.store import Store
from gpulock.views import HubRepo, fast_record, hf_cache, modelscope_cache

Log = Callable[[str], None]


@dataclass
class Collected:
    generations: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    blobs: int = 0
    other: list[str] = field(default_factory=list)
    freed: int = 0


def collect(store: Store, keep: int = 3, dry_run: bool = False,
            log: Log = lambda _line: None) -> Collected:
    result = Collected()
    trash = store.tmp / f"gc.{tag()}"

    def remove(path: Path, label: str | None = None) -> None:
        result.freed += _size(path)
        if label:
            log(f"{'would remove' if dry_run else 'removing'} {label}")
        if dry_run:
            return
        if path.is_dir() and not path.is_symlink():
            trash.mkdir(parents=True, exist_ok=True)
            moved = trash / f"{len(list(trash.iterdir()))}-{path.name}"
            os.rename(path, moved)  # gone from view at once; deleted below
        else:
            path.unlink(missing_ok=True)

    kept = _collect_generations(store, keep, remove, result)
    rooted = roots.temporary_roots(store)
    live_pkgs = {key for gen in kept for key in gen.packages.values()} | rooted.pkgs
    models = roots.model_roots(store) + rooted.models
    _collect_entries(store, live_pkgs, dry_run, trash, result, log)
    _collect_models(store, models, remove, result)
    _collect_scratch(store, remove, result)
    if not dry_run:
        shutil.rmtree(trash, ignore_errors=True)
    return result


def _collect_generations(store: Store, keep: int, remove: Callable[[Path, str | None], None],
                         result: Collected) -> list[generation.Generation]:
    kept: list[generation.Generation] = []
    envs = store.base / "envs"
    for folder in sorted(envs.iterdir()) if envs.is_dir() else []:
        project = folder.name
        now = generation.current(store, project)
        generations = generation.all_generations(store, project)
        newest = {g.number for g in generations[-keep:]} if keep > 0 else set()
        for gen in generations:
            if gen.number in newest or (now and gen.number == now.number):
                kept.append(gen)
            else:
                remove(gen.path, f"{project} generation {gen.number}")
                result.generations.append(f"{project}/gen-{gen.number}")
        for leftover in folder.glob(".*"):  # half-built generations, stray `current` links
            if abandoned(leftover):
                remove(leftover, None)
                result.other.append(str(leftover))
    return kept


def _collect_entries(store: Store, live: set[str], dry_run: bool, trash: Path,
                     result: Collected, log: Log) -> None:
    pkgs = store.base / "pkgs"
    dead = sorted(p.name for p in pkgs.iterdir() if p.name not in live) if pkgs.is_dir() else []
    if not dead:
        return
    for key in dead:
        log(f"{'would remove' if dry_run else 'removing'} package entry {key}")
    if dry_run:
        result.entries = dead
        result.freed += sum(_size(pkgs / key) for key in dead)
        return
    trash.mkdir(parents=True, exist_ok=True)
    moved: dict[str, Path] = {}
    for key in dead:
        with contextlib.suppress(FileNotFoundError):
            os.rename(pkgs / key, trash / key)
            moved[key] = trash / key
    # A sync that rooted an entry after the first look must find it again.
    for key in roots.temporary_roots(store).pkgs & moved.keys():
        with contextlib.suppress(OSError):  # else the sync published its own copy already
            os.rename(moved.pop(key), pkgs / key)
    result.entries = sorted(moved)
    result.freed += sum(_size(path) for path in moved.values())


def _collect_models(store: Store, models: list[dict[str, Any]],
                    remove: Callable[[Path, str | None], None], result: Collected) -> None:
    pinned = [from_dict(m) for m in models]
    live_sha = {f.sha256 for m in pinned for f in m.files if f.sha256}
    live_git = {f.git_sha1 for m in pinned for f in m.files if f.git_sha1 and not f.sha256}
    git_index = store.base / "blobs" / "git-sha1"
    for link in _files(git_index):
        name = link.parent.name + link.name
        target = link.resolve()
        if name in live_git and target.is_file():
            live_sha.add(target.parent.name + target.name)
        else:
            remove(link, None)
    for blob in _files(store.base / "blobs" / "sha256"):
        sha = blob.parent.name + blob.name
        if sha not in live_sha:
            remove(blob, None)
            result.blobs += 1
            with contextlib.suppress(FileNotFoundError):
                fast_record(store, sha).unlink()
    # Views: hf snapshots, refs, trees and blob links of commits nothing pins any more.
    live_hf = {(HubRepo.of(m.source).folder, m.commit or "") for m in pinned
               if m.source.startswith("hf://")}
    live_etags = {str(f.etag) for m in pinned for f in m.files}
    for repo in _dirs(hf_cache(store)):
        for snapshot in _dirs(repo / "snapshots"):
            if (repo.name, snapshot.name) not in live_hf:
                remove(snapshot, f"snapshot {repo.name}@{snapshot.name[:12]}")
        for tree in _files(repo / "trees"):
            if (repo.name, tree.name.removesuffix(".json")) not in live_hf:
                remove(tree, None)
        for ref in _files(repo / "refs"):
            if (repo.name, ref.read_text().strip()) not in live_hf:
                remove(ref, None)
        for link in _files(repo / "blobs"):
            if link.name not in live_etags:
                remove(link, None)
        _prune_empty(repo)
    live_ms = {(m.source.removeprefix("ms://").replace("/", "--"), m.revision or "master")
               for m in pinned if m.source.startswith("ms://")}
    for repo in _dirs(modelscope_cache(store) / "models"):
        for snapshot in _dirs(repo / "snapshots"):
            if (repo.name, snapshot.name) not in live_ms:
                remove(snapshot, f"snapshot {repo.name}@{snapshot.name}")
        _prune_empty(repo)
    live_trees = {str(f.sha256) for m in pinned if m.extract for f in m.files}
    for tree in _dirs(store.base / "trees"):
        if tree.name not in live_trees:
            remove(tree, None)
    files = store.base / "files"
    for path in sorted(files.rglob("*")) if files.is_dir() else []:
        if path.is_symlink() and not path.exists():
            remove(path, None)  # its blob or tree was collected above


def _collect_scratch(store: Store, remove: Callable[[Path, str | None], None],
                     result: Collected) -> None:
    """Work in progress of writers that are gone: unpacks, builds, partial downloads."""
    for path in sorted(store.tmp.rglob("*")) if store.tmp.is_dir() else []:
        inside = path.relative_to(store.tmp).parts
        if any(part.startswith("gc.") for part in inside[:-1]) or not path.exists():
            continue
        if abandoned(path) and ("~" in path.name or path.suffix == ".lock"):
            remove(path, None)
            result.other.append(str(path))
    for folder in sorted(store.tmp.rglob("*"), reverse=True) if store.tmp.is_dir() else []:
        if folder.is_dir() and not folder.is_symlink():
            with contextlib.suppress(OSError):
                folder.rmdir()  # empty download folders
    # Views and blobs are built beside their final names, as dot-names that carry a writer.
    for root in (hf_cache(store), modelscope_cache(store), store.base / "trees",
                 store.base / "files", store.base / "blobs", store.base / "roots"):
        for folder, dirs, names in os.walk(root):
            for name in [*dirs, *names]:
                path = Path(folder) / name
                if name.startswith(".") and abandoned(path):
                    remove(path, None)
                    result.other.append(str(path))
            dirs[:] = [d for d in dirs if not d.startswith(".")]


def _files(folder: Path) -> Iterable[Path]:
    """Published files below `folder`; dot-names are work in progress (see _collect_scratch)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if (p.is_file() or p.is_symlink())
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def _prune_empty(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _size(path: Path) -> int:
    """Bytes a path holds on disk, not following links (a farm's links cost nothing)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except FileNotFoundError:
        return 0
    total = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def describe(result: Collected, dry_run: bool) -> str:
    size = result.freed / 2**20
    verb = "would free" if dry_run else "freed"
    return (f"{verb} {size:.1f} MiB: {len(result.generations)} generation(s), "
            f"{len(result.entries)} package entr{'y' if len(result.entries) == 1 else 'ies'}, "
            f"{result.blobs} model file(s), {len(result.other)} leftover(s) of killed syncs")


