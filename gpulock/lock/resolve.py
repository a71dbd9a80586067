"""The resolver: requirements in, one pinned candidate per package out.

A small resolvelib provider over a `Finder` (the protocol that lists a package's usable
candidates for the target and reads their dependencies), so the same core resolves real
indexes in `gpulock lock` and generated graphs in the property tests. Markers are evaluated
for the target, extras follow pip's model (`name[x]` depends on `name` at the same
version), `no_deps` packages contribute no edges, an existing lock's pins are tried first,
and an impossible resolution is explained as the chains of requirements that collide.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version
from resolvelib import AbstractProvider, BaseReporter
from resolvelib.resolvers import ResolutionImpossible, ResolutionTooDeep
from resolvelib.resolvers.resolution import Resolution as _Resolvelib

from gpulock.errors import ResolutionError


@dataclass(frozen=True)
class Candidate:
    name: NormalizedName
    version: Version
    source: Hashable  # what the finder pins: an index file, a git commit...
    extras: frozenset[str] = frozenset()
    yanked: bool = False
    url: str | None = None  # set for direct (git) references

    def __str__(self) -> str:
        extras = f"[{','.join(sorted(self.extras))}]" if self.extras else ""
        return f"{self.name}{extras} {self.version}"


@dataclass(frozen=True)
class Req:
    """A requirement with the words that say where it came from."""

    name: NormalizedName
    specifier: SpecifierSet
    extras: frozenset[str] = frozenset()
    url: str | None = None
    text: str = ""
    origin: str = ""  # "group 'standard'" or the candidate that depends on it

    @classmethod
    def parse(cls, requirement: Requirement, origin: str) -> Req:
        text = str(requirement)
        if requirement.marker is not None:
            text = text.split(";", 1)[0].strip()
        return cls(name=canonicalize_name(requirement.name), specifier=requirement.specifier,
                   extras=frozenset(canonicalize_name(e) for e in requirement.extras),
                   url=requirement.url, text=text, origin=origin)

    def __str__(self) -> str:
        return self.text or f"{self.name}{self.specifier}"

    @cached_property
    def versions_key(self) -> tuple[str, str]:
        """What decides which versions this requirement admits: the name and specifier."""
        return self.name, str(self.specifier)


class Finder(Protocol):
    def candidates(self, name: NormalizedName) -> Sequence[Candidate]:
        """Usable candidates for the target, best first (yanked ones flagged)."""

    def url_candidate(self, name: NormalizedName, url: str) -> Candidate:
        """The candidate a direct reference (`name @ git+...`) stands for."""

    def dependencies(self, candidate: Candidate) -> Sequence[Requirement]:
        """Requires-Dist of the candidate, markers not yet evaluated."""

    def prefetch(self, requirements: Iterable[Req]) -> None:
        """A hint that these requirements' names will be asked for soon."""

    def why_unusable(self, name: NormalizedName) -> list[str]:
        """Why files of this name were not offered as candidates, in words."""


@dataclass
class Resolution:
    pins: dict[NormalizedName, Candidate]
    dependencies: dict[NormalizedName, list[NormalizedName]]
    groups: dict[NormalizedName, list[str]]


def _identify(name: str, extras: frozenset[str]) -> str:
    return f"{name}[{','.join(sorted(extras))}]" if extras else name


def _allows_prerelease(specifier: SpecifierSet) -> bool:
    """PEP 440: a specifier that names a pre-release to include it (`>=2.0b1`, `==2.0rc1`)
    opts in; one that excludes it (`!=2.0b1`) does not."""
    for spec in specifier:
        try:
            if spec.prereleases:
                return True
        except ValueError:  # `===` with a string that is no version
            continue
    return False


def _prereleases_allowed(policy: str, reqs: Sequence[Req], base: Sequence[Candidate]) -> bool:
    explicit = any(_allows_prerelease(r.specifier) for r in reqs)
    necessary = bool(base) and all(c.version.is_prerelease for c in base)
    return {"allow": True, "disallow": False, "explicit": explicit, "if-necessary": necessary,
            "if-necessary-or-explicit": explicit or necessary}[policy]


