"""`gpulock sync`: make the store hold the lock, build a generation, switch to it.

The plan is a diff of hashes: each locked package names a store key (gpulock.build.env:
the wheel's sha256, or for sources the hash of source, target and build inputs); keys the
store lacks are taken from a binary cache, fetched or built, the rest are reused untouched.
When the current generation was built from the same lock on the same interpreter, nothing
is done at all. doctor.py checks the pod against the lock before a new generation is made.
"""

from __future__ import annotations

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
from gpulock.store import Entry, Store, roots

if TYPE_CHECKING:
    from gpulock.http import Http
    from gpulock.store.substituters.pull import Substitutes

Log = Callable[[str], None]


@dataclass
class SyncResult:
    generation: generation.Generation | None
    added: list[str] = field(default_factory=list)
    reused: int = 0
    changes: list[str] = field(default_factory=list)
    nothing_to_do: bool = False
    downloaded_bytes: int = 0
    model_files: int = 0
    model_bytes: int = 0
    seconds: float = 0.0


def sync(manifest: Manifest, lock: Lock, lock_text: str, store: Store, *, jobs: int = 8,
         packages: bool = True, models: bool = True, install_python: bool = False,
         preflight: Callable[[], None] = lambda: None,
         substitutes: Substitutes | None = None,
         log: Log = lambda line: print(line, file=sys.stderr)) -> SyncResult:
    """Make the store hold the lock and switch the project to it; `install_python`: when
    the store has no CPython of the lock's target, uv installs one there (pythons.py);
    `substitutes`: binary caches asked for each missing entry before its index or a build."""
    started = time.perf_counter()
    laid_out: list[tuple[int, int]] = []

    def models_step() -> None:
        """Models before the switch: a sync that fails on a model leaves current as it was."""
        if models and lock.models:
            from gpulock.models.sync import sync_models
            from gpulock.sources import refuse_cycles

            pinned = list(lock.models)
            rooted = [m.as_dict() for m in pinned]  # GC roots are JSON records
            refuse_cycles(store, manifest.project.name, pinned)  # a lock made by hand or
            with roots.temporary(store, models=rooted):  # before they were refused
                laid_out.append(sync_models(store, manifest.project.name, pinned, log, jobs,
                                            substitutes))
                roots.record_models(store, manifest.project.name, rooted)
        elif models:
            roots.forget_models(store, manifest.project.name)  # its models are gc's to take

    if packages:
        result = _sync_packages(manifest, lock, lock_text, store, jobs, log, models_step,
                                preflight, install_python, substitutes)
    else:
        models_step()
        result = SyncResult(None, nothing_to_do=True)
    if laid_out:
        result.model_files, result.model_bytes = laid_out[0]
        result.nothing_to_do = result.nothing_to_do and not result.model_files
    result.seconds = time.perf_counter() - started
    return result


def _sync_packages(manifest: Manifest, lock: Lock, lock_text: str, store: Store, jobs: int,
                   log: Log, before_switch: Callable[[], None],
                   preflight: Callable[[], None], install_python: bool = False,
                   substitutes: Substitutes | None = None) -> SyncResult:
    """The lock's packages as the project's current generation; `preflight` runs once a new
    generation is to be built (a no-op sync skips it), `before_switch` before it is current."""
    started = time.perf_counter()
    project = manifest.project.name
    python, python_version = find_interpreter(lock.target.python, store,
                                              platform=lock.target.platform,
                                              install=install_python, log=log)
    from gpulock.places import GENERATION_FORMAT
    from gpulock.uptodate import lock_digest

    # The interpreter as the generation names it: a store CPython by a relative path, so
    # the same lock on the same volume mounted elsewhere is still the same generation.
    # A generation with a local-start pack is another layout of the same lock.
    digest = lock_digest(lock_text, generation.recorded_python(store, python)
                         + ("\0local-start" if manifest.project.local_start else ""))
    previous = generation.current(store, project)
    if previous is not None and previous.lock_digest == digest \
            and previous.format >= GENERATION_FORMAT:
        before_switch()
        return SyncResult(previous, reused=len(previous.packages), nothing_to_do=True,
                          seconds=time.perf_counter() - started)
    preflight()
    newest = generation.all_generations(store, project)
    if previous is not None and newest and newest[-1].number > previous.number:
        log(f"note: generation {previous.number} is current by 'gpulock rollback'; this sync "
            f"builds the lock again as a new generation ('gpulock rollback {previous.number}' "
            "goes back)")

    from gpulock.build.env import store_keys

    keys = store_keys(manifest, lock)
    plan = {p.name: (p, keys[p.name]) for p in lock.packages}
    # Rooted before the store is read: a gc running now keeps (or restores) these entries.
    with roots.temporary(store, pkgs=[key for _, key in plan.values()], digest=digest):
        faults.point("plan", store.base)
        return _build(manifest, lock, lock_text, store, jobs, log, plan, previous, substitutes,
                      (python, python_version, digest), started, before_switch)


