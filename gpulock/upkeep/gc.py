"""`gpulock gc`: remove what no kept generation, root or running sync references.

Kept: per project the current generation and the `keep` newest ones; the store entries
they link; the models each project's last sync laid out (roots/models/); whatever a
running sync has rooted (roots/tmp/: its package keys, the lock digest of the generation it
builds, its models). Removed: other generations, unreferenced entries, blobs and model
views, and work in progress whose writer is gone.

No lock makes this safe against syncs running meanwhile (network volumes ignore flock).
Instead: the roots are read before the generations (a sync switches `current` before it
drops its root, so a generation is seen either rooted or current); gc announces itself
while it chooses (roots.collecting) and a sync that has just rooted waits for it; and a dead
entry is first renamed out of `pkgs/`, the roots read once more, and anything rooted in
between renamed back before anything is deleted. Everything gc walks may vanish under it
(a sync renaming its work into place): a path that is gone is simply no longer gc's.
`dry_run` reads and counts, and changes nothing at all.

Never touched: `python/`, the CPython interpreters uv installed (sync --install-python).
Generations of every project on the volume link their `bin/python` there, kept ones and
rolled-back ones alike, and an interpreter is one per minor version, not per lock: gc
neither walks into that folder nor removes it (remove one nobody uses by hand).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpulock.env import generation
from gpulock.errors import GpulockError
from gpulock.models.blobs import indexed_blob
from gpulock.names import hex_problem
from gpulock.pins import PinnedModel
from gpulock.sources import SOURCES, model_roots
from gpulock.store import Store, listing, roots
from gpulock.store.scratch import STALE_SECONDS, abandoned, alive_writers, tag, tagged

Log = Callable[[str], None]


@dataclass
class Collected:
    generations: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    blobs: int = 0
    other: list[str] = field(default_factory=list)
    freed: int = 0


class _Remover:
    """Removes (or, in a dry run, only counts) paths; folders go to a trash folder first, so
    they leave the store's view at once and are deleted after gc has chosen."""

    def __init__(self, store: Store, dry_run: bool, log: Log, result: Collected) -> None:
        self.store = store
        self.trash = store.tmp / f"gc.{tag()}"
        self.dry_run, self.log, self.result = dry_run, log, result
        # Writers with a fresh heartbeat: their work in tmp/ is theirs, however long it takes.
        self.alive = alive_writers(store.layout.tmp_roots)
        self.beat: Callable[[], None] = lambda: None
        self._count = 0

    def __call__(self, path: Path, label: str | None = None) -> bool:
        """Remove `path` (never following it); False when it was gone already."""
        self.beat()
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        size = listing.size(path)
        if label:
            self.log(f"{'would remove' if self.dry_run else 'removing'} {label}")
        if not self.dry_run:
            try:
                if stat.S_ISDIR(mode):
                    os.rename(path, self.into_trash(path.name))
                else:
                    os.unlink(path)
            except FileNotFoundError:
                return False
        self.result.freed += size
        return True

    def into_trash(self, name: str) -> Path:
        if not self._count:
            self.store.layout.folder(self.trash)
        self._count += 1
        return self.trash / f"{self._count}-{name}"

    def empty(self) -> None:
        shutil.rmtree(self.trash, ignore_errors=True)


def collect(store: Store, keep: int = 3, dry_run: bool = False,
            log: Log = lambda _line: None) -> Collected:
    result = Collected()
    remove = _Remover(store, dry_run, log, result)
    if dry_run:
        _choose(store, keep, remove, result)
        return result
    with roots.collecting(store) as beat:
        remove.beat = beat
        _choose(store, keep, remove, result)
    remove.empty()  # the slow part, after syncs may go on
    return result


def _choose(store: Store, keep: int, remove: _Remover, result: Collected) -> None:
    rooted = roots.temporary_roots(store)
    # Every root read and understood before anything moves: one that cannot be read stops
    # gc with nothing removed, never counts as referencing nothing.
    pinned = model_roots(store, rooted.models)
    kept = _collect_generations(store, keep, rooted.digests, remove, result)
    live_pkgs = {key for gen in kept for key in gen.packages.values()} | rooted.pkgs
    _collect_entries(store, live_pkgs, remove, result)
    _collect_models(store, pinned, remove, result)
    _collect_scratch(store, remove, result)


def _collect_generations(store: Store, keep: int, rooted: set[str], remove: _Remover,
                         result: Collected) -> list[generation.Generation]:
    kept: list[generation.Generation] = []
    for folder in listing.dirs(store.layout.envs):  # verify names what is not a folder
        now = generation.current_name(folder)
        _refuse_unreadable(folder, now)
        generations = generation.generations_in(folder)
        newest = {g.number for g in generations[-keep:]}
        for gen in generations:
            if gen.number in newest or gen.path.name == now or gen.lock_digest in rooted:
                kept.append(gen)
            elif remove(gen.path, f"{folder.name} generation {gen.number}"):
                result.generations.append(f"{folder.name}/gen-{gen.number}")
        for leftover in listing.names(folder):  # half-built generations, stray `current` links
            if leftover.name.startswith(".") and abandoned(leftover, remove.alive) and remove(
                    leftover):
                result.other.append(str(leftover))
    return kept


