"""pylock.gpu.toml: a PEP 751 lock file with gpulock's facts under [tool.gpulock].

Owns the format in both directions. Writing is deterministic (fixed key order, packages
sorted by name, no timestamps but the index's upload times), so locking twice gives
byte-identical files and a lock diff in review is the real change. Reading validates
everything `sync` relies on and names the file and the entry when something is off.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from gpulock.credentials import credentials_in
from gpulock.errors import LockfileError, StaleLockError
from gpulock.names import git_url_problem, hex_problem, path_problem
from gpulock.pins import (
    FileRef,
    Lock,
    LockedPackage,
    PinnedModel,
    VcsRef,
    file_problem,
    model_from_table,
)
from gpulock.target import Target

if TYPE_CHECKING:
    from gpulock.manifest import Manifest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

MAX_BYTES = 256 * 2**20
LOCK_VERSION = "1.0"
FORMAT = 1  # [tool.gpulock] format; a newer number means a newer gpulock wrote the lock
DEFAULT_NAME = "pylock.gpu.toml"


def cuda_needed(lock: Lock) -> str | None:
    """The newest CUDA the lock's packages are built for (gpulock.lock.cuda), or None."""
    from packaging.version import InvalidVersion, Version

    from gpulock.lock.cuda import needed

    versions = []
    for package in lock.packages:
        try:
            versions.append((package.name, Version(package.version)))
        except InvalidVersion:
            continue
    return needed(versions)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _file(ref: FileRef) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": ref.name}
    if ref.upload_time is not None:
        entry["upload-time"] = ref.upload_time
    entry["url"] = ref.url
    entry["size"] = ref.size
    entry["hashes"] = {"sha256": ref.sha256}
    return entry


def dumps(lock: Lock) -> str:
    target = lock.target
    packages = []
    for package in sorted(lock.packages, key=lambda p: p.name):
        entry: dict[str, Any] = {"name": package.name, "version": package.version}
        if package.requires_python:
            entry["requires-python"] = package.requires_python
        if package.index:
            entry["index"] = package.index
        if package.dependencies:
            entry["dependencies"] = [{"name": d} for d in sorted(package.dependencies)]
        if package.vcs:
            vcs: dict[str, Any] = {"type": "git", "url": package.vcs.url}
            if package.vcs.requested_revision:
                vcs["requested-revision"] = package.vcs.requested_revision
            vcs["commit-id"] = package.vcs.commit_id
            if package.vcs.subdirectory:
                vcs["subdirectory"] = package.vcs.subdirectory
            entry["vcs"] = vcs
        if package.sdist:
            entry["sdist"] = _file(package.sdist)
        if package.wheel:
            entry["wheels"] = [_file(package.wheel)]
        entry["tool"] = {"gpulock": {"groups": sorted(package.groups)}}
        packages.append(entry)
    tool_target: dict[str, Any] = {"python": target.python, "platform": target.platform,
                                   "glibc": target.glibc}
    if target.cuda:
        tool_target["cuda"] = target.cuda
    # The CUDA the locked builds need (their labels, NVIDIA's runtime packages): what a
    # driver must run, which may be older than the target's.
    needed = cuda_needed(lock)
    if needed:
        tool_target["cuda-needed"] = needed
    document = {
        "lock-version": LOCK_VERSION,
        "environments": [target.environment_markers],
        "requires-python": target.requires_python,
        "created-by": "gpulock",
        "packages": packages,
        "tool": {"gpulock": {
            "format": FORMAT,
            "manifest-hash": lock.manifest_hash,
            "target": tool_target,
            "models": [m.as_dict() for m in lock.models],
        }},
    }
    header = ("# This file is written by `gpulock lock` from gpu.toml; do not edit it by hand.\n"
              "# It is a PEP 751 lock file: `uv pip install -r` and `pip` can read it.\n")
    return header + tomli_w.dumps(document)


def write(path: Path, lock: Lock) -> bool:
    """Write atomically; return False (and leave the file alone) when nothing changed."""
    text = dumps(lock)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def target_path(path: Path, target: str) -> Path:
    """The lock of `target` beside the default one: `pylock.gpu-<target>.toml` (PEP 751's
    `pylock.<name>.toml`, one name per file)."""
    from gpulock.manifest import DEFAULT_TARGET

    return path if target == DEFAULT_TARGET else path.with_name(
        f"{path.name.removesuffix('.toml')}-{target}.toml")


def default_path(manifest: Manifest) -> Path:
    return manifest.path.parent / DEFAULT_NAME


