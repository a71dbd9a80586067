"""The candidates a package has for the target, and their dependencies.

Routes each name to its one index (explicit-index semantics: a name listed in a group with
an `index` comes only from there), keeps the files the target can install (tags by the
target's priority, requires-python, CUDA local labels), and reads metadata from the chosen
file. Index pages and metadata are fetched on a thread pool ahead of the resolver's need:
as soon as a name is known its page is requested, and as soon as a page arrives the
metadata of its most likely candidate is.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from gpulock.errors import GpulockError
from gpulock.index import DistFile, Index
from gpulock.metadata import Builder, CoreMetadata, MetadataSource
from gpulock.resolve import Candidate
from gpulock.target import Target
from gpulock.vcs import GitSource, checkout
from gpulock.vcs import resolve as resolve_git


class IndexFinder:
    def __init__(self, target: Target, default_index: Index,
                 indexes: Mapping[NormalizedName, Index], metadata: MetadataSource,
                 builders: Mapping[NormalizedName, Builder], default_builder: Builder,
                 preferred: Mapping[NormalizedName, Version] | None = None,
                 workers: int = 16) -> None:
        self.target = target
        self.default_index = default_index
        self.indexes = dict(indexes)
        self.metadata = metadata
        self.builders = dict(builders)
        self.default_builder = default_builder
        self.preferred = dict(preferred or {})
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpulock")
        self._lock = threading.Lock()
        self._pages: dict[NormalizedName, Future[list[Candidate]]] = {}
        self._metadata: dict[object, Future[CoreMetadata]] = {}
        self._unusable: dict[NormalizedName, list[str]] = defaultdict(list)
        self._git: dict[str, Future[GitSource]] = {}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def index_for(self, name: NormalizedName) -> Index:
        return self.indexes.get(name, self.default_index)

    # -- pages ----------------------------------------------------------------------------

    def prefetch(self, names: Iterable[NormalizedName]) -> None:
        for name in names:
            self._page(name)

    def _page(self, name: NormalizedName) -> Future[list[Candidate]]:
        with self._lock:
            future = self._pages.get(name)
            if future is None:
                future = self.pool.submit(self._load_page, name)
                self._pages[name] = future
        return future

    def _load_page(self, name: NormalizedName) -> list[Candidate]:
        candidates = self._select(name, self.index_for(name).files(name))
        # Warm the metadata the resolver will most likely want first.
        want = self.preferred.get(name)
        for candidate in candidates:
            if want is None or candidate.version == want:
                self._meta_future(candidate)
                break
        return candidates

    # -- candidates -----------------------------------------------------------------------

    def candidates(self, name: NormalizedName) -> Sequence[Candidate]:
        return self._page(name).result()

    def _select(self, name: NormalizedName, files: list[DistFile]) -> list[Candidate]:
        priority = self.target.tag_priority
        by_version: dict[Version, list[DistFile]] = defaultdict(list)
        for dist in files:
            if dist.name == name:
                by_version[dist.version].append(dist)
        reasons: list[str] = []
        wrong_cuda: list[str] = []
        candidates: list[tuple[tuple[object, ...], Candidate]] = []
        label = self.target.cuda_label
        for version, dists in by_version.items():
            local = version.local or ""
            if label and local.startswith("cu") and local != label:
                wrong_cuda.append(str(version))
                continue
            usable = [d for d in dists if self.target.python_matches(d.requires_python)]
            if not usable:
                reasons.append(f"{name} {version} requires Python "
                               f"{dists[0].requires_python}")
                continue
            wheels = [(min(priority[t] for t in d.tags if t in priority), d)
                      for d in usable if d.is_wheel and any(t in priority for t in d.tags)]
            sdists = [d for d in usable if not d.is_wheel]
            if wheels:
                chosen = min(wheels, key=lambda pair: (pair[0], pair[1].filename))[1]
            elif sdists:
                chosen = sorted(sdists, key=lambda d: not d.filename.endswith(".tar.gz"))[0]
            else:
                sample = sorted({t for d in usable for t in d.tags})[:3]
                reasons.append(f"{name} {version} has no wheel for "
                               f"{self.target.describe()} (only "
                               f"{', '.join(sample)}) and no sdist")
                continue
            yanked = all(d.yanked for d in usable)
            # Among builds of one public version, the project's CUDA build comes first.
            rank = 2 if label and local == label else (1 if local else 0)
            candidates.append(((Version(version.public), rank, version),
                               Candidate(name, version, chosen, yanked=yanked)))
        if wrong_cuda:
            reasons.append(f"{name} {', '.join(sorted(wrong_cuda, key=Version))} "
                           f"{'is' if len(wrong_cuda) == 1 else 'are'} built for another "
                           f"CUDA than project.cuda = {self.target.cuda} (+{label})")
        if not by_version:
            reasons.append(f"{self.index_for(name).url} has no files for {name}")
        self._unusable[name] = reasons
        candidates.sort(key=lambda pair: pair[0], reverse=True)
        return [c for _, c in candidates]

    def why_unusable(self, name: NormalizedName) -> list[str]:
        return self._unusable.get(name, [])

    # -- direct references ----------------------------------------------------------------

    def url_candidate(self, name: NormalizedName, url: str) -> Candidate:
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
            key = f"git:{source.commit}:{source.subdirectory}:{builder.key}"
            raw = self.metadata.cache.get_bytes("metadata", key)
            if raw is None:
                raw = builder.metadata(Path(tree), source.url)
                self.metadata.cache.put_bytes("metadata", key, raw)
            from gpulock.metadata import parse_core_metadata

            return parse_core_metadata(raw)
        assert isinstance(source, DistFile)
        if source.is_wheel:
            return self.metadata.wheel(source)
        return self.metadata.sdist(source, self.builder_for(candidate.name))

    def dependencies(self, candidate: Candidate) -> Sequence[Requirement]:
        metadata = self._meta_future(candidate).result()
        where = f"{candidate.name} {candidate.version}"
        if (canonicalize_name(metadata.name) != candidate.name
                or (not candidate.url and Version(metadata.version) != candidate.version)):
            raise GpulockError(f"the metadata of {where} names {metadata.name} "
                               f"{metadata.version}; the index lists a file it does not hold")
        requirements = []
        for text in metadata.requires_dist:
            try:
                requirements.append(Requirement(text))
            except InvalidRequirement as exc:
                raise GpulockError(f"{where} declares an invalid requirement {text!r}: "
                                   f"{exc}") from None
        return requirements
