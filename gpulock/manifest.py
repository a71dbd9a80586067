"""gpu.toml: what a project wants, parsed and validated.

Owns the manifest schema. Every problem is reported as `path:line:col: message`, with a
did-you-mean for misspelt keys, so a user never has to read a traceback to fix a typo.
The manifest hash (what `lock --check` and `sync --frozen` compare) is computed from the
parsed content, so comments and formatting never make a lock stale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from gpulock.credentials import login_problem, redact, remember, shown
from gpulock.errors import GpulockError, ManifestError
from gpulock.manifest_hash import content_hash
from gpulock.names import (
    git_url_problem,
    name_problem,
    url_problem,
)
from gpulock.target import Target

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_INDEX = "https://pypi.org/simple"
PLATFORMS = ("linux_x86_64", "linux_aarch64")
PYTHON_MINORS = range(8, 16)  # CPython 3.8 to 3.15: the releases uv and PyPI wheels know
MAX_BYTES = 2**20  # a gpu.toml larger than this is not a manifest
MAX_DEPTH = 100  # arrays and inline tables nested deeper than this are refused
# When a pre-release may be chosen, as uv names it: never, always, when only pre-releases
# fit, when a requirement names one (`>=2.0b1`), or either of the last two (the default).
PRERELEASES = ("disallow", "allow", "if-necessary", "explicit", "if-necessary-or-explicit")


@dataclass(frozen=True)
class Group:
    name: str
    packages: tuple[Requirement, ...]
    index: str | None = None
    no_deps: bool = False
    no_build_isolation: bool = False
    env: tuple[tuple[str, str], ...] = ()
    no_build: bool | None = None  # None: the project's setting
    prerelease: str | None = None
    # What a no_build_isolation build compiles against (torch, setuptools...): locked with
    # the project, so the build sees the very versions that run beside it.
    build_requires: tuple[Requirement, ...] = ()
    target_indexes: tuple[tuple[str, str], ...] = ()  # (target, index) for named targets


@dataclass(frozen=True)
class TargetSpec:
    """[targets.<name>]: another pod the lock serves (a CUDA variant, an architecture)."""

    name: str
    platform: str
    glibc: str
    cuda: str | None


@dataclass(frozen=True)
class Model:
    name: str
    source: str
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extract: bool = False


@dataclass(frozen=True)
class Project:
    name: str
    python: str
    platform: str = "linux_x86_64"
    glibc: str = "2.28"
    cuda: str | None = None
    index: str = DEFAULT_INDEX
    no_build: bool = False  # wheels only: a pod never compiles by surprise
    prerelease: str = "if-necessary-or-explicit"
    install_python: bool = False  # sync installs the target CPython into the store (uv)
    local_start: bool = False  # generations carry a pack a worker unpacks to local disk


@dataclass(frozen=True)
class CacheSettings:
    """[cache]: the binary caches sync takes entries from, and the keys it trusts."""

    substituters: tuple[str, ...] = ()
    trusted_keys: tuple[str, ...] = ()  # NAME:base64 public keys


@dataclass(frozen=True)
class Manifest:
    path: Path
    project: Project
    groups: tuple[Group, ...]
    models: tuple[Model, ...] = ()
    verify_imports: tuple[str, ...] = ()
    cache: CacheSettings = field(default_factory=lambda: CacheSettings())
    content_hash: str = field(default="", compare=False)
    targets: tuple[TargetSpec, ...] = ()

    def for_target(self, name: str) -> Manifest:
        """This manifest as the target `name` sees it: its platform, glibc and CUDA, each
        group's index for it, and its own environment (`<project>.<target>`) so that pods
        of two targets sharing a volume never switch each other's."""
        if name == DEFAULT_TARGET:
            return self
        spec = next((t for t in self.targets if t.name == name), None)
        if spec is None:
            names = [DEFAULT_TARGET, *(t.name for t in self.targets)]
            hint = difflib.get_close_matches(name, names, n=1)
            raise ManifestError(f"{self.path}: no target named {name!r}"
                                + (f"; did you mean {hint[0]!r}?" if hint
                                   else f"; the targets are: {', '.join(names)}"))
        project = dataclasses.replace(self.project, name=f"{self.project.name}.{name}",
                                      platform=spec.platform, glibc=spec.glibc, cuda=spec.cuda)
        groups = tuple(dataclasses.replace(g, index=dict(g.target_indexes).get(name, g.index))
                       for g in self.groups)
        return dataclasses.replace(self, project=project, groups=groups, targets=())

    @property
    def target(self) -> Target:
        project = self.project
        return Target(python=project.python, platform=project.platform, glibc=project.glibc,
                      cuda=project.cuda)

    def index_for(self, name: str) -> str:
        """The one index a package may come from (explicit-index semantics)."""
        group = self._group_of(name)
        return group.index if group and group.index else self.project.index

    def no_build_for(self, name: str) -> bool:
        """Whether only wheels may be locked for this package (its group's, else project's)."""
        group = self._group_of(name)
        return group.no_build if group and group.no_build is not None else self.project.no_build

    def prerelease_for(self, name: str) -> str:
        """When pre-releases may be chosen for this package (uv's names for the policies)."""
        group = self._group_of(name)
        return group.prerelease if group and group.prerelease else self.project.prerelease

    def _group_of(self, name: str) -> Group | None:
        key = canonicalize_name(name)
        return next((g for g in self.groups
                     if any(canonicalize_name(r.name) == key for r in g.packages)), None)


