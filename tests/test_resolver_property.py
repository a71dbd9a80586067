"""The resolver agrees with brute force on generated dependency graphs."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.utils import NormalizedName
from packaging.version import Version

from gpulock.errors import ResolutionError
from gpulock.lock.resolve import Candidate, Req, resolve
from gpulock.target import Target

NAMES = ["a", "b", "c", "d"]
VERSIONS = ["1", "2", "3"]
SPECS = ["", ">=2", "<2", "==1", "!=3", ">1,<3", "==3"]
ENV = Target("3.10").marker_environment

Graph = dict[str, dict[str, list[str]]]


class GraphFinder:
    """A Finder over an in-memory graph: name -> version -> requirement strings."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def candidates(self, name: NormalizedName) -> Sequence[Candidate]:
        versions = sorted(self.graph.get(name, {}), key=Version, reverse=True)
        return [Candidate(name, Version(v), (name, v)) for v in versions]

    def url_candidate(self, name: NormalizedName, url: str) -> Candidate:
        raise AssertionError("no direct references in generated graphs")

    def dependencies(self, candidate: Candidate) -> Sequence[Requirement]:
        return [Requirement(r) for r in self.graph[candidate.name][str(candidate.version)]]

    def prefetch(self, requirements: Iterable[Req]) -> None:
        pass

    def why_unusable(self, name: NormalizedName) -> list[str]:
        return []


requirement = st.builds(lambda n, s: f"{n}{s}", st.sampled_from(NAMES), st.sampled_from(SPECS))


@st.composite
def graphs(draw: st.DrawFn) -> tuple[Graph, list[str]]:
    graph: Graph = {}
    for name in NAMES:
        versions = draw(st.lists(st.sampled_from(VERSIONS), max_size=3, unique=True))
        graph[name] = {}
        for version in versions:
            deps = draw(st.lists(requirement, max_size=2))
            # A package never depends on itself: pip and uv reject that outright.
            graph[name][version] = [d for d in deps if not d.startswith(name)]
    roots = draw(st.lists(requirement, min_size=1, max_size=3))
    return graph, roots


def satisfied(pins: dict[str, str], requirements: Iterable[str]) -> bool:
    for text in requirements:
        req = Requirement(text)
        if req.name not in pins or not req.specifier.contains(pins[req.name], prereleases=True):
            return False
    return True


def consistent(graph: Graph, roots: list[str], pins: dict[str, str]) -> bool:
    return satisfied(pins, roots) and all(satisfied(pins, graph[n][v]) for n, v in pins.items())


def brute_force(graph: Graph, roots: list[str]) -> bool:
    choices = [[None, *graph[name]] for name in NAMES]
    for assignment in itertools.product(*choices):
        pins = {n: v for n, v in zip(NAMES, assignment, strict=True) if v is not None}
        if consistent(graph, roots, pins):
            return True
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_resolver_matches_brute_force_and_its_answer_satisfies_every_constraint(case):
    graph, roots = case
    expected = brute_force(graph, roots)
    try:
        resolution = resolve([("main", Requirement(r)) for r in roots], GraphFinder(graph), ENV)
    except ResolutionError:
        assert not expected, f"gpulock found no answer, brute force did: {graph} {roots}"
        return
    pins = {name: str(c.version) for name, c in resolution.pins.items()}
    assert expected, f"brute force says unsatisfiable, gpulock answered {pins}"
    assert consistent(graph, roots, pins)
    # Every pin is reachable from the roots and carries the group that reached it.
    assert all(resolution.groups[name] == ["main"] for name in pins)


@settings(max_examples=100, deadline=None)
@given(graphs(), st.data())
def test_preferred_pins_are_kept_whenever_they_still_fit(case, data):
    graph, roots = case
    finder = GraphFinder(graph)
    try:
        first = resolve([("main", Requirement(r)) for r in roots], finder, ENV)
    except ResolutionError:
        return
    preferred = {name: c.version for name, c in first.pins.items()}
    # With the same inputs and its own answer as preferences, the resolver returns it.
    again = resolve([("main", Requirement(r)) for r in roots], finder, ENV, preferred=preferred)
    assert {n: c.version for n, c in again.pins.items()} == preferred


