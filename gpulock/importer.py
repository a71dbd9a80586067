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
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from gpulock import untrusted
from gpulock.credentials import credentials_in, redact
from gpulock.errors import GpulockError
from gpulock.manifest import TYPE_WORDS, Manifest, describe, dump, parse

_FLAGS = {"extra_index_urls": "--extra-index-url", "find_links": "--find-links",
          "trusted_hosts": "--trusted-host", "only_binary": "--only-binary",
          "no_binary": "--no-binary"}
_ONE_INDEX = ("gpulock takes each package from one index; put the packages that come from "
              "it in a group with index = ...")
_ADVICE = {"extra_index_urls": _ONE_INDEX, "find_links": _ONE_INDEX,
           "only_binary": "put those packages in a group with no_build = true",
           "no_binary": "gpulock installs the wheels the lock pins; a package must be built "
                        "from source when its index has only an sdist",
           "trusted_hosts": "gpulock checks TLS for every index"}
_YAML_GROUP_KEYS = {"index_url", "no_deps", "packages", "description"}
MODEL_SCHEMES = {"modelscope": "ms://", "huggingface": "hf://", "hf": "hf://", "ms": "ms://"}


@dataclass
class Imported:
    """A manifest read from another format, and what did not carry over, in words."""

    source: Path
    data: dict[str, Any] = field(default_factory=dict)  # gpu.toml's tables, as TOML data
    notes: dict[str, str] = field(default_factory=dict)  # table -> a comment above it
    dropped: list[str] = field(default_factory=list)  # through say(): safe to print

    def say(self, text: str) -> None:
        """Note what did not carry over: credentials left out, one printable line."""
        self.dropped.append("".join(c if c.isprintable() else "?" for c in redact(text)))

    def manifest(self) -> Manifest:
        import tomli_w

        try:
            return parse(tomli_w.dumps(self.data), self.source)
        except GpulockError as exc:
            raise GpulockError(f"{self.source} cannot become a gpu.toml: "
                               f"{str(exc).split(': ', 1)[-1]}") from None

    def header(self) -> str:
        """The comment that opens the file: where it came from and what did not carry over."""
        header = (f"gpu.toml: imported from {self.source.name} by `gpulock import`.\n"
                  "All groups are resolved together; `gpulock lock` pins them for the pod.")
        if self.dropped:
            header += ("\nNot carried over as written:\n"
                       + "\n".join(f"- {d}" for d in self.dropped))
        return header

    def text(self) -> str:
        return dump(self.manifest(), self.notes, self.header())


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
        _models(_read_models(models), models, imported)
    imported.data["groups"] = _listed_once(imported.data.get("groups") or {}, imported) or {
        "main": {"packages": []}}
    return imported


def _listed_once(groups: dict[str, Any], imported: Imported) -> dict[str, Any]:
    """Each package in the first group that lists it (gpu.toml resolves all groups together
    and lists a package once); a group left with nothing of its own goes."""
    first: dict[str, tuple[str, str]] = {}
    kept: dict[str, Any] = {}
    for group, body in groups.items():
        packages = []
        for text in body.get("packages", []):
            name = canonicalize_name(Requirement(text).name)
            if name not in first:
                first[name] = (group, text)
                packages.append(text)
            elif first[name][1] != text:
                imported.say(f"{text} in group {group!r}: {name} is listed in "
                                        f"group {first[name][0]!r} as {first[name][1]}")
        if packages or not body.get("packages"):
            kept[group] = {**body, "packages": packages}
        else:
            imported.say(f"group {group!r}: all its packages are in earlier groups")
    return kept


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
            imported.say(f"group {name!r}: not a table")
            continue
        for key in sorted(set(body) - _YAML_GROUP_KEYS, key=str):
            imported.say(f"group {name!r}: {key}: gpu.toml has no such setting")
        group: dict[str, Any] = {}
        if body.get("index_url"):
            group["index"] = _bare_index(str(body["index_url"]), imported)
            cuda = re.search(r"/cu(\d+)(\d)/?$", group["index"])
            if cuda and "cuda" not in project:
                project["cuda"] = f"{cuda.group(1)}.{cuda.group(2)}"
        if body.get("no_deps"):
            group["no_deps"] = True
        group["packages"] = _requirements_of(_listed(body.get("packages")), f"group {name!r}",
                                             imported)
        table = _unique(str(name), groups, imported, "group")
        groups[table] = group
        if body.get("description"):
            imported.notes[f"groups.{table}"] = redact(str(body["description"]))
    imported.data["groups"] = groups
    for key in sorted(set(raw) - {"groups", "install_order", "metadata", "models"}, key=str):
        imported.say(f"{key}: gpu.toml has no such setting")
    order = raw.get("install_order")
    for name in raw["groups"]:
        if isinstance(order, list) and name not in order:
            imported.say(f"group {name!r} is not in install_order (which skips it): "
                                    "gpulock resolves it with the others")
    if order:
        imported.say("install_order: not needed, all groups resolve together "
                                "(a later group can no longer upgrade an earlier one's pins)")
    if isinstance(raw.get("models"), dict):
        _models(raw["models"], path, imported)
    return imported


