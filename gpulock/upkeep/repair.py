"""`gpulock verify --repair`: mend what `verify` found. A damaged entry or blob is moved aside
and fetched again from where a lock says it came (an entry only from a wheel a lock or its
own manifest vouches for); a damaged current generation is rebuilt from its record and lock
copy, an older one removed; links gpulock did not make are dropped from the views."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from gpulock.env import generation, localstart
from gpulock.errors import GpulockError
from gpulock.names import entry_key_problem, hex_problem
from gpulock.pins import FileRef
from gpulock.safeopen import Unsafe, read_small
from gpulock.store import Store, listing
from gpulock.store.scratch import tag
from gpulock.upkeep.verify import Checked, Damage, check_project

Log = Callable[[str], None]


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
    still = {d.key for folder in listing.projects(store)
             for d in check_project(store, folder, set(), Checked())}
    for where in sorted(still):
        if where.count("/gen-") == 1:
            repaired += _rebuild(store, where, log)
    return repaired


def _generations(store: Store) -> Iterator[generation.Generation]:
    for folder in listing.projects(store):
        yield from generation.generations_in(folder)


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
    for name in listing.entries(store):
        if name not in sources:
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
    from gpulock.models.blobs import stored_blob
    from gpulock.sources import fetch_blob, model_roots

    models = model_roots(store)
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
