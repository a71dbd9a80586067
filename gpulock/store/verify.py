"""`gpulock verify`: re-check the store against the hashes recorded when it was filled.

Package entries are checked file by file against `gpulock-records.json` (sha256, or with
`fast` the xxh3 recorded beside it); model blobs against their own name (sha256) or their
xxh3 record; generations by whether their entries are all there and every link is one
gpulock made (into pkgs/, or `bin/python` to its interpreter); the model views by whether
every link leads into the store's blobs. Links and files that gpulock did not put in an
entry are damage too: a copy swapped in for an entry is found, not trusted. `repair` moves a
damaged entry or blob aside and fetches it again from where the lock says it came, and
rebuilds a damaged generation from its record.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import mmap
import os
import pickle
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from gpulock.env import generation, localstart
from gpulock.errors import GpulockError
from gpulock.safeopen import Unsafe, open_descriptor, read_small
from gpulock.store import ENTRY_MANIFEST, ENTRY_RECORDS, DamagedEntry, Record, Store, roots
from gpulock.store.names import (
    bytecode,
    entry_key_problem,
    hex_problem,
    optimized_bytecode,
    path_problem,
)
from gpulock.store.scratch import tag

if TYPE_CHECKING:
    from gpulock.lock.lockfile import FileRef

_MAP_FROM = 1 << 20
_XXH3_LIMIT = 64  # a blob's xxh3 record: 32 hex digits
_BATCH = 512
_OWN_FILES = {ENTRY_MANIFEST, ENTRY_RECORDS}
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


def _digest(path: Path, fast: bool) -> tuple[str, int]:
    hasher: Any = xxhash.xxh3_128() if fast else hashlib.sha256()
    # Never through a link, never blocking on a FIFO planted where a file was recorded.
    fd = open_descriptor(path)
    try:
        size = os.fstat(fd).st_size
        if size < _MAP_FROM:
            hasher.update(os.read(fd, _MAP_FROM))  # one syscall: most files are small
        else:
            # Hashed straight from the page cache: copying it into Python first costs more
            # than xxh3 itself (585 MB of torch: 1.06 s read, 0.035 s mapped).
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                hasher.update(mapped)
    finally:
        os.close(fd)
    return hasher.hexdigest(), size


def _batches(store: Store, key: str) -> list[tuple[str, list[Record]]] | str:
    """An entry's records as work items (each large file alone), or what is wrong with it."""
    if entry_key_problem(key):
        return "it is not an entry gpulock made (its name is not <sha256>-<name>-<version>)"
    root = store.entry_path(key)
    if os.path.islink(root):
        return "it is a symbolic link, which gpulock never makes in pkgs/"
    try:
        records = store.records(key)
        built = store.built(key)
    except DamagedEntry as exc:
        return f"its manifest or records cannot be used: {exc.why}"
    problem = _foreign(root, {r.path for r in records}) or _built_problem(root, built, records)
    if problem:
        return problem
    small = [r for r in records if r.size < _MAP_FROM]
    # Each large file alone (hashing it releases the GIL); small ones in batches.
    return ([(key, [r]) for r in records if r.size >= _MAP_FROM]
            + [(key, small[i:i + _BATCH]) for i in range(0, len(small), _BATCH)])


def _foreign(root: Path, recorded: set[str]) -> str | None:
    """What an entry holds that it was not published with: links, unrecorded files."""
    bad = next((r for r in recorded if path_problem(r)), None)
    if bad is not None:
        return f"its records name {bad!r}, outside the entry"
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                return f"{relative} is a symbolic link, which gpulock never puts in an entry"
            if name in names and not stat.S_ISREG(mode):
                return f"{relative} is not a regular file"
            if (name in names and relative not in recorded and relative not in _OWN_FILES
                    and not optimized_bytecode(relative, recorded)):
                return f"{relative} was not in the entry when it was published"
    return None


def _built_problem(root: Path, built: tuple[Path, str, int] | None, records: list[Record]
                   ) -> str | None:
    """Whether the wheel a built entry keeps (for `push`) is, by its manifest, the file its
    records hashed when it was published."""
    if built is None:
        return None
    path, sha256, size = built
    relative = path.relative_to(root).as_posix()
    recorded = next((r for r in records if r.path == relative), None)
    if recorded is None:
        return f"its manifest names {relative}, which its records do not hold"
    if (recorded.sha256, recorded.size) != (sha256, size):
        return (f"its manifest says {relative} has sha256 {sha256} ({size} bytes), its "
                f"records {recorded.sha256} ({recorded.size} bytes)")
    return None


