"""`gpulock verify`: re-check the store against the hashes recorded when it was filled.

Package entries are checked file by file against `gpulock-records.json` (sha256, or with
`fast` the xxh3 recorded beside it); model blobs against their own name (sha256) or their
xxh3 record; generations by whether their entries are all there and every link is one
gpulock made (into pkgs/, or `bin/python` to its interpreter); the model views by whether
every link leads into the store's blobs. Links and files that gpulock did not put in an
entry are damage too: a copy swapped in for an entry is found, not trusted (the checks of
one entry or blob: gpulock.store.integrity). What is found, repair.py mends.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gpulock.env import generation
from gpulock.errors import GpulockError
from gpulock.names import bytecode, hex_problem
from gpulock.places import CURRENT
from gpulock.store import Record, Store, listing
from gpulock.store.integrity import MAP_FROM, batches, check_blob, check_files

Log = Callable[[str], None]


@dataclass(frozen=True)
class Damage:
    kind: str  # "entry", "blob", "generation", "view", "tree" or "link" (a link or file
    # planted where the store only makes folders, or a FIFO where it only makes files)
    key: str  # entry key, blob sha256, project/gen-N, or a view's path under v1/
    problem: str


@dataclass
class Checked:
    entries: int = 0
    blobs: int = 0
    generations: int = 0
    files: int = 0
    bytes: int = 0
    damage: list[Damage] = field(default_factory=list)
    # Current generations that cannot start on this machine, and those that start only on a
    # fallback interpreter: what this machine lacks, not damage a repair could undo.
    cannot_start: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)


def check(store: Store, fast: bool = False, jobs: int = 8) -> Checked:
    result = Checked()
    result.damage += _planted(store)
    if result.damage:  # nothing below is read through a planted link
        return result
    pkgs = store.layout.pkgs
    keys = [p.name for p in listing.names(pkgs)]
    blobs = listing.blobs(store)
    # Reads and hashes release the GIL: threads use every core.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        work: list[tuple[str, list[Record]]] = []
        problems: dict[str, str] = {}
        for key, found in zip(keys, pool.map(lambda k: batches(store, k), keys),
                              strict=True):
            if isinstance(found, str):
                problems[key] = found
            else:
                work.extend(found)
        # Large files hash on the pool while this thread reads the small ones: threads
        # reading small files only fight over the GIL (measured: 0.48 s alone, 0.69 s in two).
        large = [item for item in work if item[1] and item[1][0].size >= MAP_FROM]
        futures = [pool.submit(check_files, store, *item, fast) for item in large]
        small = [item for item in work if not (item[1] and item[1][0].size >= MAP_FROM)]
        checked = [check_files(store, *item, fast) for item in small]
        checked += [future.result() for future in futures]
        for (key, _), (files, size, problem) in zip(small + large, checked, strict=True):
            result.files += files
            result.bytes += size
            if problem and key not in problems:
                problems[key] = problem
        result.entries = len(keys)
        result.damage += [Damage("entry", key, problems[key]) for key in sorted(problems)]
        for blob, (size, problem) in zip(
                blobs, pool.map(lambda b: check_blob(store, b, fast), blobs), strict=True):
            result.blobs += 1
            result.bytes += size
            if problem:
                result.damage.append(Damage("blob", blob.parent.name + blob.name, problem))
    known = {d.key for d in result.damage}
    result.damage += [d for d in _missing_blobs(store) if d.key not in known]
    damaged = {d.key for d in result.damage}
    for folder in listing.projects(store):
        result.damage += check_project(store, folder, damaged, result)
        _check_start(folder, result)
    result.damage += _check_views(store) + _check_indexes(store) + _check_trees(store)
    return result


def _planted(store: Store) -> list[Damage]:
    """Links where gpulock only ever makes real folders and files: an entry, a shard of
    blobs, an extracted tree, a download in progress (nothing is read through them); and
    in `tmp/models`, where gpulock makes only files, anything else (a FIFO there would
    block the next download of that file)."""
    layout = store.layout
    folders_only = (layout.pkgs, layout.blobs, layout.base / "blobs" / "xxh3", layout.git_blobs)
    found = []
    for folder in (*folders_only, layout.trees, layout.downloads, layout.model_parts):
        for name in sorted(os.listdir(folder)) if layout.present(folder) else []:
            path = folder / name
            if os.path.islink(path):
                problem = "is a symbolic link, which gpulock never makes there"
            elif folder in folders_only and not path.is_dir():
                problem = "is not a folder, and gpulock only makes folders there"
            elif folder == layout.model_parts and not _file_or_gone(path):
                problem = "is not a regular file, and gpulock only makes files there"
            else:
                continue
            found.append(Damage("link", os.path.relpath(path, layout.base), problem))
    return found


def _file_or_gone(path: Path) -> bool:
    """Whether `path` is a regular file, or gone (a download another sync just finished)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True