def _refuse_unreadable(folder: Path, now: str | None) -> None:
    """Stop gc when a generation's record cannot be read: the entries it links would look
    unreferenced and be collected under it (current or not, it may be rolled back to)."""
    for path in listing.names(folder):
        if re.fullmatch(r"gen-\d+", path.name) and not path.is_symlink() \
                and generation.read(path) is None:
            which, fix = (("the current generation", "'gpulock sync' in that project, then ")
                          if path.name == now else ("a generation", ""))
            raise GpulockError(f"the record of {path}, {which} of '{folder.name}', is "
                               f"damaged; nothing was collected: run {fix}'gpulock verify "
                               "--repair' (it removes a damaged generation that is not current)")


def _collect_entries(store: Store, live: set[str], remove: _Remover,
                     result: Collected) -> None:
    pkgs = store.layout.pkgs
    dead = [p.name for p in listing.names(pkgs) if p.name not in live]
    for key in dead:
        remove.log(f"{'would remove' if remove.dry_run else 'removing'} package entry {key}")
    if remove.dry_run:
        result.entries = dead
        result.freed += sum(listing.size(pkgs / key) for key in dead)
        return
    moved: dict[str, Path] = {}
    for key in dead:
        remove.beat()
        with contextlib.suppress(FileNotFoundError):
            aside = remove.into_trash(key)
            os.rename(pkgs / key, aside)
            moved[key] = aside
    # A sync that rooted an entry after the first look must find it again.
    for key in roots.temporary_roots(store).pkgs & moved.keys():
        with contextlib.suppress(OSError):  # else the sync published its own copy already
            os.rename(moved.pop(key), pkgs / key)
    result.entries = sorted(moved)
    result.freed += sum(listing.size(path) for path in moved.values())


def _collect_models(store: Store, pinned: list[PinnedModel], remove: _Remover,
                    result: Collected) -> None:
    layout = store.layout
    live_sha = {f.sha256 for m in pinned for f in m.files if f.sha256}
    live_git = {f.git_sha1 for m in pinned for f in m.files if f.git_sha1 and not f.sha256}
    for link in listing.files(layout.git_blobs):
        target = indexed_blob(layout, link)
        if link.parent.name + link.name in live_git and target is not None:
            live_sha.add(target.parent.name + target.name)
        else:
            remove(link)
    for blob in listing.files(layout.blobs):
        sha = blob.parent.name + blob.name
        if sha not in live_sha and remove(blob):
            result.blobs += 1
            if not hex_problem(sha, 64):
                remove(layout.fast_record(sha))
    # Each source's own views (the Hugging Face cache, ModelScope's): commits and
    # revisions nothing pins any more.
    for kind in SOURCES:
        kind.collect(store, pinned, remove)
    live_trees = {str(f.sha256) for m in pinned if m.extract for f in m.files}
    for tree in listing.dirs(layout.trees):
        if tree.name not in live_trees:
            remove(tree)
    for sealed in listing.names(layout.trees):  # the seals beside the trees, never inside one
        if sealed.name.endswith(".seal.json") and not sealed.is_dir() and (
                sealed.name.removesuffix(".seal.json") not in live_trees):
            remove(sealed)
    for path in listing.files(layout.files):
        if path.is_symlink() and not path.exists():
            remove(path)  # its blob or tree was collected above


def _collect_scratch(store: Store, remove: _Remover, result: Collected) -> None:
    """Work in progress of writers that are gone: unpacks, builds, downloads, roots."""
    layout = store.layout
    for path in listing.walk(layout.tmp, lambda p: "~" in p.name or p.name.endswith(".lock")):
        if abandoned(path, remove.alive) and remove(path):
            result.other.append(str(path))
    for folder in (layout.downloads, layout.model_parts):
        for item in listing.dirs(folder):
            with contextlib.suppress(OSError):  # only empty and quiet ones: a sync may be
                if not remove.dry_run and _quiet(item):  # about to write into it
                    item.rmdir()
    for root in listing.names(layout.tmp_roots) + listing.names(layout.collectors):
        if abandoned(root, remove.alive) and remove(root):
            result.other.append(str(root))
    # Views and blobs are built beside their final names, as dot-names that carry a writer;
    # a published tree is never walked into (its own dot-files are the archive's).
    leftovers = [p for root in (layout.hf, layout.modelscope, layout.files,
                                layout.base / "blobs", layout.base / "roots")
                 for p in listing.walk(root, lambda p: tagged(p.name))]
    leftovers += [p for p in listing.names(layout.trees) if tagged(p.name)]
    for path in leftovers:
        if abandoned(path, remove.alive) and remove(path):
            result.other.append(str(path))


def _quiet(folder: Path) -> bool:
    try:
        return time.time() - folder.lstat().st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False


def describe(result: Collected, dry_run: bool) -> str:
    size = result.freed / 2**20
    verb = "would free" if dry_run else "freed"
    return (f"{verb} {size:.1f} MiB: {len(result.generations)} generation(s), "
            f"{len(result.entries)} package entr{'y' if len(result.entries) == 1 else 'ies'}, "
            f"{result.blobs} model file(s), {len(result.other)} leftover(s) of killed syncs")