# -- requirements.txt ------------------------------------------------------------------------

def _requirements(path: Path) -> Imported:
    imported = Imported(path)
    packages: list[str] = []
    project: dict[str, Any] = {}
    _requirements_file(path, _root(path), imported, project, packages, {_lexical(path)})
    imported.data["project"] = project
    imported.data["groups"] = {"main": {"packages": packages}}
    return imported


def _requirements_file(path: Path, root: Path, imported: Imported, project: dict[str, Any],
                       packages: list[str], seen: set[Path], constraint: bool = False) -> None:
    """One requirements file read by pip's parser; its `-r`/`-c` files are followed here, so
    that only files in the imported file's folder are ever read (a hostile `-r
    /proc/self/environ` or `-r .env` must not end up quoted in gpu.toml)."""
    from pip_requirements_parser import InstallationError, RequirementsFile

    _text(path)  # one sentence for a file that is not text, before pip's parser reads it
    try:
        parsed = RequirementsFile.from_file(str(path), include_nested=False)
    except (InstallationError, OSError, UnicodeDecodeError) as exc:
        why = str(exc).replace("|n", " ").splitlines()[0]
        raise GpulockError(f"{path}: cannot be read: {why}") from None
    for bad in parsed.invalid_lines:  # never quoted: the line may hold anything
        imported.say(f"{bad.filename}:{bad.line_number}: a line pip's parser cannot read")
    for option in parsed.options:
        where = f"{option.requirement_line.filename}:{option.requirement_line.line_number}"
        options = dict(option.options)
        for key in ("requirements", "constraints"):
            for name in options.pop(key, None) or []:
                nested = _included(path, str(name), root, where)
                if nested not in seen:
                    seen.add(nested)
                    _requirements_file(nested, root, imported, project, packages, seen,
                                       constraint or key == "constraints")
        _option(options, where, project, imported)
    for req in parsed.requirements:
        where = f"{req.requirement_line.filename}:{req.requirement_line.line_number}"
        if constraint:
            imported.say(f"{where}: constraint {req.req or req.link}: gpu.toml has no "
                         "constraints; add it to a group if it must hold")
        else:
            packages += _requirement_line(req, where, imported)


def _root(path: Path) -> Path:
    """Where `-r`/`-c` files may be read from: the current folder (a repository's root, as
    `gpulock import docs/requirements.txt` is run) when the imported file lies in it, else
    the imported file's own folder."""
    here, folder = _lexical(Path.cwd()), _lexical(path).parent
    return here if folder.is_relative_to(here) else folder


