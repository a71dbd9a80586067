"""gpu.toml: what a project wants, parsed and validated.

Owns the manifest schema. Every problem is reported as `path:line:col: message`, with a
did-you-mean for misspelt keys, so a user never has to read a traceback to fix a typo.
The manifest hash (what `lock --check` and `sync --frozen` compare) is computed from the
parsed content, so comments and formatting never make a lock stale.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from gpulock.errors import ManifestError
from gpulock.target import Target

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_INDEX = "https://pypi.org/simple"
PLATFORMS = ("linux_x86_64", "linux_aarch64")
MODEL_SCHEMES = ("hf://", "ms://", "https://", "http://")


@dataclass(frozen=True)
class Group:
    name: str
    packages: tuple[Requirement, ...]
    index: str | None = None
    no_deps: bool = False
    no_build_isolation: bool = False
    env: tuple[tuple[str, str], ...] = ()


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


@dataclass(frozen=True)
class Manifest:
    path: Path
    project: Project
    groups: tuple[Group, ...]
    models: tuple[Model, ...] = ()
    verify_imports: tuple[str, ...] = ()
    content_hash: str = field(default="", compare=False)

    @property
    def target(self) -> Target:
        project = self.project
        return Target(python=project.python, platform=project.platform, glibc=project.glibc,
                      cuda=project.cuda)

    def index_for(self, name: str) -> str:
        """The one index a package may come from (explicit-index semantics)."""
        key = canonicalize_name(name)
        for group in self.groups:
            if group.index and any(canonicalize_name(r.name) == key for r in group.packages):
                return group.index
        return self.project.index


# Each table's keys and the type each value must have; "REQ" marks PEP 508 lists.
_SCHEMA: dict[str, dict[str, Any]] = {
    "project": {
        "name": str, "python": str, "platform": str, "glibc": str, "cuda": str, "index": str,
    },
    "group": {
        "packages": "REQ", "index": str, "no_deps": bool, "no_build_isolation": bool,
        "env": dict,
    },
    "model": {
        "source": str, "revision": str, "include": list, "exclude": list, "extract": bool,
    },
    "verify": {"imports": list},
}
_TOP_LEVEL = ("project", "groups", "models", "verify")
_TYPE_WORDS = {str: "a string", bool: "true or false", list: "a list", dict: "a table"}


class _Locator:
    """Finds the line and column of a table or key in the TOML text, for error messages.

    tomllib keeps no positions, so this scans the source the way a reader would: table
    headers, then `key =` lines inside the current table (dotted and inline keys included).
    """

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r"""^(\s*)("[^"]*"|'[^']*'|[A-Za-z0-9_.\-]+)\s*=""")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    @staticmethod
    def _norm(table: str) -> tuple[str, ...]:
        return tuple(p.strip().strip("\"'") for p in table.split("."))

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
        line, col = self.locator.find(table, key)
        return ManifestError(f"{self.path}:{line}:{col}: {message}")

    def check_keys(self, table: tuple[str, ...], data: dict[str, Any], kind: str) -> None:
        schema = _SCHEMA[kind]
        for key, value in data.items():
            if key not in schema:
                hint = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.5)
                if not hint:
                    # Common aliases from pip/uv configs get a pointer too.
                    aliases = {"index_url": "index", "index-url": "index", "nodeps": "no_deps",
                               "no-deps": "no_deps", "requirements": "packages",
                               "dependencies": "packages", "python_version": "python"}
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
                                 f"{_TYPE_WORDS[expected]}, not {_describe(value)}")

    def strings(self, table: tuple[str, ...], key: str, values: list[Any]) -> tuple[str, ...]:
        for value in values:
            if not isinstance(value, str):
                raise self.error(table, key, f"'{key}' in [{'.'.join(table)}] must be a list "
                                 f"of strings, but holds {_describe(value)}")
        return tuple(values)


def _describe(value: Any) -> str:
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{path}: no such manifest; run 'gpulock init' to write one, or pass --manifest"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc}") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Manifest:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}:{_toml_position(exc)}: invalid TOML: "
                            f"{_toml_reason(exc)}") from None
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
    groups = _groups(reader, data.get("groups", {}), project)
    models = _models(reader, data.get("models", {}))
    verify = data.get("verify", {})
    reader.check_keys(("verify",), verify, "verify")
    imports = reader.strings(("verify",), "imports", verify.get("imports", []))

    return Manifest(path=path, project=project, groups=groups, models=models,
                    verify_imports=imports, content_hash=_content_hash(data))


def _toml_position(exc: Exception) -> str:
    match = re.search(r"at line (\d+), column (\d+)", str(exc))
    return f"{match.group(1)}:{match.group(2)}" if match else "1:1"


def _toml_reason(exc: Exception) -> str:
    return re.sub(r"\s*\(at line \d+, column \d+\)|\s*\(at end of document\)", "", str(exc))