# Each table's keys and the type each value must have; "REQ" marks PEP 508 lists.
_SCHEMA: dict[str, dict[str, Any]] = {
    "project": {
        "name": str, "python": str, "platform": str, "glibc": str, "cuda": str, "index": str,
        "no_build": bool, "prerelease": str, "install-python": bool, "install_python": bool,
        "local-start": bool,
    },
    "group": {
        "packages": "REQ", "index": str, "no_deps": bool, "no_build_isolation": bool,
        "env": dict, "no_build": bool, "prerelease": str, "build_requires": "REQ",
        "targets": dict,
    },
    "target": {"platform": str, "glibc": str, "cuda": str},
    "group_target": {"index": str},
    "model": {
        "source": str, "revision": str, "include": list, "exclude": list, "extract": bool,
    },
    "verify": {"imports": list},
    "cache": {"substituters": list, "trusted-keys": list, "trusted_keys": list},
}
_TOP_LEVEL = ("project", "targets", "groups", "models", "verify", "cache")
DEFAULT_TARGET = "default"  # [project]'s own target, as --target names it
TYPE_WORDS = {str: "a string", bool: "true or false", list: "a list", dict: "a table"}


class _Locator:
    """Finds the line and column of a table or key in the TOML text, for error messages.

    tomllib keeps no positions, so this scans the source the way a reader would: table
    headers, then `key =` lines inside the current table (dotted and inline keys included).
    """

    _HEADER = re.compile(r"""^\s*\[\s*((?:"[^"]*"|'[^']*'|[^\[\]"'])+?)\s*\]\s*(#.*)?$""")
    _KEY = re.compile(r"""^(\s*)((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)"""
                      r"""(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*=""")
    _PART = re.compile(r"""\s*("([^"]*)"|'([^']*)'|([A-Za-z0-9_\-]+))\s*(\.|$)""")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    @classmethod
    def _norm(cls, dotted: str) -> tuple[str, ...]:
        """A dotted key's parts, quotes removed (`models."qwen2.5"` -> models, qwen2.5)."""
        parts = []
        for match in cls._PART.finditer(dotted):
            basic, literal, bare = match.group(2, 3, 4)
            if basic is not None:
                # Escapes as TOML reads them: `"a\u0000b"` is the name a<NUL>b.
                with contextlib.suppress(tomllib.TOMLDecodeError):
                    basic = tomllib.loads(f'k = "{basic}"')["k"]
            parts.append(next(g for g in (basic, literal, bare) if g is not None))
            if not match.group(5):
                break
        return tuple(parts)

    def find(self, table: tuple[str, ...], key: str | None = None) -> tuple[int, int]:
        current: tuple[str, ...] = ()
        header_pos: tuple[int, int] | None = None
        for lineno, line in enumerate(self.lines, start=1):
            header = self._HEADER.match(line)
            if header:
                current = self._norm(header.group(1))
                if current == table and header_pos is None:
                    header_pos = (lineno, line.index("[") + 1)
                    if key is None:
                        return header_pos
                continue
            match = self._KEY.match(line)
            if not match:
                continue
            full = current + self._norm(match.group(2))
            col = len(match.group(1)) + 1
            wanted = table + ((key,) if key else ())
            if full == wanted or (key is None and full[: len(table)] == table):
                return lineno, col
            # An inline table `groups = { x = ... }` or a dotted key prefix holds the target.
            if len(full) < len(wanted) and wanted[: len(full)] == full:
                inner = re.search(rf"""(["']?){re.escape(wanted[-1])}\1\s*=""", line)
                if inner:
                    return lineno, inner.start() + 1
                return lineno, col
        return header_pos or (1, 1)