class EntryDamage(GpulockError):
    """What `check` would find wrong with one entry or blob."""


def verified_records(store: Store, key: str) -> list[Record]:
    """One entry's records, once every file it holds was checked against them by the same
    checks as `check` (full sha256); EntryDamage says what is wrong."""
    batches = _batches(store, key)
    if isinstance(batches, str):
        raise EntryDamage(batches)
    for _, records in batches:
        problem = _check_files(store, key, records, fast=False)[2]
        if problem:
            raise EntryDamage(problem)
    return [record for _, records in batches for record in records]


def verify_blob(store: Store, sha256: str) -> None:
    """Check one model file against its name as `check` does; EntryDamage says what is
    wrong."""
    try:
        problem = _check_blob(store, store.layout.blob(sha256), fast=False)[1]
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    if problem:
        raise EntryDamage(problem)


def _check_files(store: Store, key: str, records: list[Record], fast: bool
                 ) -> tuple[int, int, str | None]:
    """(files, bytes, first problem or None) for some files of one entry."""
    root = store.entry_path(key)
    files = total = 0
    for record in records:
        path = root / record.path
        try:
            actual, size = _digest(path, fast)
        except FileNotFoundError:
            return files, total, f"{record.path} is missing"
        except OSError as exc:
            return files, total, f"{record.path} cannot be read ({exc.strerror})"
        files, total = files + 1, total + size
        expected = record.xxh3 if fast else record.sha256
        if size != record.size or actual != expected:
            algorithm = "xxh3" if fast else "sha256"
            return files, total, (f"{record.path} has {algorithm} {actual} ({size} bytes), "
                                  f"recorded {expected} ({record.size} bytes)")
    return files, total, None


def _check_blob(store: Store, blob: Path, fast: bool) -> tuple[int, str | None]:
    sha = blob.parent.name + blob.name
    if hex_problem(sha, 64):
        return 0, "is not a blob gpulock stored (its name is not a sha256)"
    if os.path.islink(blob):
        return 0, "is a symbolic link, which gpulock never makes in blobs/sha256/"
    if not stat.S_ISREG(os.lstat(blob).st_mode):
        return 0, "is not a regular file"
    expected = sha
    if fast:
        record = store.layout.fast_record(sha)
        try:
            expected = read_small(record, _XXH3_LIMIT).decode("ascii", "replace").strip()
        except FileNotFoundError:
            fast = False  # no xxh3 recorded for this blob: the full hash it is
        except Unsafe as exc:  # fetched again, the record is written anew
            return 0, f"has an xxh3 record that cannot be used: {exc}"
    actual, size = _digest(blob, fast)
    if actual != expected:
        algorithm = "xxh3" if fast else "sha256"
        return size, f"has {algorithm} {actual}, expected {expected}"
    return size, None


def _projects(store: Store) -> list[Path]:
    envs = store.layout.envs
    return [envs / name for name in sorted(os.listdir(envs))] if envs.is_dir() else []


def _generations(store: Store) -> Iterator[generation.Generation]:
    for folder in _projects(store):
        yield from generation.generations_in(folder)


def _blobs(store: Store) -> list[Path]:
    found = []
    for folder, _dirs, names in os.walk(store.layout.blobs):
        found += [Path(folder) / name for name in names]
    return sorted(found)


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
    from gpulock.models import from_dict

    found = []
    try:
        models = [from_dict(entry, "a model root") for entry in roots.model_roots(store)]
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


