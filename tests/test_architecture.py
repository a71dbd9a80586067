"""gpulock's shape, pinned: data flows up (pins -> store -> sources -> models -> lock, env,
sync, upkeep -> cli) and no module imports one that imports it back. Every import counts:
at module level, inside a function (the lazy ones) and under TYPE_CHECKING. A package's own
`__init__` running first when one of its modules is imported is not counted as an import.

Run the same check by hand: `python -m tests.test_architecture`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gpulock"


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The gpulock modules `module` imports anywhere in its text."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            named += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            named += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    found = set()
    for name in named:
        while name and name not in MODULES:  # `from pkg import name`: a module or a name in it
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def cycles() -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(GRAPH[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_module_of_gpulock_imports_one_that_imports_it_back():
    assert cycles() == []


def test_the_lock_data_imports_only_the_rules_of_names_and_the_target():
    assert GRAPH["gpulock.pins"] <= {"gpulock.credentials", "gpulock.errors", "gpulock.names",
                                     "gpulock.target"}


ABOVE_THE_STORE = ("gpulock.lock", "gpulock.manifest", "gpulock.sources", "gpulock.models",
                   "gpulock.env", "gpulock.sync", "gpulock.upkeep", "gpulock.build",
                   "gpulock.cli", "gpulock.k8s", "gpulock.importer")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, ("gpulock.store",))))
def test_the_store_reaches_nothing_above_it(module):
    assert sorted(m for m in GRAPH[module] if _within(m, ABOVE_THE_STORE)) == []


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if _within(m, ("gpulock.sources", "gpulock.models"))))
def test_sources_and_model_views_know_pins_not_manifests_locks_or_upkeep(module):
    above = ("gpulock.manifest", "gpulock.lock.lockfile", "gpulock.lock.locking",
             "gpulock.upkeep", "gpulock.sync", "gpulock.env", "gpulock.cli")
    assert sorted(m for m in GRAPH[module] if _within(m, above)) == []


# A model source string tested by its scheme: the registry's business (gpulock.sources).
_SCHEME_TEST = re.compile(r"""\.(startswith|removeprefix)\([^)]*["'](hf|ms|ref|s3)://""")


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if not _within(m, ("gpulock.sources", "gpulock.store.substituters"))))
def test_only_the_sources_tell_one_kind_of_model_source_from_another(module):
    text = MODULES[module].read_text(encoding="utf-8")
    assert [m.group(0) for m in _SCHEME_TEST.finditer(text)] == []


if __name__ == "__main__":
    found = cycles()
    for component in found:
        print(" <-> ".join(component))
    print(f"{len(MODULES)} modules, {sum(map(len, GRAPH.values()))} imports, "
          f"{len(found)} cycle(s)")
    raise SystemExit(1 if found else 0)