def test_a_parent_cycle_left_behind_by_backtracking_still_resolves():
    # Found by the property test above: resolvelib's own result builder recursed forever on
    # the b <-> a <-> c parent cycle that backtracking leaves in its criteria.
    graph: Graph = {
        "a": {"2": [], "3": ["b!=3"], "1": ["c"]},
        "b": {"2": ["a<2", "a>1,<3"], "1": ["a==1", "c!=3"]},
        "c": {"1": ["b"]},
        "d": {},
    }
    first = resolve([("main", Requirement("a"))], GraphFinder(graph), ENV)
    pins = {name: str(c.version) for name, c in first.pins.items()}
    assert consistent(graph, ["a"], pins)
    preferred = {name: c.version for name, c in first.pins.items()}
    again = resolve([("main", Requirement("a"))], GraphFinder(graph), ENV, preferred=preferred)
    assert {n: c.version for n, c in again.pins.items()} == preferred


def _seed_000() -> dict[str, Any]:
    path = Path(__file__).parent / "data" / "seed000-backtracking.json"
    return json.loads(path.read_text())


def test_the_under_pinned_seed_manifest_resolves_to_the_pins_uv_chooses():
    # transformers==4.35.0 + modelscope==1.11.0 on CPython 3.11, from PyPI's real metadata:
    # the previous provider backtracked through datasets and huggingface-hub until it gave
    # up after 20,000 rounds; pip's order (pinned, then upper-bounded, then the causes of
    # the last backtrack) goes straight to datasets 2.14.7 and huggingface-hub 0.17.3.
    seed = _seed_000()
    resolution = resolve([("main", Requirement(r)) for r in seed["roots"]],
                         GraphFinder(seed["graph"]), Target(seed["python"]).marker_environment)
    assert {name: str(c.version) for name, c in resolution.pins.items()} == seed["pins"]


def test_a_resolution_that_gives_up_names_what_it_kept_backtracking_on():
    # Every a==i needs b==i, which needs c==i, but the root holds c below 1: each version of
    # a is tried and rejected in turn, far past the round limit.
    graph: Graph = {"a": {str(i): [f"b=={i}"] for i in range(1, 60)},
                    "b": {str(i): [f"c=={i}"] for i in range(1, 60)},
                    "c": {str(i): [] for i in range(60)}}
    with pytest.raises(ResolutionError) as caught:
        resolve([("main", Requirement("a")), ("main", Requirement("c<1"))],
                GraphFinder(graph), ENV, max_rounds=25)
    message = str(caught.value)
    assert message.startswith("gave up resolving") and "rejected" in message
    assert "backtracking on b (a candidate rejected" in message
    assert "asks for c<1" in message and "depends on c==" in message  # what collides


def test_a_long_resolution_says_how_far_it_got(monkeypatch):
    from gpulock.lock import resolve as module

    monkeypatch.setattr(module._Reporter, "EVERY", 0.0)
    seed = _seed_000()
    said: list[str] = []
    resolve([("main", Requirement(r)) for r in seed["roots"]], GraphFinder(seed["graph"]),
            Target(seed["python"]).marker_environment, progress=said.append)
    assert said and all(line.startswith("resolving: ") and "rounds" in line for line in said)
    assert any("packages pinned" in line for line in said)


def test_excluding_a_pre_release_is_not_an_opt_in_to_pre_releases():
    graph: Graph = {"a": {"1.0.0": [], "2.0.0b1": [], "2.0.0b2": []}}
    excluded = resolve([("main", Requirement("a!=2.0.0b1"))], GraphFinder(graph), ENV)
    assert str(excluded.pins["a"].version) == "1.0.0"
    asked = resolve([("main", Requirement("a>=2.0.0b1"))], GraphFinder(graph), ENV)
    assert str(asked.pins["a"].version) == "2.0.0b2"