def _build(manifest: Manifest, lock: Lock, lock_text: str, store: Store, jobs: int, log: Log,
           plan: dict[str, tuple[LockedPackage, str]], previous: generation.Generation | None,
           substitutes: Substitutes | None,
           interpreter: tuple[str, str, str], started: float,
           before_switch: Callable[[], None]) -> SyncResult:
    python, python_version, digest = interpreter
    project = manifest.project.name
    missing = [(p, key) for p, key in plan.values() if not store.has(key)]
    old_lock = _lock_of(previous)
    from gpulock.lock.diff import diff

    changes = diff(old_lock, lock) if old_lock else [f"+ {p.name} {p.version}"
                                                     for p in lock.packages]
    for line in changes:
        log(line)
    added: list[str] = []
    progress = Progress(log)
    from gpulock.build.env import build_inputs

    inputs = build_inputs(manifest, lock)
    if missing:
        from gpulock.http import Http
        from gpulock.store.compile import Compiler
        from gpulock.store.fetch import discard

        http = Http()  # its TLS context costs 40 ms: only when something is fetched
        compiler = Compiler(python)  # one bytecode pool for every entry (started lazily)
        total = sum(ref.size for p, _ in missing if (ref := p.wheel or p.sdist) is not None)
        log(f"Fetching {len(missing)} of {len(plan)} packages ({_size(total)})")
        progress.start(total)

        def add(item: tuple[LockedPackage, str]) -> str:
            package, key = item
            wheel = substitutes.take(package, key, store, progress.advance) if substitutes \
                else None
            if wheel is None:
                build_env = {n: store.entry(plan[n][1]) for n in inputs.get(package.name, ())}
                wheel = _wheel_for(package, store, http, manifest, (python, python_version),
                                   build_env, progress.advance)
            try:
                store.add_wheel(wheel, key, package.name, package.version, compiler,
                                package.wheel, keep=package.wheel is None)
            finally:
                discard(store.layout, wheel)
            progress.finished(f"{package.name} {package.version}")
            return f"{package.name} {package.version}"

        from concurrent.futures import ThreadPoolExecutor

        # No-isolation builds wait for the entries they compile against, then run one at a
        # time in the order their inputs allow (each may use every core: MAX_JOBS).
        later = [item for item in missing if item[0].name in inputs]
        try:
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                added.extend(pool.map(add, [i for i in missing if i not in later]))
            while later:
                ready = [i for i in later if all(store.has(plan[n][1])
                                                 for n in inputs[i[0].name])]
                added.append(add(ready[0]))  # store_keys refused a cycle: one is ready
                later.remove(ready[0])
        finally:
            compiler.close()
            progress.stop()
    entries: dict[str, Entry] = {name: store.entry(key) for name, (_, key) in plan.items()}
    built = generation.create(store, project, entries, python, python_version, digest,
                              lock_text, manifest.verify_imports, previous,
                              local_start=manifest.project.local_start)
    before_switch()
    faults.point("switch", built.generation.path)
    generation.switch(store, project, built.generation)
    return SyncResult(built.generation, added=added, reused=len(plan) - len(missing),
                      changes=changes, downloaded_bytes=progress.bytes,
                      seconds=time.perf_counter() - started)


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