class _Reader:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.locator = _Locator(text)

    def error(self, table: tuple[str, ...], key: str | None, message: str) -> ManifestError:
        """An error at the table or key's place; any URL's credentials are left out of it."""
        line, col = self.locator.find(table, key)
        return ManifestError(f"{self.path}:{line}:{col}: {redact(message)}")

    def check_keys(self, table: tuple[str, ...], data: dict[str, Any], kind: str) -> None:
        schema = _SCHEMA[kind]
        for key, value in data.items():
            if key not in schema:
                hint = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.5)
                if not hint:
                    # Common aliases from pip/uv configs get a pointer too.
                    aliases = {"index_url": "index", "index-url": "index", "nodeps": "no_deps",
                               "no-deps": "no_deps", "requirements": "packages",
                               "only_binary": "no_build", "only-binary": "no_build",
                               "no-build": "no_build", "pre": "prerelease",
                               "dependencies": "packages", "python_version": "python",
                               "build-requires": "build_requires",
                               "extra-build-dependencies": "build_requires"}
                    hint = [aliases[key]] if key in aliases else []
                suggestion = f"; did you mean '{hint[0]}'?" if hint else (
                    f"; expected one of: {', '.join(schema)}")
                raise self.error(table, key, f"unknown key '{key}' in [{'.'.join(table)}]"
                                 f"{suggestion}")
            expected = schema[key]
            if expected == "REQ":
                expected = list
            if not isinstance(value, expected):
                raise self.error(table, key, f"'{key}' in [{'.'.join(table)}] must be "
                                 f"{TYPE_WORDS[expected]}, not {describe(value)}")

    def strings(self, table: tuple[str, ...], key: str, values: list[Any]) -> tuple[str, ...]:
        for value in values:
            if not isinstance(value, str):
                raise self.error(table, key, f"'{key}' in [{'.'.join(table)}] must be a list "
                                 f"of strings, but holds {describe(value)}")
        return tuple(values)


