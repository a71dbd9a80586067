"""`gpulock import`: a gpu.toml from the files projects keep today.

- runpod-model-manager's `dependencies.yaml` (groups with `index_url`, `no_deps`, a
  `description`; `install_order`; `metadata.project` and `metadata.python_version`), and its
  models dict `{"modelscope": [...], "huggingface": [...]}`, from a YAML/JSON file or read
  (never run) from the `models` property of its config.py;
- `requirements.txt`, read by pip's own parser (pip-requirements-parser): `-r`, `-c`,
  `-i`, `--extra-index-url`, `--find-links`, hashes, markers, continuation lines;
- `pyproject.toml`: `[project] dependencies`, `optional-dependencies` and PEP 735
  `[dependency-groups]`.

What has no place in gpu.toml (install orders, constraints, hashes, extra indexes, editable
installs, credentials) is said in words, never dropped silently. The manifest is written by
`manifest.dump`, so importing and locking see exactly the same thing.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from gpulock.credentials import credentials_in, redact
from gpulock.errors import GpulockError
from gpulock.manifest import Manifest, dump, parse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_FLAGS = {"extra_index_urls": "--extra-index-url", "find_links": "--find-links"}
_ONE_INDEX = ("gpulock takes each package from one index; put the packages that come from "
              "it in a group with index = ...")
MODEL_SCHEMES = {"modelscope": "ms://", "huggingface": "hf://", "hf": "hf://", "ms": "ms://"}


@dataclass
class Imported:
    """A manifest read from another format, and what did not carry over, in words."""

    source: Path
    data: dict[str, Any] = field(default_factory=dict)  # gpu.toml's tables, as TOML data
    notes: dict[str, str] = field(default_factory=dict)  # table -> a comment above it
    dropped: list[str] = field(default_factory=list)

    def manifest(self) -> Manifest:
        import tomli_w

        try:
            return parse(tomli_w.dumps(self.data), self.source)
        except GpulockError as exc:
            raise GpulockError(f"{self.source} cannot become a gpu.toml: "
                               f"{str(exc).split(': ', 1)[-1]}") from None

    def text(self) -> str:
        header = (f"gpu.toml: imported from {self.source.name} by `gpulock import`.\n"
                  "All groups are resolved together; `gpulock lock` pins them for the pod.")
        if self.dropped:
            header += "\nNot carried over:\n" + "\n".join(f"- {d}" for d in self.dropped)
        return dump(self.manifest(), self.notes, header)


def import_file(path: Path, python: str | None = None, models: Path | None = None
                ) -> Imported:
    """Read `path` (its kind told by its name) and, optionally, a models dict."""
    if not path.is_file():
        raise GpulockError(f"{path}: no such file to import")
    if path.suffix in (".yaml", ".yml"):
        imported = _dependencies_yaml(path)
    elif path.name == "pyproject.toml":
        imported = _pyproject(path)
    else:
        imported = _requirements(path)
    project = imported.data.setdefault("project", {})
    project.setdefault("name", _name(path.resolve().parent.name))
    if python:
        project["python"] = python
    project.setdefault("python", f"{sys.version_info.major}.{sys.version_info.minor}")
    if models is not None:
        imported.data["models"] = {**imported.data.get("models", {}), **_models(
            _read_models(models), imported)}
    imported.data.setdefault("groups", {"main": {"packages": []}})
    return imported


# -- dependencies.yaml ---------------------------------------------------------------------

def _dependencies_yaml(path: Path) -> Imported:
    raw = _load(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("groups"), dict):
        raise GpulockError(f"{path}: expected a 'groups' table (runpod-model-manager's "
                           "dependencies.yaml)")
    imported = Imported(path)
    meta: dict[str, Any] = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    project: dict[str, Any] = {}
    if meta.get("project"):
        project["name"] = _name(str(meta["project"]))
    if meta.get("python_version"):
        project["python"] = str(meta["python_version"])
    imported.data["project"] = project
    groups: dict[str, Any] = {}
    for name, body in raw["groups"].items():
        if not isinstance(body, dict):
            imported.dropped.append(f"group {name!r}: not a table")
            continue
        group: dict[str, Any] = {}
        if body.get("index_url"):
            group["index"] = _bare_index(str(body["index_url"]), imported)
            cuda = re.search(r"/cu(\d+)(\d)/?$", group["index"])
            if cuda and "cuda" not in project:
                project["cuda"] = f"{cuda.group(1)}.{cuda.group(2)}"
        if body.get("no_deps"):
            group["no_deps"] = True
        group["packages"] = _requirements_of(body.get("packages") or [], f"group {name!r}",
                                             imported)
        groups[_name(str(name))] = group
        if body.get("description"):
            imported.notes[f"groups.{_name(str(name))}"] = str(body["description"])
    imported.data["groups"] = groups
    if raw.get("install_order"):
        imported.dropped.append("install_order: not needed, all groups resolve together "
                                "(a later group can no longer upgrade an earlier one's pins)")
    if isinstance(raw.get("models"), dict):
        imported.data["models"] = _models(raw["models"], imported)
    return imported


# -- requirements.txt ------------------------------------------------------------------------

def _requirements(path: Path) -> Imported:
    from pip_requirements_parser import InstallationError, RequirementsFile

    imported = Imported(path)
    _text(path)  # one sentence for a file that is not text, before pip's parser reads it
    try:
        parsed = RequirementsFile.from_file(str(path), include_nested=True)
    except (InstallationError, OSError, UnicodeDecodeError) as exc:
        why = str(exc).replace("|n", " ").splitlines()[0]
        raise GpulockError(f"{path}: a file it includes cannot be read: {why}") from None
    packages: list[str] = []
    project: dict[str, Any] = {}
    for bad in parsed.invalid_lines:
        imported.dropped.append(f"{bad.filename}:{bad.line_number}: {bad.line.strip()!r} "
                                f"cannot be read ({bad.error_message})")
    for option in parsed.options:
        _option(option.options, f"{option.requirement_line.filename}:"
                f"{option.requirement_line.line_number}", project, imported)
    for req in parsed.requirements:
        where = f"{req.requirement_line.filename}:{req.requirement_line.line_number}"
        if req.is_editable:
            imported.dropped.append(f"{where}: editable install {req.link.url if req.link else ''}"
                                    ": a pod's environment is built from the lock; build it "
                                    "as a wheel or name it as a git+ URL")
        elif req.is_constraint:
            imported.dropped.append(f"{where}: constraint {req.req}: gpu.toml has no "
                                    "constraints; add it to a group if it must hold")
        elif req.req is None:
            imported.dropped.append(f"{where}: {req.link.url if req.link else '?'} names no "
                                    "package")
        else:
            if req.hash_options:
                imported.dropped.append(f"{where}: hashes of {req.name}: `gpulock lock` "
                                        "records every file's hash itself")
            marker = f"; {req.marker}" if req.marker and not req.req.marker else ""
            packages += _requirements_of([f"{req.req}{marker}"], where, imported)
    imported.data["project"] = project
    imported.data["groups"] = {"main": {"packages": packages}}
    return imported


def _option(options: dict[str, Any], where: str, project: dict[str, Any],
            imported: Imported) -> None:
    for key, value in options.items():
        if key == "index_url":
            project["index"] = _bare_index(str(value), imported)
        elif key == "pre":
            project["prerelease"] = "allow"
        elif key == "only_binary" and ":all:" in str(value):
            project["no_build"] = True
        elif key in ("requirements", "constraints"):
            continue  # read by the parser itself (include_nested)
        else:
            shown = ", ".join(redact(str(v)) for v in (value if isinstance(value, list)
                                                       else [value]))
            flag = _FLAGS.get(key, "--" + key.replace("_", "-"))
            advice = (_ONE_INDEX if key in ("extra_index_urls", "find_links")
                      else "gpu.toml has no such setting")
            imported.dropped.append(f"{where}: {flag} {shown}: {advice}")


# -- pyproject.toml ------------------------------------------------------------------------

def _pyproject(path: Path) -> Imported:
    raw = _load(path)
    table = raw.get("project")
    if not isinstance(table, dict):
        raise GpulockError(f"{path}: no [project] table to import")
    imported = Imported(path)
    project: dict[str, Any] = {}
    if table.get("name"):
        project["name"] = _name(str(table["name"]))
    lowest = re.search(r">=\s*3\.(\d+)", str(table.get("requires-python", "")))
    if lowest:
        project["python"] = f"3.{lowest.group(1)}"
    imported.data["project"] = project
    groups = {"main": {"packages": _requirements_of(table.get("dependencies") or [],
                                                    "[project] dependencies", imported)}}
    extras = table.get("optional-dependencies") or {}
    for name, packages in {**extras, **(raw.get("dependency-groups") or {})}.items():
        plain = [p for p in packages if isinstance(p, str)]
        if len(plain) != len(packages):
            imported.dropped.append(f"group {name!r}: include-group entries (list their "
                                    "packages in the group instead)")
        groups[_name(str(name))] = {"packages": _requirements_of(plain, f"group {name!r}",
                                                                 imported)}
    imported.data["groups"] = groups
    for tool in ("uv", "pdm", "poetry"):
        if tool in (raw.get("tool") or {}):
            imported.dropped.append(f"[tool.{tool}] settings (indexes, sources): give a group "
                                    "an index = ... where a package must come from one")
    return imported


# -- models ----------------------------------------------------------------------------------

def _read_models(path: Path) -> Any:
    """A models dict from YAML/JSON, or the literal a config.py's `models` returns (read with
    ast, never run: an import must not execute a project's code)."""
    if path.suffix != ".py":
        return _load(path)
    try:
        tree = ast.parse(_text(path), str(path))
    except (SyntaxError, ValueError) as exc:
        raise GpulockError(f"{path}: not readable Python: {exc}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "models":
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and isinstance(inner.value, ast.Dict):
                    return ast.literal_eval(inner.value)
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in ("models", "MODELS") for t in node.targets):
            return ast.literal_eval(node.value)
    raise GpulockError(f"{path}: found no `models` dict literal to import")


