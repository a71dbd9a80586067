"""What a source build compiles against, the store key that follows from it, and the
environment a no-isolation build runs in.

A wheel's store key is its sha256 (mixed with the target CPython version when the wheel
runs on several: an entry's bytecode is one version's). A wheel built from source is keyed
by everything its bytes depend on and nothing else, so one lock gives the same key on every
pod and an entry built once (or taken from a cache) serves them all: the source (sdist hash
or git commit),
the target CPython ABI and platform, the group's build settings (`env`, build_requires)
and, for a `no_build_isolation` group, the keys of the packages in its build environment
— change the locked torch and the extension is built again.

That environment is made of the lock's own store entries: the closure of the group's
build_requires in the lock (every locked package that is not itself built without
isolation when the group names none), laid out as a throwaway generation in the store's
`tmp/`, so the build imports the locked torch and never the host's site-packages.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from packaging.utils import canonicalize_name

from gpulock.build import Builder, closure
from gpulock.errors import GpulockError
from gpulock.manifest import Group, Manifest
from gpulock.pins import Lock, LockedPackage
from gpulock.store import Entry, Store


def group_of(manifest: Manifest, package: LockedPackage) -> Group | None:
    """The group that lists `package` in its packages (build_requires do not count)."""
    return next((g for g in manifest.groups
                 if any(canonicalize_name(r.name) == package.name for r in g.packages)), None)


def builder_for(manifest: Manifest, package: LockedPackage) -> Builder:
    """How `package` builds from source, by its group's settings."""
    group = group_of(manifest, package)
    if group is None:
        return Builder(manifest.target.python)
    return Builder(manifest.target.python, isolation=not group.no_build_isolation,
                   env=group.env, build_requires=tuple(str(r) for r in group.build_requires))


def build_inputs(manifest: Manifest, lock: Lock) -> dict[str, list[str]]:
    """For each package built without isolation, the locked packages its build sees."""
    isolated_out = {p.name for p in lock.packages
                    if p.wheel is None and not builder_for(manifest, p).isolation}
    dependencies = {p.name: list(p.dependencies) for p in lock.packages}
    inputs = {}
    for package in lock.packages:
        if package.name not in isolated_out:
            continue
        group = group_of(manifest, package)
        wanted = [canonicalize_name(r.name) for r in group.build_requires] if group else []
        names = (closure(wanted, dependencies) if wanted
                 else sorted(dependencies.keys() - isolated_out))
        inputs[package.name] = [n for n in names if n != package.name]
    return inputs


def store_keys(manifest: Manifest, lock: Lock) -> dict[str, str]:
    """Every locked package's store key (see the module's docstring)."""
    packages = {p.name: p for p in lock.packages}
    inputs = build_inputs(manifest, lock)
    keys: dict[str, str] = {}
    visiting: list[str] = []

    def key(name: str) -> str:
        if name in keys:
            return keys[name]
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name):], name])
            raise GpulockError(f"no_build_isolation builds need each other to build first "
                               f"({cycle}); build one of them with isolation")
        visiting.append(name)
        package = packages[name]
        if package.wheel:
            digest = wheel_digest(package.wheel.name, package.wheel.sha256, lock.target.python)
        else:
            builder = builder_for(manifest, package)
            seen = [f"{n}={key(n)}" for n in inputs.get(name, ())]
            target = lock.target
            digest = hashlib.sha256("|".join([
                package.artifact, f"cp{target.python.replace('.', '')}", target.platform,
                target.glibc, builder.key, *seen]).encode()).hexdigest()
        visiting.pop()
        keys[name] = f"{digest}-{package.name}-{package.version}"
        return keys[name]

    for name in packages:
        key(name)
    return keys


def wheel_digest(filename: str, sha256: str, python: str) -> str:
    """A wheel's sha256, or for one that runs on several CPython versions (pure, abi3) its
    sha256 with the target's version mixed in: an entry holds bytecode for one version, and
    a 3.10 project sharing a 3.11 project's entry would compile at every import."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        tags = parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return sha256
    one_version = all(t.interpreter.startswith("cp") and t.abi not in ("abi3", "none")
                      for t in tags)
    if one_version:
        return sha256
    return hashlib.sha256(f"{sha256}|cp{python.replace('.', '')}".encode()).hexdigest()


@contextmanager
def environment(store: Store, label: str, entries: Sequence[Entry], python: str,
                python_version: str) -> Iterator[Path]:
    """A throwaway environment of `entries` on `python`; yields its `bin/python`."""
    from gpulock.env.generation import scaffold

    work = store.work_dir(f"buildenv-{label}")
    try:
        scaffold(work, entries, python, python_version)
        yield work / "bin" / "python"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def describe(builder: Builder, entries: Mapping[str, Entry]) -> str:
    """The environment of a no-isolation build in words, for a failure."""
    shown = ", ".join(f"{e.name} {e.version}" for e in list(entries.values())[:8])
    more = f" and {len(entries) - 8} more" if len(entries) > 8 else ""
    return (f"a no-isolation build on CPython {builder.python} against the locked "
            f"{shown or 'nothing'}{more}")