@dataclass
class _Provider(AbstractProvider):  # type: ignore[misc]
    finder: Finder
    environment: Mapping[str, str]
    no_deps: frozenset[NormalizedName]
    preferred: Mapping[NormalizedName, Version]
    prerelease: Callable[[NormalizedName], str] = lambda _name: "if-necessary-or-explicit"
    origins: dict[str, list[tuple[Req, Candidate | None]]] = field(default_factory=dict)
    requested: dict[str, int] = field(default_factory=dict)  # manifest order of the roots
    # The versions of a name a specifier admits, by (name, specifier): resolvelib asks
    # again each time a package gains a requirement, and checking every version against
    # every specifier anew was most of a big lock's CPU (913,519 checks, 2.6 s of 13).
    _admitted: dict[tuple[str, str], frozenset[Version]] = field(default_factory=dict)

    def identify(self, requirement_or_candidate: Req | Candidate) -> str:
        return _identify(requirement_or_candidate.name, requirement_or_candidate.extras)

    def narrow_requirement_selection(self, identifiers: Iterable[str],
                                     resolutions: Mapping[str, Candidate],
                                     candidates: Mapping[str, Iterator[Candidate]],
                                     information: Mapping[str, Iterator[Any]],
                                     backtrack_causes: Sequence[Any]) -> Iterable[str]:
        """While backtracking, the packages that caused it first (pip's choice): the
        conflict has to be settled there before anything else can be pinned for good."""
        causes = set()
        for cause in backtrack_causes:
            causes.add(self.identify(cause.requirement))
            if cause.parent is not None:
                causes.add(self.identify(cause.parent))
        identifiers = list(identifiers)
        return [i for i in identifiers if i in causes] or identifiers

    def get_preference(self, identifier: str, resolutions: Mapping[str, Candidate],
                       candidates: Mapping[str, Iterator[Candidate]],
                       information: Mapping[str, Iterator[Any]],
                       backtrack_causes: Sequence[Any]) -> tuple[Any, ...]:
        """pip's order: direct references, then pinned (`==`), then upper-bounded (`<`,
        `<=`, `~=`, `==x.*`: they rule out the newest, often impossible, versions first),
        then the manifest's own requirements in their order; among the rest, the name with
        the fewest candidates left (resolvelib's advice: a conflict there shows soonest),
        constrained before unconstrained."""
        requirements = [info.requirement for info in information[identifier]]
        operators = [(s.operator, s.version) for r in requirements for s in r.specifier]
        direct = any(r.url for r in requirements)
        pinned = any(op in ("==", "===") and "*" not in version for op, version in operators)
        upper = any(op in ("<", "<=", "~=") or (op == "==" and "*" in version)
                    for op, version in operators)
        requested = self.requested.get(identifier, len(self.requested))
        left = sum(1 for _ in candidates[identifier])
        return (not direct, not pinned, not upper, requested, left, not operators, identifier)

    def find_matches(self, identifier: str, requirements: Mapping[str, Iterator[Req]],
                     incompatibilities: Mapping[str, Iterator[Candidate]]) -> list[Candidate]:
        reqs = list(requirements[identifier])
        if not reqs:
            return []
        name, extras = reqs[0].name, reqs[0].extras
        bad = {c.version for c in incompatibilities[identifier]}
        urls = {r.url for r in reqs if r.url}
        if len(urls) > 1:
            return []
        if urls:
            base = [self.finder.url_candidate(name, urls.pop())]
        else:
            base = list(self.finder.candidates(name))
        prerelease = _prereleases_allowed(self.prerelease(name), reqs, base)
        exact = {s.version for r in reqs for s in r.specifier if s.operator in ("==", "===")
                 and "*" not in s.version}
        admitted = None if urls else self._admitted_by_all(name, reqs, base)
        matches = []
        for candidate in base:
            if candidate.version in bad:
                continue
            if candidate.yanked and str(candidate.version) not in exact:
                continue
            if candidate.version.is_prerelease and not prerelease and not candidate.url:
                continue
            if candidate.version in admitted if admitted is not None else \
                    all(self._satisfies(r, candidate) for r in reqs):
                matches.append(Candidate(candidate.name, candidate.version, candidate.source,
                                         extras, candidate.yanked, candidate.url))
        want = self.preferred.get(name)
        if want is not None:
            matches.sort(key=lambda c: c.version != want)
        return matches

    def _admitted_by_all(self, name: NormalizedName, reqs: Sequence[Req],
                         base: Sequence[Candidate]) -> frozenset[Version]:
        """The versions in `base` that every one of `reqs` (none a URL) admits."""
        admitted = self._admitted_by(name, reqs[0], base)
        for requirement in reqs[1:]:
            admitted &= self._admitted_by(name, requirement, base)
        return admitted

    def _admitted_by(self, name: NormalizedName, requirement: Req,
                     base: Sequence[Candidate]) -> frozenset[Version]:
        admitted = self._admitted.get(requirement.versions_key)
        if admitted is None:
            contains = requirement.specifier.contains
            admitted = frozenset(c.version for c in base if contains(c.version, prereleases=True))
            self._admitted[requirement.versions_key] = admitted
        return admitted

    @staticmethod
    def _satisfies(requirement: Req, candidate: Candidate) -> bool:
        if requirement.url and requirement.url != candidate.url:
            return False
        return requirement.specifier.contains(candidate.version, prereleases=True)

    def is_satisfied_by(self, requirement: Req, candidate: Candidate) -> bool:
        # find_matches has seen every requirement resolvelib asks about here.
        admitted = None if requirement.url or candidate.url else \
            self._admitted.get(requirement.versions_key)
        if admitted is None:
            return self._satisfies(requirement, candidate)
        return candidate.version in admitted

    def get_dependencies(self, candidate: Candidate) -> list[Req]:
        origin = f"{candidate.name} {candidate.version}"
        deps: list[Req] = []
        if candidate.extras:
            # pip's model: name[x] is name at the same version plus x's requirements.
            spec = SpecifierSet(f"=={candidate.version}")
            deps.append(Req(candidate.name, spec, url=candidate.url,
                            text=f"{candidate.name}=={candidate.version}", origin=origin))
        if candidate.name in self.no_deps:
            return self._record(deps, candidate)
        for requirement in self.finder.dependencies(candidate):
            if not self._applies(requirement.marker, candidate.extras):
                continue
            deps.append(Req.parse(requirement, origin))
        self.finder.prefetch(deps)
        return self._record(deps, candidate)

    def _applies(self, marker: Marker | None, extras: frozenset[str]) -> bool:
        if marker is None:
            return True
        for extra in extras or {""}:
            if marker.evaluate({**self.environment, "extra": extra}):
                return True
        return False

    def _record(self, deps: list[Req], parent: Candidate) -> list[Req]:
        for dep in deps:
            self.origins.setdefault(self.identify(dep), []).append((dep, parent))
        return deps


