"""`gpulock sync`: make the store hold the lock, build a generation, switch to it.

A sync first makes a `Plan` (as uv's Planner yields a Plan) and then carries it out. The
plan is a diff of hashes: the interpreter and the lock's digest as a generation records
them, the current generation, and for each locked package a store key (gpulock.build.env:
the wheel's sha256, or for sources the hash of source, target and build inputs). When the
current generation was built from the same lock on the same interpreter, nothing is done
but the models; otherwise keys the store lacks are taken from a binary cache, fetched or
built, the rest reused untouched, and a new generation is switched to once the models are
laid out. doctor.py checks the pod against the lock before a new generation is made.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gpulock import faults
from gpulock.env import generation
from gpulock.env.interpreter import find_interpreter
from gpulock.errors import GpulockError
from gpulock.lock import lockfile
from gpulock.manifest import Manifest
from gpulock.pins import Lock, LockedPackage
from gpulock.places import GENERATION_FORMAT
from gpulock.store import Entry, Store, roots

if TYPE_CHECKING:
    from gpulock.http import Http
    from gpulock.store.substituters.pull import Substitutes

Log = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """How a sync runs: what it syncs, with how many jobs, what it may install and ask."""

    jobs: int = 8
    packages: bool = True
    models: bool = True
    install_python: bool = False  # uv installs the target CPython into the store if needed
    check: bool = True  # doctor's blockers stop a sync before it fetches for a generation
    substitutes: Substitutes | None = None  # binary caches asked before an index or a build
    log: Log = field(default=lambda line: print(line, file=sys.stderr))


@dataclass
class SyncResult:
    """What a sync did."""

    generation: generation.Generation | None
    added: list[str] = field(default_factory=list)
    reused: int = 0
    changes: list[str] = field(default_factory=list)
    nothing_to_do: bool = False
    downloaded_bytes: int = 0
    model_files: int = 0
    model_bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Plan:
    """What a sync of one lock will do, decided before anything is fetched or switched."""

    project: str
    python: str  # the interpreter the generation runs on
    python_version: str
    digest: str  # the lock's digest as the generation records it (gpulock.uptodate)
    previous: generation.Generation | None  # the project's current generation
    # Package name -> (its pin, its store key); empty when the plan is up to date.
    packages: dict[str, tuple[LockedPackage, str]] = field(default_factory=dict)
    # Packages built without isolation -> the packages whose entries they build against.
    inputs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def up_to_date(self) -> bool:
        """Whether the current generation is this lock on this interpreter already."""
        return self.previous is not None and self.previous.lock_digest == self.digest \
            and self.previous.format >= GENERATION_FORMAT

    def missing(self, store: Store) -> list[tuple[LockedPackage, str]]:
        """The packages whose entries the store lacks (read once their keys are rooted)."""
        return [(p, key) for p, key in self.packages.values() if not store.has(key)]


def plan(manifest: Manifest, lock: Lock, lock_text: str, store: Store, options: Options
         ) -> Plan:
    """The plan of a sync of `lock`: its interpreter found (or installed) and, unless the
    current generation is the same lock already, each package's store key."""
    python, python_version = find_interpreter(lock.target.python, store,
                                              platform=lock.target.platform,
                                              install=options.install_python, log=options.log)
    from gpulock.uptodate import lock_digest

    # The interpreter as the generation names it: a store CPython by a relative path, so
    # the same lock on the same volume mounted elsewhere is still the same generation.
    # A generation with a local-start pack is another layout of the same lock.
    digest = lock_digest(lock_text, generation.recorded_python(store, python)
                         + ("\0local-start" if manifest.project.local_start else ""))
    project = manifest.project.name
    planned = Plan(project, python, python_version, digest, generation.current(store, project))
    if planned.up_to_date:
        return planned
    from gpulock.build.env import build_inputs, store_keys

    keys = store_keys(manifest, lock)
    return dataclasses.replace(planned, inputs=build_inputs(manifest, lock),
                               packages={p.name: (p, keys[p.name]) for p in lock.packages})


def sync(manifest: Manifest, lock: Lock, lock_text: str, store: Store,
         options: Options = Options()) -> SyncResult:
    """Make the store hold the lock and switch the project to it (its packages and models,
    or those `options` chooses); a sync that fails leaves the current generation as it was."""
    started = time.perf_counter()
    if options.packages:
        result = _packages(plan(manifest, lock, lock_text, store, options), manifest, lock,
                           lock_text, store, options)
    else:
        files, size = _models(manifest, lock, store, options)
        result = SyncResult(None, nothing_to_do=not files, model_files=files, model_bytes=size)
    result.seconds = time.perf_counter() - started
    return result