def check(store: Store, fast: bool = False, jobs: int = 8) -> Checked:
    result = Checked()
    result.damage += _planted(store)
    if result.damage:  # nothing below is read through a planted link
        return result
    pkgs = store.layout.pkgs
    keys = sorted(os.listdir(pkgs)) if pkgs.is_dir() else []
    blobs = _blobs(store)
    # Reads and hashes release the GIL: threads use every core.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        work: list[tuple[str, list[Record]]] = []
        problems: dict[str, str] = {}
        for key, batches in zip(keys, pool.map(lambda k: _batches(store, k), keys),
                                strict=True):
            if isinstance(batches, str):
                problems[key] = batches
            else:
                work.extend(batches)
        # Large files hash on the pool while this thread reads the small ones: threads
        # reading small files only fight over the GIL (measured: 0.48 s alone, 0.69 s in two).
        large = [item for item in work if item[1] and item[1][0].size >= _MAP_FROM]
        futures = [pool.submit(_check_files, store, *item, fast) for item in large]
        small = [item for item in work if not (item[1] and item[1][0].size >= _MAP_FROM)]
        checked = [_check_files(store, *item, fast) for item in small]
        checked += [future.result() for future in futures]
        for (key, _), (files, size, problem) in zip(small + large, checked, strict=True):
            result.files += files
            result.bytes += size
            if problem and key not in problems:
                problems[key] = problem
        result.entries = len(keys)
        result.damage += [Damage("entry", key, problems[key]) for key in sorted(problems)]
        for blob, (size, problem) in zip(
                blobs, pool.map(lambda b: _check_blob(store, b, fast), blobs), strict=True):
            result.blobs += 1
            result.bytes += size
            if problem:
                result.damage.append(Damage("blob", blob.parent.name + blob.name, problem))
    known = {d.key for d in result.damage}
    result.damage += [d for d in _missing_blobs(store) if d.key not in known]
    damaged = {d.key for d in result.damage}
    for folder in _projects(store):
        result.damage += _check_project(store, folder, damaged, result)
    result.damage += _check_views(store) + _check_indexes(store) + _check_trees(store)
    _check_starts(store, result)
    return result


def _check_starts(store: Store, result: Checked) -> None:
    """Whether each project's current generation can start here (its interpreter, or the
    fallback its scripts take; console scripts written for another store path)."""
    from gpulock.env.starts import how_it_starts

    for folder in _projects(store):
        if os.path.islink(folder):
            continue
        now = generation.current_in(folder)
        if now is None:
            continue
        start = how_it_starts(now)
        if not start.runs:
            result.cannot_start.append(f"{folder.name}: {start.problem}")
        elif start.problem:
            result.fallbacks.append(f"{folder.name}: {start.problem}")


def _check_trees(store: Store) -> list[Damage]:
    """Extracted archives against their seals (a tree from before seals is not judged)."""
    from gpulock.store import seal

    found = []
    for tree in _real_dirs(store.layout.trees):
        if hex_problem(tree.name, 64):
            continue  # work in progress, or not gpulock's: gc judges those
        raw = _small(store.layout.tree_seal(tree.name), 256 * 2**20)
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


def _check_project(store: Store, folder: Path, damaged: set[str], result: Checked
                   ) -> list[Damage]:
    """A project's generations: entries present and sound, links gpulock made."""
    found: list[Damage] = []
    project = folder.name
    if os.path.islink(folder) or not folder.is_dir():
        return [Damage("generation", project, "its folder in envs/ is not one gpulock made")]
    if os.path.lexists(folder / "current") and generation.current_name(folder) is None:
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
    """The files the clients read as an index and trust: Hugging Face refs (a commit whose
    snapshot is there) and modelscope 1.x's pickles (`.msc`, `.mdl`), which that client
    unpickles, so one that would run code, or that lists a file the folder lacks, is
    damage. Nothing is read through a link, and only a few KiB of each."""
    layout = store.layout
    found = []
    for repo in _real_dirs(layout.hf):
        for folder, _dirs, names in os.walk(repo / "refs"):
            for name in names:
                ref = Path(folder) / name
                commit = (_small(ref) or b"").decode("ascii", "replace")
                if hex_problem(commit, 40) or not (repo / "snapshots" / commit).is_dir():
                    found.append(Damage("view", os.path.relpath(ref, layout.base),
                                        "names no snapshot this store holds"))
    for folder, _dirs, names in os.walk(layout.modelscope) if layout.present(
            layout.modelscope) else ():
        for name in sorted({".msc", ".mdl"} & set(names)):
            index = Path(folder) / name
            problem = _index_problem(index)
            if problem:
                found.append(Damage("view", os.path.relpath(index, layout.base), problem))
    return found


