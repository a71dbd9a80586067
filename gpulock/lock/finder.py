"""The candidates a package has for the target, and their dependencies.

Routes each name to its one index (explicit-index semantics: a name listed in a group with
an `index` comes only from there), keeps the files the target can install (tags by the
target's priority, requires-python, CUDA local labels), and reads metadata from the chosen
file. Index pages and metadata are fetched on a thread pool ahead of the resolver's need:
as soon as a name is known its page is requested, and as soon as a page arrives the
metadata of its most likely candidate is; once the resolver walks down a name's versions
(backtracking), the metadata of the next few is read ahead of it.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from gpulock.build import Builder
from gpulock.cache import METADATA
from gpulock.errors import GpulockError
from gpulock.lock import cuda
from gpulock.lock.index import DistFile, Index, Listing
from gpulock.lock.metadata import CoreMetadata, MetadataSource
from gpulock.lock.resolve import Candidate, Req
from gpulock.lock.vcs import GitSource, checkout
from gpulock.lock.vcs import resolve as resolve_git
from gpulock.target import Target

# packaging parses quoted marker values with ast.literal_eval, and CPython 3.11 keeps the AST
# builder's recursion depth in state shared by all threads: two threads parsing at once can
# fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
# The pool and the resolver both parse requirements, so they take turns; each text is parsed
# once per process.
_PARSE = threading.Lock()
# Versions whose metadata is read ahead of a resolver walking down a name's versions: each is
# a round trip or three (ranges of the wheel) that would otherwise come one after another.
# The window widens with the walk, as far as it has gone (a walk that has passed 30 versions
# rarely stops at the next 8): the big stack's lock walks gradio down 214 versions, and with
# 8 ahead it waited 6.3 s on metadata.
_AHEAD = 8
_AHEAD_MOST = 64


@functools.cache
def _parse_cached(text: str) -> Requirement | InvalidRequirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        return exc


def parse_requirement(text: str) -> Requirement:
    """`Requirement(text)`, safe to call from any thread (raises InvalidRequirement)."""
    with _PARSE:
        parsed = _parse_cached(text)
    if isinstance(parsed, InvalidRequirement):
        raise parsed
    return parsed


class IndexFinder:
    def __init__(self, target: Target, default_index: Index,
                 indexes: Mapping[NormalizedName, Index], metadata: MetadataSource,
                 builders: Mapping[NormalizedName, Builder], default_builder: Builder,
                 preferred: Mapping[NormalizedName, Version] | None = None,
                 no_deps: Iterable[str] = (), workers: int = 16,
                 no_build: Callable[[NormalizedName], bool] = lambda _name: False) -> None:
        self.target = target
        self.default_index = default_index
        self.indexes = dict(indexes)
        self.metadata = metadata
        self.builders = dict(builders)
        self.default_builder = default_builder
        self.preferred = dict(preferred or {})
        self.no_deps = frozenset(canonicalize_name(n) for n in no_deps)
        self.no_build = no_build
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpulock")
        self._lock = threading.Lock()
        self._pages: dict[NormalizedName, Future[list[Candidate]]] = {}
        self._metadata: dict[object, Future[CoreMetadata]] = {}
        self._unusable: dict[NormalizedName, tuple[list[str], list[str], set[Version]]] = {}
        self._git: dict[str, Future[GitSource]] = {}
        self._asked: dict[NormalizedName, int] = defaultdict(int)  # versions depended on

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def index_for(self, name: NormalizedName) -> Index:
        return self.indexes.get(name, self.default_index)

    # -- pages ----------------------------------------------------------------------------

    def prefetch(self, requirements: Iterable[Requirement | Req]) -> None:
        for requirement in requirements:
            self._page(canonicalize_name(requirement.name), requirement.specifier)

    def _page(self, name: NormalizedName, hint: SpecifierSet | None = None
              ) -> Future[list[Candidate]]:
        with self._lock:
            future = self._pages.get(name)
            if future is None:
                future = self.pool.submit(self._load_page, name, hint)
                self._pages[name] = future
        return future

    def _load_page(self, name: NormalizedName, hint: SpecifierSet | None) -> list[Candidate]:
        listing = self.index_for(name).files(name, keep=self._installable)
        candidates = self._select(name, listing)
        # Warm the metadata the resolver will most likely want: the locked pin, else the
        # newest version that fits the first requirement seen for this name.
        want = self.preferred.get(name)
        for candidate in candidates:
            if want is not None:
                if candidate.version != want:
                    continue
            elif hint is not None and not hint.contains(candidate.version):
                continue
            self._meta_future(candidate)
            break
        return candidates

    def _installable(self, filename: str) -> bool:
        return not filename.endswith(".whl") or self.target.wheel_rank(filename) is not None

    # -- candidates -----------------------------------------------------------------------

    def candidates(self, name: NormalizedName) -> Sequence[Candidate]:
        return self._page(name).result()

    def _select(self, name: NormalizedName, listing: Listing) -> list[Candidate]:
        by_version: dict[Version, list[DistFile]] = defaultdict(list)
        for dist in listing.files:
            if dist.name == name:
                by_version[dist.version].append(dist)
        reasons: list[str] = []
        wrong_cuda: list[str] = []
        too_new: dict[tuple[int, int], list[str]] = defaultdict(list)
        no_wheel: list[str] = []
        candidates: list[tuple[tuple[object, ...], Candidate]] = []
        label = self.target.cuda_label
        for version, dists in by_version.items():
            local = version.local or ""
            if label and local.startswith("cu") and local != label:
                wrong_cuda.append(str(version))
                continue
            # An unlabelled CUDA build (PyPI's) says its CUDA through NVIDIA's runtime
            # packages: one newer than the target's is never offered, so whatever needs it
            # backtracks to a build the pod's driver runs.
            built = cuda.built_for(name, version) if label and not local else None
            if built is not None and self.target.cuda and cuda.newer(built, self.target.cuda):
                too_new[built].append(str(version))
                continue
            usable = [d for d in dists if self.target.python_matches(d.requires_python)]
            if not usable:
                reasons.append(f"{name} {version} requires Python "
                               f"{dists[0].requires_python}")
                continue
            wheels = [d for d in usable if d.is_wheel]
            if wheels:
                chosen = min(wheels, key=lambda d: (self.target.wheel_rank(d.filename),
                                                    d.filename))
            elif self.no_build(name):
                no_wheel.append(str(version))
                continue
            else:
                chosen = sorted(usable, key=lambda d: not d.filename.endswith(".tar.gz"))[0]
            yanked = all(d.yanked for d in usable)
            # Among builds of one public version, the project's CUDA build comes first.
            rank = 2 if label and local == label else (1 if local else 0)
            candidates.append(((Version(version.public), rank, version),
                               Candidate(name, version, chosen, yanked=yanked)))
        if wrong_cuda:
            reasons.append(f"{name} {', '.join(sorted(wrong_cuda, key=Version))} "
                           f"{'is' if len(wrong_cuda) == 1 else 'are'} built for another "
                           f"CUDA than project.cuda = {self.target.cuda} (+{label})")
        for built, versions in sorted(too_new.items()):
            newest = sorted(versions, key=Version)[-3:]
            reasons.append(f"{name} {', '.join(newest)} {'is' if len(versions) == 1 else 'are'} "
                           f"built for CUDA {built[0]}.{built[1]}, newer than the target's "
                           f"cuda = {self.target.cuda}")
        if no_wheel:
            newest = sorted(no_wheel, key=Version)[-3:]
            reasons.append(f"{name} {', '.join(newest)} only have sdists, and no_build is set "
                           "for it (a pod never compiles by surprise)")
        if not by_version and not listing.skipped:
            reasons.append(f"{self.index_for(name).url} has no files for {name}")
        self._unusable[name] = (reasons, listing.skipped, set(by_version))
        candidates.sort(key=lambda pair: pair[0], reverse=True)
        return [c for _, c in candidates]

    def why_unusable(self, name: NormalizedName) -> list[str]:
        reasons, skipped, usable = self._unusable.get(name, ([], [], set()))
        only: dict[Version, set[str]] = defaultdict(set)
        for filename in skipped:
            try:
                version = Version(filename.split("-")[1])
            except (IndexError, ValueError):
                continue
            if version not in usable:
                only[version].add("-".join(filename[:-4].rsplit("-", 3)[1:]))
        for version in sorted(only, reverse=True)[:5]:
            tags = sorted(only[version])
            more = f" and {len(tags) - 3} more" if len(tags) > 3 else ""
            reasons.append(f"{name} {version} has no wheel for {self.target.describe()} "
                           f"(only {', '.join(tags[:3])}{more}) and no sdist")
        return reasons

    # -- direct references ----------------------------------------------------------------

    def url_candidate(self, name: NormalizedName, url: str) -> Candidate:
        if self.no_build(name):
            raise GpulockError(f"{name} @ {url} would be built from source, but no_build is "
                               "set for it")
        with self._lock:
            future = self._git.get(url)
            if future is None:
                future = self.pool.submit(resolve_git, url)
                self._git[url] = future
        source = future.result()
        metadata = self._meta_future(Candidate(name, Version("0"), source)).result()
        if canonicalize_name(metadata.name) != name:
            raise GpulockError(f"{url} builds '{metadata.name}', not '{name}'")
        return Candidate(name, Version(metadata.version), source, url=url)

    # -- metadata -------------------------------------------------------------------------

    def _meta_future(self, candidate: Candidate) -> Future[CoreMetadata]:
        key = candidate.source
        with self._lock:
            future = self._metadata.get(key)
            if future is None:
                future = self.pool.submit(self._read_metadata, candidate)
                self._metadata[key] = future
        return future

    def builder_for(self, name: NormalizedName) -> Builder:
        return self.builders.get(name, self.default_builder)

    def _read_metadata(self, candidate: Candidate) -> CoreMetadata:
        source = candidate.source
        if isinstance(source, GitSource):
            tree = checkout(source, self.metadata.cache.root)
            builder = self.builder_for(candidate.name)
            key = f"git:{source.commit}:{source.subdirectory}:{builder.metadata_key}"
            raw = self.metadata.cache.get_bytes(METADATA, key)
            if raw is None:
                raw = builder.metadata(Path(tree), source.url)
                self.metadata.cache.put_bytes(METADATA, key, raw)
            from gpulock.lock.metadata import parse_core_metadata

            return parse_core_metadata(raw)
        assert isinstance(source, DistFile)
        if source.is_wheel:
            metadata = self.metadata.wheel(source)
        else:
            metadata = self.metadata.sdist(source, self.builder_for(candidate.name))
        if candidate.name not in self.no_deps:
            self._prefetch_dependencies(metadata)
        return metadata

    def _prefetch_dependencies(self, metadata: CoreMetadata) -> None:
        """Follow the likely graph on the pool, ahead of the (sequential) resolver."""
        environment = {**self.target.marker_environment, "extra": ""}
        for text in metadata.requires_dist:
            try:
                requirement = parse_requirement(text)
            except InvalidRequirement:
                continue  # reported when the resolver asks for this candidate's dependencies
            if requirement.marker is None or requirement.marker.evaluate(environment):
                self._page(canonicalize_name(requirement.name), requirement.specifier)

    def _walk_ahead(self, candidate: Candidate) -> None:
        """From the second version of a name the resolver asks about (it is backtracking
        through them, newest first), read the metadata of the next older wheels (`_AHEAD`,
        and as many as the walk has passed, up to `_AHEAD_MOST`) on the pool, as uv's batch
        prefetch does: the walk then waits on one round trip, not one per version. Never an
        sdist: its metadata may take a build, only for a version the resolver really
        reaches."""
        with self._lock:
            self._asked[candidate.name] += 1
            asked = self._asked[candidate.name]
            page = self._pages.get(candidate.name)
        walking = asked > 1
        if not walking or page is None or not page.done() or page.exception() is not None:
            return
        listed = page.result()
        at = next((i for i, c in enumerate(listed) if c.source == candidate.source), None)
        if at is not None:
            ahead = min(_AHEAD_MOST, max(_AHEAD, asked))
            for older in listed[at + 1: at + 1 + ahead]:
                if isinstance(older.source, DistFile) and older.source.is_wheel:
                    self._meta_future(older)

    def dependencies(self, candidate: Candidate) -> Sequence[Requirement]:
        self._walk_ahead(candidate)
        metadata = self._meta_future(candidate).result()
        where = f"{candidate.name} {candidate.version}"
        if (canonicalize_name(metadata.name) != candidate.name
                or (not candidate.url and Version(metadata.version) != candidate.version)):
            raise GpulockError(f"the metadata of {where} names {metadata.name} "
                               f"{metadata.version}; the index lists a file it does not hold")
        requirements = []
        for text in metadata.requires_dist:
            try:
                requirements.append(parse_requirement(text))
            except InvalidRequirement as exc:
                raise GpulockError(f"{where} declares an invalid requirement {text!r}: "
                                   f"{exc}") from None
        return requirements