def _packages(planned: Plan, manifest: Manifest, lock: Lock, lock_text: str, store: Store,
              options: Options) -> SyncResult:
    """The plan carried out: the models only when it is up to date, else a new generation."""
    if planned.up_to_date:
        assert planned.previous is not None
        files, size = _models(manifest, lock, store, options)
        return SyncResult(planned.previous, reused=len(planned.previous.packages),
                          nothing_to_do=not files, model_files=files, model_bytes=size)
    if options.check:
        from gpulock.sync.doctor import preflight

        preflight(manifest, lock, store, packages=True, models=options.models)
    newest = generation.all_generations(store, planned.project)
    previous = planned.previous
    if previous is not None and newest and newest[-1].number > previous.number:
        options.log(f"note: generation {previous.number} is current by 'gpulock rollback'; "
                    "this sync builds the lock again as a new generation ('gpulock rollback "
                    f"{previous.number}' goes back)")
    # Rooted before the store is read: a gc running now keeps (or restores) these entries.
    with roots.temporary(store, pkgs=[key for _, key in planned.packages.values()],
                         digest=planned.digest):
        faults.point("plan", store.base)
        return _build(planned, manifest, lock, lock_text, store, options)


def _build(planned: Plan, manifest: Manifest, lock: Lock, lock_text: str, store: Store,
           options: Options) -> SyncResult:
    """The entries the store lacks brought in, the generation built, the models laid out,
    and the generation made current."""
    missing = planned.missing(store)
    old_lock = _lock_of(planned.previous)
    from gpulock.lock.diff import diff

    changes = diff(old_lock, lock) if old_lock else [f"+ {p.name} {p.version}"
                                                     for p in lock.packages]
    for line in changes:
        options.log(line)
    progress = Progress(options.log)
    added = _Filler(planned, manifest, store, options, progress).fill(missing) \
        if missing else []  # a filler opens a client and a compiler pool: only for work
    entries = {name: store.entry(key) for name, (_, key) in planned.packages.items()}
    built = generation.create(store, planned.project, entries, planned.python,
                              planned.python_version, planned.digest, lock_text,
                              manifest.verify_imports, planned.previous,
                              local_start=manifest.project.local_start)
    files, size = _models(manifest, lock, store, options)  # a failure leaves current as is
    faults.point("switch", built.generation.path)
    generation.switch(store, planned.project, built.generation)
    return SyncResult(built.generation, added=added,
                      reused=len(planned.packages) - len(missing), changes=changes,
                      downloaded_bytes=progress.bytes, model_files=files, model_bytes=size)


def _models(manifest: Manifest, lock: Lock, store: Store, options: Options) -> tuple[int, int]:
    """The lock's models fetched and laid out, and recorded as the project's GC root (or,
    synced without models, the root dropped); (files fetched, bytes)."""
    project = manifest.project.name
    if not (options.models and lock.models):
        if options.models:
            roots.forget_models(store, project)  # its models are gc's to take
        return 0, 0
    from gpulock.models.sync import sync_models
    from gpulock.sources import refuse_cycles

    pinned = list(lock.models)
    rooted = [m.as_dict() for m in pinned]  # GC roots are JSON records
    refuse_cycles(store, project, pinned)  # a lock made by hand or before they were refused
    with roots.temporary(store, models=rooted):
        fetched = sync_models(store, project, pinned, options.log, options.jobs,
                              options.substitutes)
        roots.record_models(store, project, rooted)
    return fetched