def check(manifest: Manifest, path: Path) -> Lock:
    """Raise LockfileError unless the lock exists and was made from this manifest."""
    lock = read(path)
    if lock.manifest_hash != manifest.content_hash:
        raise StaleLockError(f"{path} is stale: {manifest.path.name} changed since it was "
                            "locked; run 'gpulock lock'")
    missing = {m.name for m in manifest.models} - {m.name for m in lock.models}
    if missing:
        raise StaleLockError(f"{path} pins no model {', '.join(sorted(missing))}; run "
                            "'gpulock lock'")
    if lock.target != manifest.target:
        raise StaleLockError(f"{path} was locked for {lock.target.describe()}, but the manifest "
                            f"targets {manifest.target.describe()}; run 'gpulock lock'")
    return lock


def read(path: Path) -> Lock:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise LockfileError(f"{path} is larger than {MAX_BYTES // 2**20} MiB; it is not a "
                                "lock gpulock wrote")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StaleLockError(f"{path} does not exist; run 'gpulock lock' first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockfileError(f"{path}: cannot read the lock file: {exc}") from None
    return loads(text, path)


class _Fields:
    """Typed access to a TOML table that names the file and entry when a field is wrong."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def get(self, key: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
        if key not in self.data:
            if required:
                raise LockfileError(f"{self.where} has no '{key}'; the lock is truncated or "
                                    "was edited by hand: run 'gpulock lock' to rewrite it")
            return None
        value = self.data[key]
        if not isinstance(value, kind):
            raise LockfileError(f"{self.where}: '{key}' has the wrong type; run 'gpulock lock' "
                                "to rewrite the lock")
        return value

    def table(self, key: str, where: str, required: bool = True) -> _Fields | None:
        value = self.get(key, dict, required)
        return None if value is None else _Fields(value, where)


def _file_ref(raw: dict[str, Any], where: str) -> FileRef:
    fields = _Fields(raw, where)
    hashes = fields.table("hashes", f"{where} hashes")
    assert hashes is not None
    upload = fields.get("upload-time", (datetime, str), required=False)
    if isinstance(upload, str):
        try:
            upload = parse_time(upload)
        except ValueError:
            raise LockfileError(f"{where}: 'upload-time' is not a date and time; run "
                                "'gpulock lock' to rewrite the lock") from None
    return FileRef(name=fields.get("name", str), url=fields.get("url", str),
                   size=fields.get("size", int), sha256=hashes.get("sha256", str),
                   upload_time=upload)


def loads(text: str, path: Path) -> Lock:
    """Parse a lock and check everything sync will turn into paths, URLs and commands."""
    lock = _parse(text, path)
    _check_lock(lock, path)
    return lock


def _parse(text: str, path: Path) -> Lock:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockfileError(f"{path} is not valid TOML ({exc}); it may be truncated: run "
                            "'gpulock lock' to rewrite it") from None
    except RecursionError:
        raise LockfileError(f"{path} nests arrays or tables too deeply to be a lock; run "
                            "'gpulock lock' to rewrite it") from None
    top = _Fields(data, str(path))
    version = top.get("lock-version", str)
    if version.split(".")[0] != LOCK_VERSION.split(".")[0]:
        raise LockfileError(f"{path} has lock-version {version}; this gpulock reads "
                            f"{LOCK_VERSION}: upgrade gpulock")
    tool = top.table("tool", f"{path} [tool]")
    assert tool is not None
    ours = tool.table("gpulock", f"{path} [tool.gpulock]")
    if ours is None or top.get("created-by", str) != "gpulock":
        raise LockfileError(f"{path} was not written by gpulock")
    fmt = ours.get("format", int)
    if fmt > FORMAT:
        raise LockfileError(f"{path} was written by a newer gpulock (lock format {fmt}, this "
                            f"one reads {FORMAT}): upgrade gpulock")
    target_fields = ours.table("target", f"{path} [tool.gpulock.target]")
    assert target_fields is not None
    target = Target(python=target_fields.get("python", str),
                    platform=target_fields.get("platform", str),
                    glibc=target_fields.get("glibc", str),
                    cuda=target_fields.get("cuda", str, required=False))
    packages = []
    for i, raw in enumerate(top.get("packages", list)):
        if not isinstance(raw, dict):
            raise LockfileError(f"{path}: packages[{i}] is not a table")
        fields = _Fields(raw, f"{path} packages[{i}]")
        name = fields.get("name", str)
        where = f"{path} package '{name}'"
        fields.where = where
        wheels = fields.get("wheels", list, required=False) or []
        if len(wheels) > 1:
            raise LockfileError(f"{where} has {len(wheels)} wheels; gpulock locks exactly one")
        sdist = fields.get("sdist", dict, required=False)
        vcs_raw = fields.table("vcs", f"{where} vcs", required=False)
        if not wheels and sdist is None and vcs_raw is None:
            raise LockfileError(f"{where} has no wheel, sdist or vcs entry; run 'gpulock lock' "
                                "to rewrite the lock")
        vcs = None
        if vcs_raw is not None:
            vcs = VcsRef(url=vcs_raw.get("url", str), commit_id=vcs_raw.get("commit-id", str),
                         requested_revision=vcs_raw.get("requested-revision", str, False),
                         subdirectory=vcs_raw.get("subdirectory", str, False))
        tool_fields = fields.table("tool", f"{where} tool", required=False)
        gpulock_fields = tool_fields.table("gpulock", where, False) if tool_fields else None
        groups = gpulock_fields.get("groups", list, False) if gpulock_fields else None
        packages.append(LockedPackage(
            name=name, version=fields.get("version", str), index=fields.get("index", str, False),
            wheel=_file_ref(wheels[0], f"{where} wheel") if wheels else None,
            sdist=_file_ref(sdist, f"{where} sdist") if sdist is not None else None,
            vcs=vcs, requires_python=fields.get("requires-python", str, False),
            dependencies=tuple(d["name"] for d in fields.get("dependencies", list, False) or ()
                               if isinstance(d, dict) and "name" in d),
            groups=tuple(groups or ())))
    return Lock(target=target, manifest_hash=ours.get("manifest-hash", str),
                packages=tuple(packages), models=_models(ours.get("models", list), path))


def _models(entries: list[Any], path: Path) -> tuple[PinnedModel, ...]:
    """The lock's model pins, each refused in one sentence when it breaks a rule."""
    if not entries:
        return ()
    from gpulock.sources import checked  # the rules of each pin's own kind of source

    pins = []
    for i, entry in enumerate(entries):
        where = f"{path} models[{i}]"
        pins.append(checked(model_from_table(entry, where), where))
    return tuple(pins)


def _check_lock(lock: Lock, path: Path) -> None:
    """Refuse, naming the entry, a lock that breaks a rule of gpulock.names or PEP 751."""

    problem = _target_problem(lock.target)
    if problem:
        raise LockfileError(f"{path} [tool.gpulock.target]: {problem}; run 'gpulock lock' to "
                            "rewrite the lock")
    seen: set[str] = set()
    for package in lock.packages:
        where = f"{path} package {package.name!r}"
        problem = _package_problem(package)
        if problem is None and package.name in seen:
            problem = "is listed twice"
        if problem:
            raise LockfileError(f"{where} {problem}; the lock was refused before anything was "
                                "written (run 'gpulock lock' to rewrite it)")
        seen.add(package.name)
    names: set[str] = set()
    for model in lock.models:
        if model.name in names:
            raise LockfileError(f"{path} pins model {model.name!r} twice; run 'gpulock lock' "
                                "to rewrite the lock")
        names.add(model.name)


def _target_problem(target: Target) -> str | None:
    from gpulock.manifest import PLATFORMS, PYTHON_MINORS

    version = re.fullmatch(r"3\.(\d+)(\.\d+)?", target.python)
    if not version or int(version.group(1)) not in PYTHON_MINORS:
        return f"python {target.python!r} is not a CPython version gpulock knows"
    if target.platform not in PLATFORMS:
        return f"platform {target.platform!r} is not one of {', '.join(PLATFORMS)}"
    if not re.fullmatch(r"2\.\d+", target.glibc):
        return f"glibc {target.glibc!r} is not like 2.28"
    if target.cuda is not None and not re.fullmatch(r"\d+\.\d+", target.cuda):
        return f"cuda {target.cuda!r} is not like 12.1"
    return None


def _package_problem(package: LockedPackage) -> str | None:
    """What makes a locked package unsafe to fetch, unpack or build, or None."""
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from packaging.version import InvalidVersion, Version

    if canonicalize_name(package.name) != package.name:
        return f"has a name that is not normalized (PEP 503: {canonicalize_name(package.name)})"
    try:
        version = Version(package.version)
    except InvalidVersion:
        return f"has a version {package.version!r} that is not a PEP 440 version"
    if package.index and credentials_in(package.index):
        return "has an index URL with credentials (locks keep bare URLs)"
    for kind, ref in (("wheel", package.wheel), ("sdist", package.sdist)):
        if ref is None:
            continue
        if problem := file_problem(ref):
            return f"has a {kind} that {problem}"
        try:
            name, found = (parse_wheel_filename(ref.name)[:2] if kind == "wheel"
                           else parse_sdist_filename(ref.name))
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            return f"has a {kind} named {ref.name!r}, which is not a valid {kind} filename"
        if (name, found) != (package.name, version):
            return (f"has a {kind} named {ref.name!r}, which is not {package.name} "
                    f"{package.version}")
    if package.vcs is not None:
        vcs = package.vcs
        if credentials_in(vcs.url):
            return "has a git URL with credentials (locks keep bare URLs)"
        if problem := git_url_problem(vcs.url):
            return f"has a git URL that {problem}"
        if hex_problem(vcs.commit_id, 40) and hex_problem(vcs.commit_id, 64):
            return f"has a commit-id {vcs.commit_id!r} that is not a git commit"
        if vcs.subdirectory is not None and (problem := path_problem(vcs.subdirectory)):
            return f"has a subdirectory {vcs.subdirectory!r} that {problem}"
    return None