def describe(value: Any) -> str:
    """A TOML value in words, for a message that says what was found instead."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def load(path: str | Path) -> Manifest:
    """Read and validate a gpu.toml; raise ManifestError naming file, line and column."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ManifestError(f"{path}: the manifest is larger than {MAX_BYTES // 2**20} MiB; "
                                "a gpu.toml that large is not one")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{path}: no such manifest; run 'gpulock init' to write one, or pass --manifest"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc}") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Manifest:
    deep = _too_deep(text)
    if deep:
        raise ManifestError(f"{path}:{deep[0]}:{deep[1]}: arrays or inline tables are nested "
                            f"more than {MAX_DEPTH} deep")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}:{_toml_problem(exc, text)}") from None
    except RecursionError:  # nesting the scan above did not see: said without its place
        raise ManifestError(f"{path}: arrays or inline tables are nested more than "
                            f"{MAX_DEPTH} deep") from None
    reader = _Reader(path, text)

    for key in data:
        if key not in _TOP_LEVEL:
            hint = difflib.get_close_matches(key, _TOP_LEVEL, n=1, cutoff=0.5)
            suggestion = f"; did you mean [{hint[0]}]?" if hint else (
                f"; expected one of: {', '.join('[' + t + ']' for t in _TOP_LEVEL)}")
            raise reader.error((key,), None, f"unknown table [{key}]{suggestion}")
        if not isinstance(data[key], dict):
            raise reader.error((), key, f"'{key}' must be a table ([{key}])")

    project = _project(reader, data.get("project"))
    targets = _targets(reader, data.get("targets", {}), project)
    groups = _groups(reader, data.get("groups", {}), project, targets)
    models = _models(reader, data.get("models", {}))
    verify = data.get("verify", {})
    reader.check_keys(("verify",), verify, "verify")
    imports = reader.strings(("verify",), "imports", verify.get("imports", []))
    for module in imports:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
            raise reader.error(("verify",), "imports", f"imports holds {module!r}, which is not "
                               "a module name like \"torch\" or \"torch.cuda\"")

    return Manifest(path=path, project=project, groups=groups, models=models,
                    verify_imports=imports, cache=_cache(reader, data.get("cache", {})),
                    content_hash=content_hash(data), targets=targets)


def _cache(reader: _Reader, raw: dict[str, Any]) -> CacheSettings:
    table = ("cache",)
    reader.check_keys(table, raw, "cache")
    if "trusted-keys" in raw and "trusted_keys" in raw:
        raise reader.error(table, "trusted_keys", "[cache] holds both 'trusted-keys' and "
                           "'trusted_keys'; keep one")
    key_name = "trusted-keys" if "trusted-keys" in raw else "trusted_keys"
    urls = reader.strings(table, "substituters", raw.get("substituters", []))
    from gpulock.store.substituters import url_problem

    for url in urls:
        if problem := url_problem(url):
            raise reader.error(table, "substituters", f"substituter {shown(url)!r} {problem}")
    keys = reader.strings(table, key_name, raw.get(key_name, []))
    from gpulock.signing import parse_public

    for key in keys:
        try:
            parse_public(key, "trusted key")
        except GpulockError as exc:
            raise reader.error(table, key_name, str(exc)) from None
    return CacheSettings(substituters=urls, trusted_keys=keys)


def _toml_problem(exc: Exception, text: str) -> str:
    """`line:col: invalid TOML: reason`, for tomllib's error (which has no position at the
    end of the document: then the bracket left open is named, else the last line)."""
    reason = re.sub(r"\s*\(at line \d+, column \d+\)|\s*\(at end of document\)", "", str(exc))
    match = re.search(r"at line (\d+), column (\d+)", str(exc))
    if match:
        return f"{match.group(1)}:{match.group(2)}: invalid TOML: {reason}"
    unclosed = _brackets(text).unclosed
    if unclosed:
        line, column = unclosed[0]
        kind = "array" if text.splitlines()[line - 1][column - 1] == "[" else "inline table"
        return f"{line}:{column}: invalid TOML: the {kind} opened here is never closed"
    return f"{max(1, len(text.splitlines()))}:1: invalid TOML: {reason} at the end of the file"


@dataclass
class _Scan:
    unclosed: list[tuple[int, int]]  # (line, column) of each `[` / `{` still open at the end
    deepest: tuple[int, int] | None  # where nesting first went past MAX_DEPTH