def _project(reader: _Reader, raw: dict[str, Any] | None) -> Project:
    if raw is None:
        raise reader.error((), None, "missing [project] table (name and python are required)")
    table = ("project",)
    reader.check_keys(table, raw, "project")
    for required in ("name", "python"):
        if required not in raw:
            raise reader.error(table, None, f"[project] needs '{required}'")
    python = raw["python"]
    if not re.fullmatch(r"3\.\d+(\.\d+)?", python):
        raise reader.error(table, "python", f"python = {python!r} must be a CPython version "
                           "like \"3.10\" or \"3.10.12\"")
    platform = raw.get("platform", "linux_x86_64")
    if platform not in PLATFORMS:
        hint = difflib.get_close_matches(platform, PLATFORMS, n=1)
        way_out = (f"did you mean {hint[0]!r}?" if hint
                   else f"expected one of: {', '.join(PLATFORMS)}")
        raise reader.error(table, "platform", f"platform = {platform!r} is not supported; "
                           f"{way_out}")
    glibc = raw.get("glibc", "2.28")
    if not re.fullmatch(r"2\.\d+", glibc):
        raise reader.error(table, "glibc", f"glibc = {glibc!r} must look like \"2.28\" "
                           "(the manylinux level of the pod's distribution)")
    cuda = raw.get("cuda")
    if cuda is not None and not re.fullmatch(r"\d+\.\d+", cuda):
        raise reader.error(table, "cuda", f"cuda = {cuda!r} must look like \"12.1\"")
    index = raw.get("index", DEFAULT_INDEX)
    _check_index(reader, table, index)
    return Project(name=raw["name"], python=python, platform=platform, glibc=glibc,
                   cuda=cuda, index=index.rstrip("/"))


def _check_index(reader: _Reader, table: tuple[str, ...], index: str) -> None:
    if not re.match(r"(https?|file)://", index):
        raise reader.error(table, "index", f"index = {index!r} must be an http(s):// URL or "
                           "a file:// folder")


def _groups(reader: _Reader, raw: dict[str, Any], project: Project) -> tuple[Group, ...]:
    groups = []
    seen: dict[str, str] = {}
    for name, body in raw.items():
        table = ("groups", name)
        if not isinstance(body, dict):
            raise reader.error(("groups",), name, f"groups.{name} must be a table")
        reader.check_keys(table, body, "group")
        if "packages" not in body:
            raise reader.error(table, None, f"[groups.{name}] needs 'packages'")
        requirements = []
        for text in reader.strings(table, "packages", body["packages"]):
            try:
                req = Requirement(text)
            except InvalidRequirement as exc:
                reason = str(exc).splitlines()[0]  # packaging adds a caret diagram below
                raise reader.error(table, "packages", f"invalid requirement {text!r} in "
                                   f"[groups.{name}]: {reason}") from None
            if req.url and not req.url.startswith("git+"):
                raise reader.error(table, "packages", f"requirement {text!r} in [groups.{name}]"
                                   ": only git+ URLs are supported as direct references")
            key = canonicalize_name(req.name)
            if key in seen and seen[key] != name:
                raise reader.error(table, "packages", f"{req.name} is listed in both "
                                   f"[groups.{seen[key]}] and [groups.{name}]; list it once")
            seen[key] = name
            requirements.append(req)
        index = body.get("index")
        if index is not None:
            _check_index(reader, table, index)
            index = index.rstrip("/")
        env = body.get("env", {})
        for key, value in env.items():
            if not isinstance(value, str):
                raise reader.error(table, "env", f"env.{key} in [groups.{name}] must be a "
                                   f"string, not {_describe(value)}")
        groups.append(Group(name=name, packages=tuple(requirements), index=index,
                            no_deps=body.get("no_deps", False),
                            no_build_isolation=body.get("no_build_isolation", False),
                            env=tuple(sorted(env.items()))))
    return tuple(groups)


def _models(reader: _Reader, raw: dict[str, Any]) -> tuple[Model, ...]:
    models = []
    for name, body in raw.items():
        table = ("models", name)
        if not isinstance(body, dict):
            raise reader.error(("models",), name, f"models.{name} must be a table")
        reader.check_keys(table, body, "model")
        source = body.get("source")
        if source is None:
            raise reader.error(table, None, f"[models.{name}] needs 'source'")
        if not source.startswith(MODEL_SCHEMES):
            raise reader.error(table, "source", f"source = {source!r} in [models.{name}] must "
                               "start with hf://, ms:// or https://")
        if source.startswith(("hf://", "ms://")):
            repo = source.split("://", 1)[1].removeprefix("datasets/")
            if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo):
                raise reader.error(table, "source", f"source = {source!r} in [models.{name}] "
                                   "must name a repository as owner/name")
        models.append(Model(name=name, source=source, revision=body.get("revision"),
                            include=reader.strings(table, "include", body.get("include", [])),
                            exclude=reader.strings(table, "exclude", body.get("exclude", [])),
                            extract=body.get("extract", False)))
    return tuple(models)


def _content_hash(data: dict[str, Any]) -> str:
    """Hash of everything that decides the lock's content ([verify] runs after sync)."""
    relevant = {k: v for k, v in data.items() if k != "verify"}
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