def _lexical(path: Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def _included(path: Path, name: str, root: Path, where: str) -> Path:
    """The file a `-r`/`-c` line names, if it lies below `root` (judged by its name: its
    unreadable lines are never quoted, so a link in the project may lead elsewhere)."""
    shown = ascii(redact(name))
    if "://" in name:
        raise GpulockError(f"{where}: -r {shown}: gpulock import reads only local files; "
                           "download it beside the requirements file")
    nested = _lexical(path.parent / name)
    if not nested.is_relative_to(root):
        raise GpulockError(f"{where}: -r {shown}: gpulock import reads only files in {root}")
    if not nested.exists():
        raise GpulockError(f"{where}: -r {shown}: no such file")
    return nested


def _requirement_line(req: Any, where: str, imported: Imported) -> list[str]:
    """What one requirement line of pip's parser becomes in gpu.toml (or why nothing)."""
    url = redact(req.link.url) if req.link else ""
    if req.is_editable:
        imported.say(f"{where}: editable install {url}: a pod's environment is "
                                "built from the lock; build it as a wheel or name it as a git+ "
                                "URL")
        return []
    if req.is_constraint:
        imported.say(f"{where}: constraint {req.req}: gpu.toml has no constraints; "
                                "add it to a group if it must hold")
        return []
    if req.req is None:
        imported.say(f"{where}: {url or '?'} names no package (write NAME @ URL)")
        return []
    if req.hash_options:
        imported.say(f"{where}: hashes of {req.name}: `gpulock lock` records every "
                                "file's hash itself")
    marker = f"; {req.marker}" if req.marker and not req.req.marker else ""
    if req.link and not req.req.url:
        # A bare URL (`git+https://...#egg=name`, a wheel's URL): pip names the package from
        # the fragment or the file name; gpu.toml keeps the URL, never a registry lookup.
        parts = urlsplit(req.link.url)
        fragment = "&".join(p for p in parts.fragment.split("&") if p and
                            not p.startswith("egg="))
        bare = urlunsplit(parts._replace(fragment=fragment))
        return _requirements_of([f"{req.name} @ {bare}{marker}"], where, imported)
    return _requirements_of([f"{req.req}{marker}"], where, imported)


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
            advice = _ADVICE.get(key, "gpu.toml has no such setting")
            imported.say(f"{where}: {flag} {shown}: {advice}")


# -- pyproject.toml ------------------------------------------------------------------------

def _pyproject(path: Path) -> Imported:
    raw = _load(path)
    table = raw.get("project")
    if not isinstance(table, dict):
        raise GpulockError(f"{path}: no [project] table to import")
    imported = Imported(path)
    project: dict[str, Any] = {}
    name = _typed(table, "name", str, path, "[project]") or ""
    if name:
        project["name"] = _name(name)
    python = _lowest_python(_typed(table, "requires-python", str, path, "[project]") or "")
    if python:
        project["python"] = python
    if "dependencies" in (_typed(table, "dynamic", list, path, "[project]") or []):
        imported.say("[project] dynamic = [\"dependencies\"]: the build backend "
                                "computes them; list them in gpu.toml")
    imported.data["project"] = project
    extras = _typed(table, "optional-dependencies", dict, path, "[project]") or {}
    groups = _typed(raw, "dependency-groups", dict, path) or {}
    listed: dict[str, tuple[str, list[Any]]] = {"main": ("[project] dependencies", _typed(
        table, "dependencies", list, path, "[project]") or [])}
    for kind, tables in (("extra", extras), ("dependency group", groups)):
        for group, packages in tables.items():
            listed[_unique(str(group), listed, imported, "group")] = (f"{kind} {group!r}",
                                                                      _listed(packages))
    own = canonicalize_name(name)
    imported.data["groups"] = {
        group: {"packages": _requirements_of(
            _expand(packages, own, extras, groups, where, imported), where, imported)}
        for group, (where, packages) in listed.items()}
    for tool in ("uv", "pdm", "poetry"):
        if tool in (_typed(raw, "tool", dict, path) or {}):
            imported.say(f"[tool.{tool}] settings (indexes, sources): give a group "
                                    "an index = ... where a package must come from one")
    return imported


def _typed(table: Mapping[str, Any], key: str, kind: type, path: Path, within: str = ""
           ) -> Any:
    """`table[key]` when it is a `kind`, None when absent; else one sentence naming it."""
    value = table.get(key)
    if value is not None and not isinstance(value, kind):
        place = f"{within} {key}" if within else key
        raise GpulockError(f"{path}: {place} must be {TYPE_WORDS[kind]}, not "
                           f"{describe(value)}")
    return value


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
        found: ast.expr | None = None
        if isinstance(node, ast.FunctionDef) and node.name == "models":
            found = next((inner.value for inner in ast.walk(node) if isinstance(inner, ast.Return)
                          and isinstance(inner.value, ast.Dict)), None)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in ("models", "MODELS") for t in node.targets):
            found = node.value
        if found is not None:
            try:
                return ast.literal_eval(found)
            except ValueError:
                raise GpulockError(f"{path}:{found.lineno}: the models dict is computed, not "
                                   "written out; list the repositories in a YAML or JSON file "
                                   "for --models") from None
    raise GpulockError(f"{path}: found no `models` dict literal to import")


def _models(raw: Any, where: Path, imported: Imported) -> None:
    """Add the models of a `{hub: [repository id, ...]}` dict read from `where`."""
    if not isinstance(raw, dict):
        raise GpulockError(f"{where}: the models are not a dict of hub -> repository ids "
                           f"(found a {type(raw).__name__})")
    models: dict[str, Any] = imported.data.setdefault("models", {})
    for hub, repos in raw.items():
        scheme = MODEL_SCHEMES.get(str(hub).lower())
        if scheme is None:
            imported.say(f"models from {hub!r}: gpulock knows modelscope and "
                                    "huggingface")
            continue
        for repo in _listed(repos):
            if not isinstance(repo, str):
                imported.say(f"models from {hub!r}: {repo!r} is not a repository id")
                continue
            owner, _, repo_name = repo.partition("/")
            models[_unique(repo_name or owner, models, imported, "model")] = {
                "source": f"{scheme}{repo}"}