def _brackets(text: str) -> _Scan:
    """Where brackets open and nest, outside strings and comments (tomllib says neither)."""
    stack: list[tuple[int, int]] = []
    deepest = None
    token = re.compile(r'"""|\'\'\'|"|\'|#|[\[\]{}]|\n')
    line, line_start, at = 1, 0, 0
    while match := token.search(text, at):
        found, at = match.group(), match.end()
        if found == "\n":
            line, line_start = line + 1, at
        elif found == "#":
            at = text.find("\n", at) if "\n" in text[at:] else len(text)
        elif found in ("[", "{"):
            stack.append((line, match.start() - line_start + 1))
            if len(stack) > MAX_DEPTH and deepest is None:
                deepest = stack[-1]
        elif found in ("]", "}"):
            if stack:
                stack.pop()
        else:  # a string: skip to its end (a basic string's escapes included); a multi-line
            # one may end with one or two quotes of its own, as in '''it's''''
            closing = re.escape(found) + (f"{re.escape(found[0])}{{0,2}}" if len(found) == 3
                                          else "")
            pattern = r'(?<!\\)(?:\\\\)*' + closing
            end = re.compile(pattern if found.startswith('"') else closing).search(text, at)
            stop = end.end() if end else len(text)
            line += text.count("\n", at, stop)
            if "\n" in text[at:stop]:
                line_start = text.rindex("\n", at, stop) + 1
            at = stop
    return _Scan(unclosed=stack, deepest=deepest)


