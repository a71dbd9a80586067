"""pylock.gpu.toml: a PEP 751 lock file with gpulock's facts under [tool.gpulock].

Owns the format in both directions. Writing is deterministic (fixed key order, packages
sorted by name, no timestamps but the index's upload times), so locking twice gives
byte-identical files and a lock diff in review is the real change. Reading validates
everything `sync` relies on and names the file and the entry when something is off.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from gpulock.errors import LockfileError
from gpulock.target import Target

if TYPE_CHECKING:
    from gpulock.manifest import Manifest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

LOCK_VERSION = "1.0"
FORMAT = 1  # [tool.gpulock] format; a newer number means a newer gpulock wrote the lock
DEFAULT_NAME = "pylock.gpu.toml"


@dataclass(frozen=True)
class FileRef:
    name: str
    url: str
    size: int
    sha256: str
    upload_time: datetime | None = None


@dataclass(frozen=True)
class VcsRef:
    url: str
    commit_id: str
    requested_revision: str | None = None
    subdirectory: str | None = None


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    index: str | None = None
    wheel: FileRef | None = None
    sdist: FileRef | None = None
    vcs: VcsRef | None = None
    requires_python: str | None = None
    dependencies: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def artifact(self) -> str:
        """What identifies this package's content: the file hash or the git commit."""
        if self.wheel:
            return f"sha256:{self.wheel.sha256}"
        if self.sdist:
            return f"sha256:{self.sdist.sha256}"
        assert self.vcs is not None
        return f"git:{self.vcs.commit_id}"


@dataclass(frozen=True)
class Lock:
    target: Target
    manifest_hash: str
    packages: tuple[LockedPackage, ...]
    models: tuple[dict[str, Any], ...] = field(default=())

    def package(self, name: str) -> LockedPackage | None:
        return next((p for p in self.packages if p.name == name), None)


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
            "models": list(lock.models),
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


def default_path(manifest: Manifest) -> Path:
    return manifest.path.parent / DEFAULT_NAME


def check(manifest: Manifest, path: Path) -> Lock:
    """Raise LockfileError unless the lock exists and was made from this manifest."""
    lock = read(path)
    if lock.manifest_hash != manifest.content_hash:
        raise LockfileError(f"{path} is stale: {manifest.path.name} changed since it was "
                            "locked; run 'gpulock lock'")
    missing = {m.name for m in manifest.models} - {m.get("name") for m in lock.models}
    if missing:
        raise LockfileError(f"{path} pins no model {', '.join(sorted(missing))}; run "
                            "'gpulock lock'")
    if lock.target != manifest.target:
        raise LockfileError(f"{path} was locked for {lock.target.describe()}, but the manifest "
                            f"targets {manifest.target.describe()}; run 'gpulock lock'")
    return lock


def read(path: Path) -> Lock:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockfileError(f"{path} does not exist; run 'gpulock lock' first") from None
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
        upload = parse_time(upload)
    return FileRef(name=fields.get("name", str), url=fields.get("url", str),
                   size=fields.get("size", int), sha256=hashes.get("sha256", str),
                   upload_time=upload)


def loads(text: str, path: Path) -> Lock:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockfileError(f"{path} is not valid TOML ({exc}); it may be truncated: run "
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
                packages=tuple(packages), models=tuple(ours.get("models", list)))