def _models(raw: Any, imported: Imported) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise GpulockError(f"the models to import are not a dict of hub -> repository ids: "
                           f"{type(raw).__name__}")
    models: dict[str, Any] = {}
    for hub, repos in raw.items():
        scheme = MODEL_SCHEMES.get(str(hub).lower())
        if scheme is None:
            imported.dropped.append(f"models from {hub!r}: gpulock knows modelscope and "
                                    "huggingface")
            continue
        for repo in repos or []:
            owner, _, repo_name = str(repo).partition("/")
            name = _name(repo_name or owner)
            if name in models:
                name = _name(f"{owner}-{repo_name}")
            models[name] = {"source": f"{scheme}{repo}"}
    return models


# -- shared ----------------------------------------------------------------------------------

def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GpulockError(f"{path}: no such file to import") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GpulockError(f"{path}: not a readable UTF-8 text file ({exc})") from None


def _load(path: Path) -> Any:
    """The data in a TOML, JSON or YAML file (by its suffix), or one sentence saying why not."""
    text = _text(path)
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise GpulockError(f"{path}: not readable TOML: {exc}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise GpulockError(f"{path}: not readable JSON: {exc}") from None
    import yaml

    class Loader(yaml.SafeLoader):
        """Numbers stay as written: `python_version: 3.10` is "3.10", not the float 3.1."""

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    try:
        return yaml.load(text, Loader=Loader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise GpulockError(f"{path}: not readable YAML: {' '.join(str(exc).split())}"
                           ) from None


def _requirements_of(texts: list[Any], where: str, imported: Imported) -> list[str]:
    kept = []
    for text in texts:
        try:
            requirement = Requirement(str(text))
        except InvalidRequirement as exc:
            imported.dropped.append(f"{where}: {redact(str(text))!r} is not a requirement "
                                    f"({str(exc).splitlines()[0]})")
            continue
        if requirement.url and not requirement.url.startswith("git+"):
            imported.dropped.append(f"{where}: {redact(str(text))!r}: only git+ URLs can be "
                                    "locked; give the package's name and version instead")
            continue
        if requirement.url and credentials_in(requirement.url):
            requirement.url = redact(requirement.url)
            imported.dropped.append(f"{where}: the credentials in {requirement.name}'s URL: "
                                    "put them in ~/.netrc")
        kept.append(str(requirement))
    return kept


def _bare_index(url: str, imported: Imported) -> str:
    if credentials_in(url):
        imported.dropped.append(f"the credentials in {redact(url)}: put them in ~/.netrc "
                                "(gpu.toml and the lock keep bare URLs)")
    return redact(url).rstrip("/")


def _name(text: str) -> str:
    """A project, group or model name gpu.toml accepts, made from any label."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")[:128]
    return name or "project"