def _real_dirs(folder: Path) -> list[Path]:
    """The real (not linked) folders in `folder`."""
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _small(path: Path, limit: int = 1 << 16) -> bytes | None:
    """A regular file's bytes when it holds at most `limit`; None for anything else (a
    link, a FIFO, a huge file): never blocks, never fills memory."""
    try:
        return read_small(path, limit)
    except (OSError, Unsafe):
        return None


class _Plain(pickle.Unpickler):
    """Unpickles lists, dicts and strings only: a class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def _index_problem(index: Path) -> str | None:
    raw = _small(index)
    if raw is None:
        return "is not a small regular file, as modelscope writes it"
    try:
        data = _Plain(io.BytesIO(raw)).load()
    except Exception as exc:  # any way a hostile pickle fails is damage, not a crash
        return f"is not a plain pickle ({type(exc).__name__}), and modelscope unpickles it"
    if index.name == ".mdl":
        return None if isinstance(data, dict) else "is not the dict modelscope writes"
    if not isinstance(data, list) or not all(
            isinstance(item, dict) and isinstance(item.get("Path"), str) for item in data):
        return "is not the file list modelscope writes"
    for item in data:
        if path_problem(item["Path"]) or not os.path.isfile(index.parent / item["Path"]):
            return f"lists {item['Path']!r}, which the folder does not hold"
    return None


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


def repair(store: Store, damage: list[Damage], log: Log) -> list[str]:
    """Fetch damaged entries and blobs again, rebuild damaged generations, drop stray links
    from the model views; return what was repaired."""
    repaired: list[str] = []
    for item in damage:
        if item.kind == "link":
            os.unlink(store.layout.base / item.key)
            log(f"removed {item.key}, which gpulock did not make there")
            repaired.append(item.key)
    if repaired:  # the rest is judged again, now that nothing is read through a link
        return repaired
    wanted = {d.key for d in damage if d.kind == "entry"}
    for gen in _generations(store):
        wanted |= {key for key in gen.packages.values() if not store.has(key)}
    sources = _package_sources(store)
    for key in sorted(wanted):
        origin, python = sources.get(key, (None, None))
        if entry_key_problem(key):
            log(f"cannot repair pkgs/{key}: gpulock did not make it; 'gpulock gc' removes it")
            continue
        if origin is None:
            log(f"cannot repair {key}: no lock names the wheel it came from (an entry built "
                "from source: remove it and run 'gpulock sync' in its project)")
            continue
        _refetch_entry(store, key, origin, python)
        repaired.append(key)
        log(f"repaired package entry {key}")
    blobs = {d.key for d in damage if d.kind == "blob" and not hex_problem(d.key, 64)}
    if blobs:
        repaired += _refetch_blobs(store, blobs, log)
    for item in damage:
        if item.kind == "tree":
            shutil.rmtree(store.layout.tree(item.key))
            store.layout.tree_seal(item.key).unlink(missing_ok=True)
            log(f"removed the extracted tree {item.key}; the next 'gpulock sync' of its "
                "project extracts it again")
        if item.kind == "view":
            (store.layout.base / item.key).unlink(missing_ok=True)
            log(f"removed {item.key}; the next 'gpulock sync' of its project lays it out again")
    # Generations are judged again now that their entries are back.
    still = {d.key for folder in _projects(store)
             for d in _check_project(store, folder, set(), Checked())}
    for where in sorted(still):
        if where.count("/gen-") == 1:
            repaired += _rebuild(store, where, log)
    return repaired


def _rebuild(store: Store, where: str, log: Log) -> list[str]:
    """Replace a damaged generation: the current one is built again from its record and
    lock copy (as the next number, then made current); an older one is removed."""
    project, name = where.split("/")
    folder = store.layout.env(project)
    old = generation.read(folder / name)
    if generation.current_name(folder) == name:
        lock_text = _generation_lock(old.path) if old is not None else None
        if old is None or lock_text is None or not all(store.has(key)
                                                       for key in old.packages.values()):
            log(f"cannot rebuild {where}: its record, lock or entries are gone; run 'gpulock "
                "sync' in its project")
            return []
        entries = {package: store.entry(key) for package, key in old.packages.items()}
        built = generation.create(store, project, entries, old.interpreter, old.python_version,
                                  old.lock_digest, lock_text, (), local_start=os.path.lexists(
                                      old.path / localstart.PACK))
        generation.switch(store, project, built.generation)
        log(f"rebuilt {where} as generation {built.generation.number}, now current")
    else:
        log(f"removed {where}, which was not current")
    aside = store.work_dir(f"damaged-{project}")
    os.rename(folder / name, aside / name)
    shutil.rmtree(aside, ignore_errors=True)
    return [where]


def _generation_lock(folder: Path) -> str | None:
    """The lock a generation was built from, as it copied it (None: gone or not a file)."""
    from gpulock.lock.lockfile import MAX_BYTES

    try:
        return read_small(folder / "pylock.gpu.toml", MAX_BYTES).decode()
    except (OSError, Unsafe, UnicodeDecodeError):
        return None


def _package_sources(store: Store) -> dict[str, tuple[FileRef | None, str | None]]:
    """key -> (the locked wheel it came from, an interpreter that uses it)."""
    from gpulock.lock import lockfile

    sources: dict[str, tuple[FileRef | None, str | None]] = {}
    for gen in _generations(store):
        text = _generation_lock(gen.path)
        try:
            if text is None:
                continue
            locked = lockfile.loads(text, gen.path / "pylock.gpu.toml")
        except GpulockError:
            continue
        by_name = {p.name: p for p in locked.packages}
        for name, key in gen.packages.items():
            package = by_name.get(name)  # the generation records each package's key
            if package and package.wheel:
                sources[key] = (package.wheel, gen.interpreter)
    pkgs = store.layout.pkgs
    for name in os.listdir(pkgs) if pkgs.is_dir() else []:
        if name not in sources and not entry_key_problem(name):
            with contextlib.suppress(GpulockError):
                origin = store.origin(name)
                if origin is not None and _names_its_entry(name, origin):
                    sources[name] = (origin, None)
    return sources


def _names_its_entry(key: str, origin: FileRef) -> bool:
    """Whether the wheel a manifest's `origin` names is the one the entry's key was made
    from: a manifest is only a file on a volume others may write, and without a lock to
    vouch for it, an origin aimed at another wheel would have repair install that wheel."""
    from gpulock.build.env import wheel_digest
    from gpulock.manifest import PYTHON_MINORS

    digest = key.split("-", 1)[0]
    return any(wheel_digest(origin.name, origin.sha256, f"3.{minor}") == digest
               for minor in PYTHON_MINORS)


def _refetch_entry(store: Store, key: str, ref: FileRef, python: str | None) -> None:
    from gpulock.http import Http
    from gpulock.store.compile import Compiler
    from gpulock.store.fetch import discard, fetch

    name, version = key.split("-", 1)[1].rsplit("-", 1)
    wheel = fetch(ref, f"{name} {version}", store.layout, Http())
    # Aside first, so the new copy is published by the same rename as any other entry.
    aside = store.layout.folder(store.tmp) / f"damaged.{tag()}"
    with contextlib.suppress(FileNotFoundError):
        os.rename(store.entry_path(key), aside)
    compiler = Compiler(python) if python else None
    try:
        store.add_wheel(wheel, key, name, version, compiler, ref)
    finally:
        if compiler:
            compiler.close()
        if os.path.islink(aside):
            os.unlink(aside)  # a planted link: only the link goes
        shutil.rmtree(aside, ignore_errors=True)
        discard(store.layout, wheel)


def _refetch_blobs(store: Store, blobs: set[str], log: Log) -> list[str]:
    from gpulock.models import from_dict
    from gpulock.models.blobs import stored_blob
    from gpulock.models.fetch import fetch_blob

    models = [from_dict(m) for m in roots.model_roots(store)]
    owners = {}
    for model in models:
        for file in model.files:
            if file.sha256:
                owners[file.sha256] = (model, file)
            elif (blob := stored_blob(store, file)) is not None:
                owners[blob.parent.name + blob.name] = (model, file)
    repaired = []
    for sha in sorted(blobs):
        blob = store.layout.blob(sha)
        if sha not in owners:
            log(f"cannot repair blob {sha}: no synced model pins it; 'gpulock gc' removes it")
            continue
        blob.unlink(missing_ok=True)
        model, file = owners[sha]
        fetch_blob(store, model, file)
        repaired.append(sha)
        log(f"repaired model '{model.name}' file {file.path}")
    return repaired
