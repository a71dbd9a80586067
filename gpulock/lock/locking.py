"""`gpulock lock`: a manifest and an optional previous lock in, a new lock out.

Wires the manifest's indexes, groups and target into the finder and resolver, keeps the
previous lock's pins as preferences (so re-locking moves only what must move), fills in
each pinned file's size and hash, and reports what changed. An unchanged manifest with an
existing lock is answered from the lock alone, with no network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from gpulock.build import Builder
from gpulock.cache import Cache
from gpulock.errors import GpulockError, LockfileError
from gpulock.http import Http
from gpulock.locations import default_store
from gpulock.lock import lockfile
from gpulock.lock.diff import diff
from gpulock.lock.finder import IndexFinder
from gpulock.lock.index import DistFile, Index
from gpulock.lock.metadata import MetadataSource
from gpulock.lock.resolve import Resolution, resolve
from gpulock.lock.vcs import GitSource
from gpulock.manifest import Group, Manifest, Model
from gpulock.pins import FileRef, Lock, LockedPackage, PinnedModel, VcsRef
from gpulock.store import Store


@dataclass
class LockResult:
    lock: Lock
    changes: list[str] = field(default_factory=list)
    written: bool = False
    up_to_date: bool = False
    stats: dict[str, int] = field(default_factory=dict)


def known_names(manifest: Manifest, previous: Lock | None) -> set[str]:
    """The names `--upgrade-package` may give: gpu.toml's packages and models, and the
    packages the previous lock pinned (dependencies too), normalized."""
    named = {p.name for p in previous.packages} if previous else set()
    named |= {canonicalize_name(r.name) for g in manifest.groups for r in g.packages}
    return named | {canonicalize_name(m.name) for m in manifest.models}


def read_previous(path: Path) -> Lock | None:
    """The existing lock, if one can be read; a damaged one is simply re-locked."""
    if not path.exists():
        return None
    try:
        return lockfile.read(path)
    except LockfileError:
        return None


def lock(manifest: Manifest, path: Path, *, upgrade: bool = False,
         upgrade_packages: Iterable[str] = (), cache: Cache | None = None,
         workers: int = 16, progress: Callable[[str], None] | None = None,
         store: Store | None = None, refresh: bool = False,
         models: Sequence[PinnedModel] | None = None) -> LockResult:
    """Lock `manifest` into `path`; `store` is where ref:// models look up other projects'
    pins (default: the project's default store); `refresh` revalidates every cached index
    page (as `upgrade` does), even one its max-age still holds fresh; `models`: pins made
    already (another target's: every target runs the same weights)."""
    upgrade_names = {canonicalize_name(n) for n in upgrade_packages}
    previous = read_previous(path)
    unknown = sorted(upgrade_names - known_names(manifest, previous))
    if unknown:
        raise GpulockError(f"--upgrade-package {unknown[0]}: no package or model of that name "
                           "is in gpu.toml or the lock")
    if (previous is not None and not upgrade and not upgrade_names and not refresh
            and previous.manifest_hash == manifest.content_hash
            and previous.target == manifest.target and not _beyond_cuda(previous)
            and {m.name for m in previous.models} == {m.name for m in manifest.models}
            and (models is None or list(previous.models) == list(models))):
        return LockResult(lock=previous, up_to_date=True)

    preferred: dict[NormalizedName, Version] = {}
    if previous is not None and not upgrade:
        for package in previous.packages:
            if package.name not in upgrade_names:
                preferred[canonicalize_name(package.name)] = Version(package.version)

    cache = cache or Cache()
    http = Http()
    indexes: dict[str, Index] = {}

    def index(url: str) -> Index:
        return indexes.setdefault(url, Index(url, http, cache, refresh=refresh or upgrade))

    metadata = MetadataSource(http, cache)
    # A no-isolation group without build_requires builds at sync against every other locked
    # package; its metadata hook at lock time sees the same: the rest, resolved first, from
    # their locked wheels (nothing compiled, nothing needed on this machine).
    implicit = {g.name for g in manifest.groups if g.no_build_isolation and not g.build_requires}
    sees: tuple[tuple[str, str], ...] = ()
    # setup.py's own build system, locked beside such a group where the index has it: the
    # build at sync sees only locked packages.
    with_setuptools = bool(implicit) and _listed(index(manifest.index_for("setuptools")),
                                                 "setuptools")
    if implicit:
        rest = [g for g in manifest.groups if g.name not in implicit]
        finder, first = _resolve(manifest, rest, (), preferred, index, metadata, workers,
                                 progress)
        finder.close()
        sees = tuple((pin.source.url, f"{name}=={pin.version}")
                     for name, pin in sorted(first.pins.items())
                     if isinstance(pin.source, DistFile) and pin.source.is_wheel)
        # The versions the hook saw come first: the lock should be what it was built against.
        preferred = {**preferred, **{n: p.version for n, p in first.pins.items()}}
    finder, resolution = _resolve(manifest, manifest.groups, sees, preferred, index, metadata,
                                  workers, progress, with_setuptools)
    try:
        known = {ref.url: p for p in (previous.packages if previous else ())
                 if (ref := p.wheel or p.sdist) is not None}

        def locked(name: NormalizedName) -> LockedPackage:
            pin = resolution.pins[name]
            return _locked(pin.source, name, pin.version, resolution.dependencies[name],
                           resolution.groups[name], metadata, known)

        packages = list(finder.pool.map(locked, sorted(resolution.pins)))
    finally:
        finder.close()
    return _write(manifest, path, previous, packages, metadata, http, indexes, upgrade,
                  upgrade_names, store, models)


def _resolve(manifest: Manifest, groups: Sequence[Group], sees: tuple[tuple[str, str], ...],
             preferred: Mapping[NormalizedName, Version], index: Callable[[str], Index],
             metadata: MetadataSource, workers: int,
             progress: Callable[[str], None] | None, with_setuptools: bool = False
             ) -> tuple[IndexFinder, Resolution]:
    """Resolve `groups` for the manifest's target; `sees`: the wheels a no-isolation
    metadata hook without build_requires is given; `with_setuptools`: setuptools locked
    beside such a group. The finder is the caller's to close."""
    target = manifest.target
    routed: dict[NormalizedName, Index] = {}
    builders: dict[NormalizedName, Builder] = {}
    no_deps: set[str] = set()
    roots = []
    for group in groups:
        builder = _builder(manifest, group, preferred, sees)
        for requirement in group.packages:
            name = canonicalize_name(requirement.name)
            if group.index:
                routed[name] = index(group.index)
            if group.no_deps:
                no_deps.add(name)
            if group.no_build_isolation or group.env:
                builders[name] = builder
            roots.append((group.name, requirement))
        # Locked with everything else: the build sees the versions that run beside it.
        roots += [(group.name, requirement) for requirement in group.build_requires]
        if with_setuptools and group.no_build_isolation and not group.build_requires:
            roots.append((group.name, Requirement("setuptools")))
    finder = IndexFinder(target, index(manifest.project.index), routed, metadata, builders,
                         Builder(target.python), preferred=preferred, no_deps=no_deps,
                         workers=workers, no_build=manifest.no_build_for)
    try:
        resolution = resolve(roots, finder, target.marker_environment, no_deps=no_deps,
                             preferred=preferred, target=target.describe(), progress=progress,
                             prerelease=manifest.prerelease_for)
    except BaseException:
        finder.close()
        raise
    return finder, resolution


def _listed(index: Index, name: str) -> bool:
    """Whether `index` offers any file of `name`."""
    try:
        return bool(index.files(name).files)
    except GpulockError:
        return False


def _write(manifest: Manifest, path: Path, previous: Lock | None,
           packages: list[LockedPackage], metadata: MetadataSource, http: Http,
           indexes: dict[str, Index], upgrade: bool, upgrade_names: AbstractSet[str],
           store: Store | None, models: Sequence[PinnedModel] | None) -> LockResult:
    """The lock of `packages` and the models written to `path`, and what changed."""
    target = manifest.target
    if models is None:
        models = pin_models(manifest, previous, upgrade, upgrade_names, store)
    new = Lock(target=target, manifest_hash=manifest.content_hash, packages=tuple(packages),
               models=tuple(models))
    result = LockResult(lock=new, changes=diff(previous, new))
    result.written = lockfile.write(path, new)
    result.stats = {
        "pages_fetched": sum(i.pages_fetched for i in indexes.values()),
        "pages_revalidated": sum(i.pages_revalidated for i in indexes.values()),
        "range_bytes": metadata.range_bytes,
        "full_downloads": metadata.full_downloads,
        "bytes_received": http.bytes_received,
    }
    return result


def _beyond_cuda(lock: Lock) -> bool:
    """Whether `lock` (made before CUDA constrained the resolution) holds builds for a newer
    CUDA than its target's: such a lock is resolved again, not kept."""
    from gpulock.lock.cuda import newer

    needed = lockfile.cuda_needed(lock)
    if not needed or not lock.target.cuda:
        return False
    major, minor = (int(part) for part in needed.split("."))
    return newer((major, minor), lock.target.cuda)


def _builder(manifest: Manifest, group: Group, preferred: Mapping[NormalizedName, Version],
             sees: tuple[tuple[str, str], ...] = ()) -> Builder:
    """How the group's sources build; a no-isolation metadata build takes build_requires
    from the group's index first, then the project's and the other groups'; without
    build_requires it is given `sees` (the other groups' locked wheels)."""
    indexes = dict.fromkeys([group.index or manifest.project.index, manifest.project.index,
                             *(g.index for g in manifest.groups if g.index)])
    return Builder(manifest.target.python, isolation=not group.no_build_isolation,
                   env=group.env, build_requires=tuple(str(r) for r in group.build_requires),
                   indexes=tuple(i for i in indexes if i),
                   pins=tuple(sorted((n, str(v)) for n, v in preferred.items())),
                   sees=sees if group.no_build_isolation and not group.build_requires else ())


def _locked(source: object, name: str, version: Version, dependencies: Sequence[str],
            groups: Sequence[str], metadata: MetadataSource, known: dict[str, LockedPackage]
            ) -> LockedPackage:
    if isinstance(source, GitSource):
        return LockedPackage(name=name, version=str(version),
                             vcs=VcsRef(url=source.url, commit_id=source.commit,
                                        requested_revision=source.requested_revision,
                                        subdirectory=source.subdirectory),
                             dependencies=tuple(dependencies), groups=tuple(groups))
    assert isinstance(source, DistFile)
    previous = known.get(source.url)
    previous_ref = previous and (previous.wheel or previous.sdist)
    if previous_ref and (not source.sha256 or source.sha256 == previous_ref.sha256):
        sha256, size = previous_ref.sha256, previous_ref.size
    else:
        sha256, size = metadata.facts(source)
    ref = FileRef(name=source.filename, url=source.url, size=size, sha256=sha256,
                  upload_time=lockfile.parse_time(source.upload_time))
    return LockedPackage(name=name, version=str(version), index=source.index,
                         wheel=ref if source.is_wheel else None,
                         sdist=None if source.is_wheel else ref,
                         requires_python=source.requires_python,
                         dependencies=tuple(dependencies), groups=tuple(groups))


def pin_models(manifest: Manifest, previous: Lock | None, upgrade: bool,
               upgrade_names: AbstractSet[str], store: Store | None = None
               ) -> list[PinnedModel]:
    """Each model's pin: kept from the previous lock while its request is unchanged."""
    from concurrent.futures import ThreadPoolExecutor

    from gpulock.sources import pin, refuse_cycles, requested_revision

    kept = {m.name: m for m in (previous.models if previous else ())}
    store = store or Store(default_store(manifest.path.parent))

    def one(model: Model) -> PinnedModel:
        old = kept.get(model.name)
        if old is not None and old.matches(model, requested_revision(model)) and not upgrade and (
                canonicalize_name(model.name) not in upgrade_names):
            return old
        return pin(model, store)

    refuse_cycles(store, manifest.project.name, manifest.models)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, manifest.models))