class _Filler:
    """Brings the entries a plan lacks into the store: from a binary cache, else the wheel
    fetched or the package built, then unpacked (bytecode compiled) and published."""

    def __init__(self, planned: Plan, manifest: Manifest, store: Store, options: Options,
                 progress: Progress) -> None:
        from gpulock.http import Http
        from gpulock.store.compile import Compiler

        self.planned, self.manifest, self.store = planned, manifest, store
        self.options, self.progress = options, progress
        self.http = Http()  # its TLS context costs 40 ms: made only when something is fetched
        self.compiler = Compiler(planned.python)  # one bytecode pool (started lazily)

    def fill(self, missing: list[tuple[LockedPackage, str]]) -> list[str]:
        """Add each of `missing`; what was added, as "name version"."""
        from concurrent.futures import ThreadPoolExecutor

        total = sum(ref.size for p, _ in missing if (ref := p.wheel or p.sdist) is not None)
        self.options.log(f"Fetching {len(missing)} of {len(self.planned.packages)} packages "
                         f"({_size(total)})")
        self.progress.start(total)
        inputs = self.planned.inputs
        # No-isolation builds wait for the entries they compile against, then run one at a
        # time in the order their inputs allow (each may use every core: MAX_JOBS).
        later = [item for item in missing if item[0].name in inputs]
        added: list[str] = []
        try:
            with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
                added.extend(pool.map(self.add, [i for i in missing if i not in later]))
            while later:
                ready = [i for i in later if all(self.store.has(self.planned.packages[n][1])
                                                 for n in inputs[i[0].name])]
                added.append(self.add(ready[0]))  # store_keys refused a cycle: one is ready
                later.remove(ready[0])
        finally:
            self.compiler.close()
            self.progress.stop()
        return added

    def add(self, item: tuple[LockedPackage, str]) -> str:
        """One package's entry into the store."""
        from gpulock.store.fetch import discard

        package, key = item
        substitutes, store = self.options.substitutes, self.store
        wheel = substitutes.take(package, key, store, self.progress.advance) if substitutes \
            else None
        if wheel is None:
            build_env = {n: store.entry(self.planned.packages[n][1])
                         for n in self.planned.inputs.get(package.name, ())}
            wheel = _wheel_for(package, store, self.http, self.manifest,
                               (self.planned.python, self.planned.python_version), build_env,
                               self.progress.advance)
        try:
            store.add_wheel(wheel, key, package.name, package.version, self.compiler,
                            package.wheel, keep=package.wheel is None)
        finally:
            discard(store.layout, wheel)
        self.progress.finished(f"{package.name} {package.version}")
        return f"{package.name} {package.version}"


def _wheel_for(package: LockedPackage, store: Store, http: Http, manifest: Manifest,
               interpreter: tuple[str, str], build_env: dict[str, Entry],
               progress: Callable[[int], None]) -> Path:
    """The package's wheel in a folder of this writer's under tmp/ (see fetch.discard); a
    no-isolation build runs against `build_env`, the store entries of its build inputs."""
    from gpulock.store.fetch import discard, fetch

    label = f"{package.name} {package.version}"
    if package.wheel:
        return fetch(package.wheel, label, store.layout, http, progress)
    from gpulock.build.env import builder_for

    builder = builder_for(manifest, package)
    out = store.work_dir(f"build-{package.name}")
    sdist = None
    try:
        if package.sdist:
            sdist = source = fetch(package.sdist, label, store.layout, http, progress)
        else:
            from gpulock.lock.vcs import GitSource, checkout

            assert package.vcs is not None
            from gpulock.cache import Cache

            source = checkout(GitSource(package.vcs.url, package.vcs.requested_revision,
                                        package.vcs.commit_id, package.vcs.subdirectory),
                              Cache().root)
        if builder.isolation:
            return builder.build(source, out, label, interpreter[0])
        from gpulock.build.env import describe, environment

        with environment(store, package.name, list(build_env.values()),
                         *interpreter) as python:
            return builder.build(source, out, label, str(python), describe(builder, build_env))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if sdist is not None:
            discard(store.layout, sdist)


class Progress:
    """Bytes, packages, rate and ETA: one redrawn line on a terminal, plain lines in logs."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.bytes = 0
        self.total = 0
        self.done = 0
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tty = sys.stderr.isatty()

    def start(self, total: int) -> None:
        self.total, self.started = total, time.perf_counter()
        if self.tty:
            self._thread = threading.Thread(target=self._draw, daemon=True)
            self._thread.start()

    def advance(self, count: int) -> None:
        with self._lock:
            self.bytes += count

    def finished(self, label: str) -> None:
        with self._lock:
            self.done += 1
        if not self.tty:
            self.log(f"  added {label}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            sys.stderr.write("\r\033[K")

    def _draw(self) -> None:
        while not self._stop.wait(0.2):
            elapsed = max(time.perf_counter() - self.started, 1e-6)
            rate = self.bytes / elapsed
            eta = (self.total - self.bytes) / rate if rate else 0
            sys.stderr.write(f"\r\033[K  {_size(self.bytes)} / {_size(self.total)}, "
                             f"{self.done} packages unpacked, {_size(int(rate))}/s, "
                             f"ETA {eta:.0f}s")
            sys.stderr.flush()


def _lock_of(previous: generation.Generation | None) -> Lock | None:
    if previous is None:
        return None
    try:
        return lockfile.read(previous.path / "pylock.gpu.toml")
    except GpulockError:
        return None


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