class _Reporter(BaseReporter):  # type: ignore[misc]
    """Counts rounds and what is backtracked on, and says so every few seconds."""

    EVERY = 0.25  # seconds between progress reports (the CLI thins them out for logs)

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress = progress
        self.rounds = 0
        self.pinned = 0
        self.rejected: Counter[str] = Counter()
        self.conflicts: dict[str, list[str]] = {}
        self._said = time.monotonic()

    def starting_round(self, index: int) -> None:
        self.rounds = index
        if self.progress and time.monotonic() - self._said >= self.EVERY:
            self._said = time.monotonic()
            busiest = ", ".join(name for name, _ in self.rejected.most_common(4))
            self.progress(f"resolving: {self.rounds} rounds, {self.pinned} packages pinned"
                          + (f", backtracking on {busiest}" if busiest else ""))

    def ending_round(self, index: int, state: Any) -> None:
        self.pinned = len(state.mapping)

    def rejecting_candidate(self, criterion: Any, candidate: Candidate) -> None:
        self.rejected[candidate.name] += 1
        self.conflicts[candidate.name] = [
            f"{info.parent} depends on {info.requirement}" if info.parent
            else f"{info.requirement.origin} asks for {info.requirement}"
            for info in criterion.information][:4]

    def gave_up(self, target: str) -> ResolutionError:
        """The packages backtracked on most, and the requirements on them that collide."""
        busiest = self.rejected.most_common(3)
        names = ", ".join(f"{name} (a candidate rejected {count} times)"
                          for name, count in busiest)
        details = [f"  - {line}" for name, _ in busiest for line in self.conflicts[name]]
        return ResolutionError(
            f"gave up resolving for {target} after {self.rounds} rounds, backtracking on "
            f"{names or 'nothing'}; pin these more tightly in gpu.toml (the requirements "
            "below keep conflicting)", details=details)


def resolve(roots: Sequence[tuple[str, Requirement]], finder: Finder,
            environment: Mapping[str, str], *, no_deps: Iterable[str] = (),
            preferred: Mapping[NormalizedName, Version] | None = None,
            target: str = "the target", progress: Callable[[str], None] | None = None,
            max_rounds: int = 200_000,
            prerelease: Callable[[NormalizedName], str] | None = None) -> Resolution:
    """Resolve `(group, requirement)` roots together; raise ResolutionError in words.

    `progress` hears, every few seconds of a long resolution, how far it got; `prerelease`
    gives each package's pre-release policy (manifest.PRERELEASES)."""
    provider = _Provider(finder=finder, environment=environment,
                         no_deps=frozenset(canonicalize_name(n) for n in no_deps),
                         preferred={canonicalize_name(k): v for k, v in (preferred or {}).items()})
    if prerelease is not None:
        provider.prerelease = prerelease
    requirements = []
    for group, requirement in roots:
        if requirement.marker is not None and not requirement.marker.evaluate(
                {**environment, "extra": ""}):
            continue
        req = Req.parse(requirement, f"group '{group}'")
        provider.origins.setdefault(provider.identify(req), []).append((req, None))
        provider.requested.setdefault(provider.identify(req), len(provider.requested))
        requirements.append(req)
    finder.prefetch(requirements)
    reporter = _Reporter(progress)
    try:
        state = _Resolvelib(provider, reporter).resolve(requirements, max_rounds=max_rounds)
    except ResolutionImpossible as exc:
        raise _explain(exc, provider, finder, target) from None
    except ResolutionTooDeep:
        raise reporter.gave_up(target) from None
    mapping, edges = _reachable(state)

    pins: dict[NormalizedName, Candidate] = {}
    for candidate in mapping.values():
        pins.setdefault(candidate.name, Candidate(candidate.name, candidate.version,
                                                  candidate.source, url=candidate.url))
    dependencies: dict[NormalizedName, set[NormalizedName]] = {name: set() for name in pins}
    for parent_key, child_key in edges:
        parent, child = mapping[parent_key].name, mapping[child_key].name
        if child != parent:
            dependencies[parent].add(child)
    groups: dict[NormalizedName, set[str]] = {name: set() for name in pins}
    for group, requirement in roots:
        name = canonicalize_name(requirement.name)
        stack = [name] if name in pins else []
        while stack:
            current = stack.pop()
            if group in groups[current]:
                continue
            groups[current].add(group)
            stack.extend(dependencies[current])
    return Resolution(pins=pins,
                      dependencies={k: sorted(v) for k, v in dependencies.items()},
                      groups={k: sorted(v) for k, v in groups.items()})