def _too_deep(text: str) -> tuple[int, int] | None:
    """Where arrays or inline tables nest past MAX_DEPTH; tomllib would recurse that deep."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None  # cannot be: no scan needed for ordinary manifests
    return _brackets(text).deepest


def _project(reader: _Reader, raw: dict[str, Any] | None) -> Project:
    if raw is None:
        raise reader.error((), None, "missing [project] table (name and python are required)")
    table = ("project",)
    reader.check_keys(table, raw, "project")
    for required in ("name", "python"):
        if required not in raw:
            raise reader.error(table, None, f"[project] needs '{required}'")
    if problem := name_problem(raw["name"]):
        raise reader.error(table, "name", f"name = {raw['name']!r} {problem}")
    python = raw["python"]
    version = re.fullmatch(r"3\.(\d+)(\.\d+)?", python)
    if not version or int(version.group(1)) not in PYTHON_MINORS:
        raise reader.error(table, "python", f"python = {python!r} must be a CPython version "
                           f"from 3.{PYTHON_MINORS[0]} to 3.{PYTHON_MINORS[-1]}, like \"3.10\" "
                           "or \"3.10.12\"")
    platform, glibc, cuda = _machine(reader, table, raw, ("linux_x86_64", "2.28", None))
    index = _index(reader, table, raw.get("index", DEFAULT_INDEX))
    if "install-python" in raw and "install_python" in raw:
        raise reader.error(table, "install_python", "[project] holds both 'install-python' "
                           "and 'install_python'; keep one")
    return Project(name=raw["name"], python=python, platform=platform, glibc=glibc,
                   cuda=cuda, index=index, no_build=raw.get("no_build", False),
                   prerelease=_prerelease(reader, table, raw) or Project.prerelease,
                   install_python=raw.get("install-python", raw.get("install_python", False)),
                   local_start=raw.get("local-start", False))


def _machine(reader: _Reader, table: tuple[str, ...], raw: dict[str, Any],
             defaults: tuple[str, str, str | None]) -> tuple[str, str, str | None]:
    """A target's platform, glibc and CUDA, checked: [project]'s, or a [targets.X]'s
    (`defaults`: what it does not say)."""
    platform = raw.get("platform", defaults[0])
    if platform not in PLATFORMS:
        hint = difflib.get_close_matches(platform, PLATFORMS, n=1)
        way_out = (f"did you mean {hint[0]!r}?" if hint
                   else f"expected one of: {', '.join(PLATFORMS)}")
        raise reader.error(table, "platform", f"platform = {platform!r} is not supported; "
                           f"{way_out}")
    glibc = raw.get("glibc", defaults[1])
    if not re.fullmatch(r"2\.\d+", glibc):
        raise reader.error(table, "glibc", f"glibc = {glibc!r} must look like \"2.28\" "
                           "(the manylinux level of the pod's distribution)")
    cuda = raw.get("cuda", defaults[2])
    if cuda is not None and not re.fullmatch(r"\d+\.\d+", cuda):
        raise reader.error(table, "cuda", f"cuda = {cuda!r} must look like \"12.1\"")
    return platform, glibc, cuda


def _targets(reader: _Reader, raw: dict[str, Any], project: Project) -> tuple[TargetSpec, ...]:
    """[targets.<name>]: more pods the lock serves, each the project's target with another
    platform, glibc or CUDA."""
    targets = []
    for name, body in raw.items():
        table = ("targets", name)
        if not isinstance(body, dict):
            raise reader.error(("targets",), name, f"targets.{name} must be a table")
        reader.check_keys(table, body, "target")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", name):
            # It names a lock file (PEP 751: one name, no dots), `--target NAME` and, after
            # the project's name, an environment folder.
            raise reader.error(table, None, f"the target name {name!r} must be 1 to 32 "
                               "letters, digits, '_' or '-', starting with a letter or digit")
        if problem := name_problem(f"{project.name}.{name}"):
            raise reader.error(table, None, f"the target's environment "
                               f"'{project.name}.{name}' {problem}")
        if name == DEFAULT_TARGET:
            raise reader.error(table, None, f"'{DEFAULT_TARGET}' names [project]'s own "
                               "target; choose another name")
        if not body:
            raise reader.error(table, None, f"[targets.{name}] says nothing: give it a "
                               "platform, glibc or cuda of its own")
        platform, glibc, cuda = _machine(reader, table, body,
                                         (project.platform, project.glibc, project.cuda))
        if (platform, glibc, cuda) == (project.platform, project.glibc, project.cuda):
            raise reader.error(table, None, f"[targets.{name}] is [project]'s own target "
                               "again: give it another platform, glibc or cuda")
        targets.append(TargetSpec(name, platform, glibc, cuda))
    return tuple(targets)


def _prerelease(reader: _Reader, table: tuple[str, ...], raw: dict[str, Any]) -> str | None:
    value = raw.get("prerelease")
    if value is not None and value not in PRERELEASES:
        raise reader.error(table, "prerelease", f"prerelease = {value!r} must be one of: "
                           f"{', '.join(PRERELEASES)}")
    return value


def _index(reader: _Reader, table: tuple[str, ...], index: str) -> str:
    """The index URL without credentials (kept in memory for its host, see credentials.py)."""
    if not re.match(r"(https?|file)://", index):
        raise reader.error(table, "index", f"index = {shown(index)!r} must be an http(s):// "
                           "URL or a file:// folder")
    if problem := url_problem(index):
        raise reader.error(table, "index", f"index = {shown(index)!r} {problem}")
    return remember(index).rstrip("/")


def _groups(reader: _Reader, raw: dict[str, Any], project: Project,
            targets: tuple[TargetSpec, ...]) -> tuple[Group, ...]:
    groups = []
    seen: dict[str, str] = {}
    for name, body in raw.items():
        table = ("groups", name)
        if not isinstance(body, dict):
            raise reader.error(("groups",), name, f"groups.{name} must be a table")
        reader.check_keys(table, body, "group")
        if "packages" not in body:
            raise reader.error(table, None, f"[groups.{name}] needs 'packages'")
        requirements = _requirements(reader, table, "packages", body["packages"])
        for req in requirements:
            key = canonicalize_name(req.name)
            if key in seen and seen[key] != name:
                raise reader.error(table, "packages", f"{req.name} is listed in both "
                                   f"[groups.{seen[key]}] and [groups.{name}]; list it once")
            seen[key] = name
        build_requires = _requirements(reader, table, "build_requires",
                                       body.get("build_requires", []))
        if build_requires and not body.get("no_build_isolation", False):
            raise reader.error(table, "build_requires", f"build_requires in [groups.{name}] "
                               "is for builds that see the environment: set "
                               "no_build_isolation = true, or list them in the package's "
                               "pyproject.toml for an isolated build")
        index = body.get("index")
        if index is not None:
            index = _index(reader, table, index)
        env = body.get("env", {})
        for key, value in env.items():
            if not isinstance(value, str):
                raise reader.error(table, "env", f"env.{key} in [groups.{name}] must be a "
                                   f"string, not {describe(value)}")
        target_indexes = _target_indexes(reader, table, body.get("targets", {}), targets)
        groups.append(Group(name=name, packages=tuple(requirements), index=index,
                            no_deps=body.get("no_deps", False),
                            no_build_isolation=body.get("no_build_isolation", False),
                            env=tuple(sorted(env.items())), no_build=body.get("no_build"),
                            prerelease=_prerelease(reader, table, body),
                            build_requires=build_requires, target_indexes=target_indexes))
    return tuple(groups)


def _target_indexes(reader: _Reader, table: tuple[str, ...], raw: dict[str, Any],
                    targets: tuple[TargetSpec, ...]) -> tuple[tuple[str, str], ...]:
    """A group's `targets = { cu130 = { index = "..." } }`: its index for named targets
    (the PyTorch index has one per CUDA variant)."""
    names = [t.name for t in targets]
    found = []
    for name, body in raw.items():
        where = (*table, "targets", name)
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=1)
            raise reader.error((*table, "targets"), name, f"no [targets.{name}] is declared"
                               + (f"; did you mean '{hint[0]}'?" if hint else
                                  f"; declared: {', '.join(names) or 'none'}"))
        if not isinstance(body, dict):
            raise reader.error((*table, "targets"), name, f"targets.{name} in "
                               f"[groups.{table[-1]}] must be a table like {{ index = \"...\" }}")
        reader.check_keys(where, body, "group_target")
        if "index" in body:
            found.append((name, _index(reader, where, body["index"])))
    return tuple(found)


def _requirements(reader: _Reader, table: tuple[str, ...], key: str, texts: list[Any]
                  ) -> tuple[Requirement, ...]:
    """A group's PEP 508 list: names with versions and markers, or git+ URLs."""
    name = table[-1]
    requirements = []
    for text in reader.strings(table, key, texts):
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            reason = redact(str(exc).splitlines()[0])  # packaging adds a caret diagram
            raise reader.error(table, key, f"invalid requirement {shown(text)!r} in "
                               f"[groups.{name}]: {reason}") from None
        if req.url and not req.url.startswith("git+"):
            raise reader.error(table, key, f"requirement {shown(text)!r} in "
                               f"[groups.{name}]: only git+ URLs are supported as direct "
                               "references")
        if req.url:
            if problem := git_url_problem(req.url.removeprefix("git+")):
                raise reader.error(table, key, f"requirement {shown(text)!r} in "
                                   f"[groups.{name}]: the git URL {problem}")
            req.url = "git+" + remember(req.url.removeprefix("git+"))
        requirements.append(req)
    return tuple(requirements)


