"""An entry's files and a model blob's bytes, checked against what was recorded when they
were published: each file of `pkgs/<key>/` against `gpulock-records.json` (sha256, or with
`fast` the xxh3 recorded beside it), with nothing in the entry it was not published with;
a blob against its own name (sha256) or its xxh3 record. `gpulock verify` checks the whole
store with these, `push` each entry and blob it signs."""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from pathlib import Path
from typing import Any

import xxhash

from gpulock.errors import GpulockError
from gpulock.names import entry_key_problem, optimized_bytecode, path_problem
from gpulock.safeopen import Unsafe, open_descriptor, read_small
from gpulock.store import ENTRY_MANIFEST, ENTRY_RECORDS, DamagedEntry, Record, Store
from gpulock.store.listing import blob_sha256

MAP_FROM = 1 << 20  # files from this size are hashed mapped, and alone
_XXH3_LIMIT = 64  # a blob's xxh3 record: 32 hex digits
_BATCH = 512
_OWN_FILES = {ENTRY_MANIFEST, ENTRY_RECORDS}


def _digest(path: Path, fast: bool) -> tuple[str, int]:
    hasher: Any = xxhash.xxh3_128() if fast else hashlib.sha256()
    # Never through a link, never blocking on a FIFO planted where a file was recorded.
    fd = open_descriptor(path)
    try:
        size = os.fstat(fd).st_size
        if size < MAP_FROM:
            hasher.update(os.read(fd, MAP_FROM))  # one syscall: most files are small
        else:
            # Hashed straight from the page cache: copying it into Python first costs more
            # than xxh3 itself (585 MB of torch: 1.06 s read, 0.035 s mapped).
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                hasher.update(mapped)
    finally:
        os.close(fd)
    return hasher.hexdigest(), size


def batches(store: Store, key: str) -> list[tuple[str, list[Record]]] | str:
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
    small = [r for r in records if r.size < MAP_FROM]
    # Each large file alone (hashing it releases the GIL); small ones in batches.
    return ([(key, [r]) for r in records if r.size >= MAP_FROM]
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
    work = batches(store, key)
    if isinstance(work, str):
        raise EntryDamage(work)
    for _, records in work:
        problem = check_files(store, key, records, fast=False)[2]
        if problem:
            raise EntryDamage(problem)
    return [record for _, records in work for record in records]


def verify_blob(store: Store, sha256: str) -> None:
    """Check one model file against its name as `check` does; EntryDamage says what is
    wrong."""
    try:
        problem = check_blob(store, store.layout.blob(sha256), fast=False)[1]
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    if problem:
        raise EntryDamage(problem)


def check_files(store: Store, key: str, records: list[Record], fast: bool
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


def check_blob(store: Store, blob: Path, fast: bool) -> tuple[int, str | None]:
    """(bytes read, what is wrong or None) for one file below `blobs/sha256/`."""
    sha = blob_sha256(blob)
    if sha is None:
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