def _reachable(state: Any) -> tuple[dict[str, Candidate], set[tuple[str, str]]]:
    """The pins reachable from the roots, and the edges between them.

    resolvelib's own result builder walks parents recursively without remembering what it
    visited, and recurses forever when backtracking leaves a parent cycle that no longer
    reaches the roots (found by the property test). This is the same walk, iterative.
    """
    mapping: dict[str, Candidate] = dict(state.mapping)
    key_of = {id(candidate): key for key, candidate in mapping.items()}
    parents: dict[str, set[str | None]] = {}
    for key in mapping:
        criterion = state.criteria.get(key)
        found: set[str | None] = set()
        for parent in criterion.iter_parent() if criterion is not None else ():
            if parent is None:
                found.add(None)
            elif id(parent) in key_of:
                found.add(key_of[id(parent)])
        parents[key] = found
    connected: set[str | None] = {None}
    changed = True
    while changed:
        changed = False
        for key, found in parents.items():
            if key not in connected and found & connected:
                connected.add(key)
                changed = True
    kept = {key: c for key, c in mapping.items() if key in connected}
    edges = {(parent, key) for key, found in parents.items() if key in kept
             for parent in found if parent is not None and parent in kept}
    return kept, edges


def _chain(req: Req, parent: Candidate | None, provider: _Provider) -> str:
    """'group 'a' asks for x>=1, x 1.0 depends on y<2' — how a requirement came to be."""
    steps = [f"{parent} depends on {req}" if parent else f"{req.origin} asks for {req}"]
    seen = set()
    while parent is not None and len(steps) < 12:
        key = provider.identify(parent)
        if key in seen:
            break
        seen.add(key)
        found = [(r, p) for r, p in provider.origins.get(key, [])
                 if provider._satisfies(r, parent)] or provider.origins.get(key, [])
        if not found:
            break
        req, parent = found[0]
        steps.append(f"{parent} depends on {req}" if parent else f"{req.origin} asks for {req}")
    return ", and ".join(reversed(steps))


def _explain(exc: ResolutionImpossible, provider: _Provider, finder: Finder,
             target: str) -> ResolutionError:
    causes = list(exc.causes)
    names = sorted({c.requirement.name for c in causes})
    details = []
    for info in causes:
        details.append(f"  - {_chain(info.requirement, info.parent, provider)}")
    if len(names) == 1 and len({str(c.requirement.specifier) for c in causes}) == 1:
        name = names[0]
        req = causes[0].requirement
        available = finder.candidates(name) if not req.url else []
        versions = sorted({str(c.version) for c in available}, key=Version)
        if available:
            details.append(f"  available for {target}: {', '.join(versions[-8:])}")
        held_back = [str(c.version) for c in available if c.version.is_prerelease
                     and req.specifier.contains(c.version, prereleases=True)]
        if held_back:
            policy = provider.prerelease(canonicalize_name(name))
            details.append(f"  {', '.join(held_back[:4])} would fit but "
                           f"{'is a pre-release' if len(held_back) == 1 else 'are pre-releases'}"
                           f", which prerelease = \"{policy}\" leaves out (set prerelease = "
                           "\"allow\" on its group to take them)")
        details.extend(f"  {reason}" for reason in finder.why_unusable(name))
        return ResolutionError(f"cannot lock for {target}: no version of {name} satisfies "
                               f"{req}", details=details)
    for name in names:
        details.extend(f"  {reason}" for reason in finder.why_unusable(name))
    subject = " and ".join(names)
    return ResolutionError(f"cannot lock for {target}: the requirements on {subject} conflict",
                           details=details)