def _source(reader: _Reader, table: tuple[str, ...], source: str) -> str:
    """A model's source, checked (first where a login may be, for every scheme) and with any
    login taken out; every message quotes it as `shown` leaves it."""
    def refused(problem: str) -> ManifestError:
        return reader.error(table, "source", f"source = {shown(source)!r} in "
                            f"[models.{table[-1]}] {problem}")

    from gpulock.sources import SCHEMES, source_for

    kind = source_for(source)
    if kind is None:
        raise refused(f"must start with {SCHEMES}")
    if problem := login_problem(source):
        raise refused(problem)
    if problem := kind.problem(source):
        raise refused(problem)
    # Kept for the URL git is given (without git+), as for git+ requirements.
    return "git+" + remember(source[4:]) if source.startswith("git+") else remember(source)


def _models(reader: _Reader, raw: dict[str, Any]) -> tuple[Model, ...]:
    if not raw:
        return ()
    from gpulock.sources import kind_of  # only a manifest with models pays its import

    models = []
    for name, body in raw.items():
        table = ("models", name)
        if not isinstance(body, dict):
            raise reader.error(("models",), name, f"models.{name} must be a table")
        if problem := name_problem(name):
            raise reader.error(table, None, f"the model name {name!r} {problem}")
        reader.check_keys(table, body, "model")
        source = body.get("source")
        if source is None:
            raise reader.error(table, None, f"[models.{name}] needs 'source'")
        source = _source(reader, table, source)
        revision = body.get("revision")
        if revision is not None and (problem := kind_of(source).revision_problem(revision)):
            raise reader.error(table, "revision", f"revision = {revision!r} in "
                               f"[models.{name}] {problem}")
        models.append(Model(name=name, source=source, revision=revision,
                            include=reader.strings(table, "include", body.get("include", [])),
                            exclude=reader.strings(table, "exclude", body.get("exclude", [])),
                            extract=body.get("extract", False)))
    return tuple(models)