# -- shared ----------------------------------------------------------------------------------

MAX_INPUT = 4 * 1024 * 1024  # a dependency file larger than this is not one


def _text(path: Path) -> str:
    """A regular, not too large UTF-8 file's text, or one sentence saying why not."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise GpulockError(f"{path}: not a regular file")
        if info.st_size > MAX_INPUT:
            raise GpulockError(f"{path}: {info.st_size} bytes is too large to be a dependency "
                               f"file (at most {MAX_INPUT})")
        with path.open("rb") as handle:
            return handle.read(MAX_INPUT + 1)[:MAX_INPUT].decode("utf-8")
    except FileNotFoundError:
        raise GpulockError(f"{path}: no such file to import") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GpulockError(f"{path}: not a readable UTF-8 text file ({exc})") from None


def _load(path: Path) -> Any:
    """The data in a TOML, JSON or YAML file (by its suffix), or one sentence saying why not."""
    text = _text(path)
    if path.suffix == ".toml":
        return untrusted.toml(text, str(path))
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
        # Aliases let a few hundred bytes stand for billions of items: none are followed.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader)):
            raise GpulockError(f"{path}: uses YAML aliases (*name), which gpulock import does "
                               "not follow; write the values out")
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
            imported.say(f"{where}: {redact(str(text))!r} is not a requirement "
                                    f"({str(exc).splitlines()[0]})")
            continue
        if requirement.url and not requirement.url.startswith("git+"):
            imported.say(f"{where}: {redact(str(text))!r}: only git+ URLs can be "
                                    "locked; give the package's name and version instead")
            continue
        if requirement.url and credentials_in(requirement.url):
            requirement.url = redact(requirement.url)
            imported.say(f"{where}: the credentials in {requirement.name}'s URL: "
                                    "put them in ~/.netrc")
        kept.append(str(requirement))
    return kept


def _listed(value: Any) -> list[Any]:
    """A list as written; one item alone (`packages: torch`) as a list of one."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _unique(label: str, taken: Mapping[str, Any], imported: Imported, kind: str) -> str:
    """A gpu.toml name for `label` that no other group or model has taken yet."""
    name = base = _name(label)
    number = 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    if name != label:
        imported.say(f"{kind} {label!r} is named {name!r} in gpu.toml")
    return name


def _expand(packages: list[Any], own: str, extras: Mapping[str, Any],
            groups: Mapping[str, Any], where: str, imported: Imported, depth: int = 0
            ) -> list[str]:
    """pyproject requirements with `{include-group = ...}` (PEP 735) and the project's own
    extras (`svc[dev]`) replaced by what they list: gpu.toml has no project to refer to."""
    out: list[str] = []
    for item in packages:
        nested: list[Any] = []
        if isinstance(item, dict) and "include-group" in item:
            name = str(item["include-group"])
            if name not in groups:
                imported.say(f"{where}: include-group {name!r}: no such group")
            nested = _listed(groups.get(name))
        elif isinstance(item, str) and own and _names_project(item, own):
            for extra in Requirement(item).extras:
                nested += _listed(extras.get(extra))
        elif isinstance(item, str):
            out.append(item)
            continue
        else:
            imported.say(f"{where}: {item!r} is not a requirement")
        if nested and depth > 8:
            imported.say(f"{where}: {item!r} includes itself")
        elif nested:
            out += _expand(nested, own, extras, groups, where, imported, depth + 1)
    return out


def _names_project(text: str, own: str) -> bool:
    try:
        return canonicalize_name(Requirement(text).name) == own
    except InvalidRequirement:
        return False


def _lowest_python(requires: str) -> str | None:
    """The oldest CPython minor (3.8-3.15) that `requires-python` admits."""
    try:
        specifier = SpecifierSet(requires)
    except InvalidSpecifier:
        return None
    if not requires.strip():
        return None
    for minor in range(8, 16):
        if any(specifier.contains(f"3.{minor}.{patch}") for patch in (0, 99)):
            return f"3.{minor}"
    return None


def _bare_index(url: str, imported: Imported) -> str:
    if credentials_in(url):
        imported.say(f"the credentials in {redact(url)}: put them in ~/.netrc "
                                "(gpu.toml and the lock keep bare URLs)")
    return redact(url).rstrip("/")


def _name(text: str) -> str:
    """A project, group or model name gpu.toml accepts, made from any label."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")[:128]
    return name or "project"