def _missing_blobs(store: Store) -> list[Damage]:
    """Files a synced model pins whose blob is gone (their views' links now dangle)."""
    from gpulock.sources import model_roots

    found = []
    try:
        models = model_roots(store)
    except GpulockError as exc:  # gc refuses to run on it too: say so, and check the rest
        return [Damage("root", os.path.relpath(store.layout.model_roots, store.layout.base),
                       f"a model root is damaged ({exc}); sync its project again, which "
                       "writes it anew (removed, gc would take that project's model files)")]
    for model in models:
        for file in model.files:
            if file.sha256 and not os.path.lexists(store.layout.blob(file.sha256)):
                found.append(Damage("blob", file.sha256, f"is missing: model '{model.name}' "
                                    f"pins it as {file.path}"))
    return found


def _check_start(folder: Path, result: Checked) -> None:
    """Whether the project's current generation can start here (its interpreter, or the
    fallback its scripts take; console scripts written for another store path)."""
    from gpulock.env.starts import how_it_starts

    now = None if os.path.islink(folder) else generation.current_in(folder)
    if now is None:
        return
    start = how_it_starts(now)
    if not start.runs:
        result.cannot_start.append(f"{folder.name}: {start.problem}")
    elif start.problem:
        result.fallbacks.append(f"{folder.name}: {start.problem}")


def _check_trees(store: Store) -> list[Damage]:
    """Extracted archives against their seals (a tree from before seals is not judged)."""
    from gpulock.store import seal

    found = []
    for tree in listing.dirs(store.layout.trees):
        if hex_problem(tree.name, 64):
            continue  # work in progress, or not gpulock's: gc judges those
        raw = listing.small(store.layout.tree_seal(tree.name), 256 * 2**20)
        if raw is None:
            continue
        try:
            sealed = json.loads(raw)
        except (ValueError, RecursionError):
            sealed = None
        problem = (seal.broken(tree, sealed, tolerated=bytecode) if isinstance(sealed, dict)
                   else "its seal cannot be read")
        if problem:
            found.append(Damage("tree", tree.name, problem))
    return found


def check_project(store: Store, folder: Path, damaged: set[str], result: Checked
                   ) -> list[Damage]:
    """A project's generations: entries present and sound, links gpulock made."""
    found: list[Damage] = []
    project = folder.name
    if os.path.islink(folder) or not folder.is_dir():
        return [Damage("generation", project, "its folder in envs/ is not one gpulock made")]
    if os.path.lexists(folder / CURRENT) and generation.current_name(folder) is None:
        found.append(Damage("generation", f"{project}/current",
                            "is not a link to one of its generations"))
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if name.startswith("gen-") and (os.path.islink(path) or generation.read(path) is None):
            found.append(Damage("generation", f"{project}/{name}",
                                "its record is missing or damaged, or it is a link"))
    for gen in generation.generations_in(folder):
        result.generations += 1
        where = f"{project}/gen-{gen.number}"
        gone = sorted(name for name, key in gen.packages.items()
                      if not store.has(key) or key in damaged)
        if gone:
            found.append(Damage("generation", where, "needs entries that are missing or "
                                f"damaged: {', '.join(gone[:5])}"))
        stray = _stray_link(store, gen) or generation.tampered(gen)
        if stray:
            found.append(Damage("generation", where, stray))
    return found


def _stray_link(store: Store, gen: generation.Generation) -> str | None:
    """A link in a generation that gpulock did not make: its farm links only into pkgs/, its
    `bin/python*` only to the interpreter it was built for."""
    pkgs = os.path.realpath(store.layout.pkgs)
    for folder, dirs, names in os.walk(gen.path):
        for name in [*dirs, *names]:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                continue
            relative = os.path.relpath(path, gen.path)
            if os.path.dirname(relative) == "bin" and re.fullmatch(r"python[\d.]*", name):
                if os.readlink(path) != gen.python:
                    return f"{relative} links to {os.readlink(path)}, not to {gen.python}"
            elif not _within(os.path.realpath(path), pkgs):
                return f"{relative} links outside the store's entries"
    return None


def _check_views(store: Store) -> list[Damage]:
    """Links in the model caches must lead to the store's blobs and trees."""
    layout = store.layout
    inside = [os.path.realpath(layout.base / "blobs"), os.path.realpath(layout.trees)]
    found = []
    for root in (layout.hf, layout.modelscope, layout.files):
        for folder, dirs, names in os.walk(root):
            for name in [*dirs, *names]:
                path = os.path.join(folder, name)
                if os.path.islink(path) and not any(
                        _within(os.path.realpath(path), top) for top in inside):
                    found.append(Damage("view", os.path.relpath(path, layout.base),
                                        "is a link that leads outside the store's blobs"))
    return found


def _check_indexes(store: Store) -> list[Damage]:
    """The files the clients read as an index and trust (Hugging Face refs, modelscope
    1.x's pickles), as each source judges its own views. Nothing is read through a link,
    and only a few KiB of each."""
    from gpulock.sources import SOURCES

    return [Damage("view", os.path.relpath(path, store.layout.base), problem)
            for kind in SOURCES for path, problem in kind.damage(store)]


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)