def dump(manifest: Manifest, notes: Mapping[str, str] | None = None, header: str = "") -> str:
    """gpu.toml text for `manifest`: only what differs from the defaults, with `header` and a
    comment above each table `notes` names ("project", "groups.x", "models.y").

    `parse(dump(m))` gives back `m`, so dumping that again gives the same text.
    """
    notes = notes or {}
    project = manifest.project
    out: list[str] = [_comment(line) for line in header.splitlines()]
    defaults = Project(name=project.name, python=project.python)
    out += _table(("project",), notes, [
        (key.replace("_python", "-python").replace("_start", "-start"), getattr(project, key))
        for key in ("name", "python", "platform", "glibc", "cuda", "index", "no_build",
                    "prerelease", "install_python", "local_start")
        if key in ("name", "python") or getattr(project, key) != getattr(defaults, key)])
    for target in manifest.targets:
        out += _table(("targets", target.name), notes, [
            (key, getattr(target, key)) for key in ("platform", "glibc", "cuda")
            if getattr(target, key) != getattr(project, key)])
    for group in manifest.groups:
        out += _table(("groups", group.name), notes, [
            ("index", group.index), ("no_deps", group.no_deps or None),
            ("no_build", group.no_build), ("prerelease", group.prerelease),
            ("no_build_isolation", group.no_build_isolation or None),
            ("env", dict(group.env) or None),
            ("build_requires", [str(r) for r in group.build_requires] or None),
            ("packages", [str(r) for r in group.packages])])
        for name, index in group.target_indexes:
            out += _table(("groups", group.name, "targets", name), notes, [("index", index)])
    for model in manifest.models:
        out += _table(("models", model.name), notes, [
            ("source", model.source), ("revision", model.revision),
            ("include", list(model.include) or None), ("exclude", list(model.exclude) or None),
            ("extract", model.extract or None)])
    if manifest.verify_imports:
        out += _table(("verify",), notes, [("imports", list(manifest.verify_imports))])
    if manifest.cache != CacheSettings():
        out += _table(("cache",), notes, [
            ("substituters", list(manifest.cache.substituters) or None),
            ("trusted-keys", list(manifest.cache.trusted_keys) or None)])
    return "\n".join(out).lstrip("\n") + "\n"


def _table(name: tuple[str, ...], notes: Mapping[str, str], items: list[tuple[str, Any]]
           ) -> list[str]:
    dotted = ".".join(_toml_key(part) for part in name)
    lines = ["", *(_comment(line) for line in notes.get(".".join(name), "").splitlines()),
             f"[{dotted}]"]
    for key, value in items:
        if value is None:
            continue
        if isinstance(value, list) and value:
            lines.append(f"{key} = [")
            lines += [f"    {_toml_value(item)}," for item in value]
            lines.append("]")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines


def _comment(line: str) -> str:
    """A TOML comment line; characters TOML does not allow in one become '?'."""
    return ("# " + "".join(c if c.isprintable() or c == "\t" else "?" for c in line)).rstrip()


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: object) -> str:
    if isinstance(value, dict):  # an inline table, as gpu.toml writes `env`
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()
