"""The content-addressed store on the volume: immutable entries, published atomically.

Layout (under `<store>/v1/`): `pkgs/<key>/` one unpacked wheel per entry, each scheme in its
own folder (`site/` for purelib and platlib, `scripts/`, `headers/`, `data/`) beside a
`gpulock-entry.json` manifest and `gpulock-records.json` (every file's sha256 and size);
`tmp/` work in progress; `envs/<project>/` generations.
An entry is built in `tmp/`, then renamed into place: a reader sees a complete entry or
none, and when two writers race the first rename wins and the other copy is discarded.
Correctness never rests on a lock file (network volumes ignore flock).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from gpulock import faults
from gpulock.elf import climbing_dirs, is_elf, search_paths
from gpulock.errors import GpulockError
from gpulock.layout import Layout
from gpulock.names import path_problem, script_problem
from gpulock.scratch import tag

LAYOUT_VERSION = 1
_SCHEME_DIRS = {"purelib": "site", "platlib": "site", "scripts": "scripts",
                "headers": "headers", "data": "data"}
ENTRY_MANIFEST = "gpulock-entry.json"
ENTRY_RECORDS = "gpulock-records.json"
_CHUNK = 1 << 20


def default_store(project_dir: Path) -> Path:
    """--store, else $GPULOCK_STORE, else /workspace/.gpulock on a pod's volume, else ./store."""
    if env := os.environ.get("GPULOCK_STORE"):
        return Path(env)
    workspace = Path("/workspace")
    if workspace.is_dir() and os.access(workspace, os.W_OK):
        return workspace / ".gpulock"
    return project_dir / "store"


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    name: str
    version: str
    scripts: tuple[tuple[str, str, str, str], ...]  # entry points: name, module, attr, section
    real_dirs: frozenset[str]  # site-relative folders the farm must not link whole

    @property
    def site(self) -> Path:
        return self.path / "site"


class Store:
    """One store on a volume: its root, its layout, and the package entries in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = root / f"v{LAYOUT_VERSION}"
        self.layout = Layout(self.base)

    def check_layout(self) -> None:
        """Refuse a store written by a newer gpulock, before anything is read or written."""
        newer = sorted(p.name for p in self.root.glob("v*")
                       if p.name[1:].isdigit() and int(p.name[1:]) > LAYOUT_VERSION
                       ) if self.root.is_dir() else []
        if newer:
            raise GpulockError(f"the store {self.root} has layout {newer[-1]}, newer than this "
                               f"gpulock's v{LAYOUT_VERSION}: upgrade gpulock")

    def open(self) -> Store:
        """Create the layout if needed; refuse a store written by a newer gpulock, or one
        whose own folders were replaced by links."""
        self.check_layout()
        self.layout.check()
        try:
            for folder in (self.layout.pkgs, self.layout.tmp, self.layout.envs):
                self.layout.folder(folder)
        except OSError as exc:
            raise GpulockError(f"cannot create the store at {self.root}: {exc.strerror}"
                               ) from None
        return self

    @property
    def tmp(self) -> Path:
        return self.layout.tmp

    def entry_path(self, key: str) -> Path:
        return self.layout.entry(key)

    def has(self, key: str) -> bool:
        return (self.entry_path(key) / ENTRY_MANIFEST).is_file()

    def entry(self, key: str) -> Entry:
        path = self.entry_path(key)
        try:
            data = json.loads((path / ENTRY_MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise GpulockError(f"store entry {path} is damaged ({exc}); run 'gpulock sync' "
                               "again after removing it") from None
        return Entry(key=key, path=path, name=data["name"], version=data["version"],
                     scripts=tuple(tuple(s) for s in data["scripts"]),  # type: ignore[misc]
                     real_dirs=frozenset(data["real_dirs"]))

    def work_dir(self, label: str) -> Path:
        work = Path(tempfile.mkdtemp(prefix=f"{label}.{tag()}.",
                                     dir=self.layout.folder(self.tmp)))
        work.chmod(0o755)  # entries are shared: readable by every user of the volume
        return work

    def publish(self, work: Path, key: str) -> None:
        """Rename a finished entry into place; a racing writer's identical entry wins."""
        target = self.entry_path(key)
        try:
            os.rename(work, target)
        except OSError:
            if not self.has(key):
                raise
            shutil.rmtree(work, ignore_errors=True)

    def add_wheel(self, wheel: Path, key: str, name: str, version: str,
                  python: str | None, origin: dict[str, Any] | None = None) -> Entry:
        """Unpack a verified wheel into a new entry (a no-op when the entry exists).

        `origin` (the locked file: url, sha256, size) is kept so `verify --repair` can
        fetch the wheel again.
        """
        if self.has(key):
            return self.entry(key)
        try:
            return self._unpack(wheel, key, name, version, python, origin)
        except (GpulockError, OSError):
            if self.has(key):  # a racing writer published it (and took the download)
                return self.entry(key)
            raise

    def _unpack(self, wheel: Path, key: str, name: str, version: str, python: str | None,
                origin: dict[str, Any] | None) -> Entry:
        from installer import install
        from installer.exceptions import InstallerError
        from installer.sources import WheelFile

        label = f"{name} {version}"
        _refuse_unsafe_members(wheel, label)
        work = self.work_dir(key)
        try:
            destination = _EntryDestination(work)
            try:
                with WheelFile.open(wheel) as source:
                    # The wheel's sha256 was checked against the lock; names still matter.
                    source.validate_record(validate_contents=False)
                    install(source, destination, {"INSTALLER": b"gpulock\n"})
            except (InstallerError, ValueError, KeyError, OSError) as exc:
                if isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or self.has(key)):
                    raise
                raise GpulockError(f"{label}: the wheel {wheel.name} cannot be installed: "
                                   f"{exc}") from None
            real_dirs = _real_dirs(work / "site")
            if python:
                _compile(work / "site", python)
                destination.record_compiled(work / "site")
            # Every file's hashes for `verify`, apart from the small manifest that each
            # environment build reads (torch's records alone are 1.5 MB of JSON).
            (work / ENTRY_RECORDS).write_text(json.dumps({"files": destination.records}))
            (work / ENTRY_MANIFEST).write_text(json.dumps({
                "name": name, "version": version, "origin": origin,
                "scripts": destination.scripts, "real_dirs": sorted(real_dirs),
            }, sort_keys=True))
            faults.point("publish", work)
            self.publish(work, key)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self.entry(key)

    def records(self, key: str) -> list[Record]:
        """The files an entry was published with: (path in the entry, sha256, xxh3, size)."""
        data = json.loads((self.entry_path(key) / ENTRY_RECORDS).read_text())
        return [Record(*item) for item in data["files"]]

    def origin(self, key: str) -> dict[str, Any] | None:
        return json.loads((self.entry_path(key) / ENTRY_MANIFEST).read_text()).get("origin")


class Record(NamedTuple):
    path: str  # relative to the entry, e.g. "site/torch/__init__.py"
    sha256: str
    xxh3: str
    size: int


def member_problem(name: str) -> str | None:
    """What is wrong with an archive member's name (it must stay inside its tree), or None."""
    return path_problem(posixpath.normpath(name))


def _refuse_unsafe_members(wheel: Path, label: str) -> None:
    """Refuse a wheel with absolute, `..` or link members before anything is written."""
    import stat
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise GpulockError(f"{label}: {wheel.name} is not a readable wheel: {exc}") from None
    for member in members:
        name = member.filename
        mode = member.external_attr >> 16
        if reason := member_problem(name):
            problem = f"a path outside its own tree (it {reason})"
        elif stat.S_ISLNK(mode):
            problem = "a symbolic link"
        else:
            continue
        raise GpulockError(f"{label}: {wheel.name} holds {problem} ({name!r}); it was "
                           "refused and nothing was written")


class _EntryDestination:
    """An installer destination that writes each scheme into its own folder of an entry.

    Console scripts are not written here: an entry is shared by environments, and each
    environment writes scripts for its own interpreter. RECORD is not written either, so a
    `pip uninstall` aimed at an environment refuses instead of deleting store files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scripts: list[tuple[str, str, str, str]] = []
        self.records: list[tuple[str, str, str, int]] = []

    def record_compiled(self, site: Path) -> None:
        """Add the bytecode compileall wrote, so `verify` covers what imports will load."""
        import xxhash

        for folder, _dirs, files in os.walk(site):
            if os.path.basename(folder) != "__pycache__":
                continue
            for name in files:
                path = Path(folder) / name
                data = path.read_bytes()
                self.records.append((path.relative_to(self.root).as_posix(),
                                     hashlib.sha256(data).hexdigest(),
                                     xxhash.xxh3_128_hexdigest(data), len(data)))

    def write_file(self, scheme: str, path: str | os.PathLike[str], stream: BinaryIO,
                   is_executable: bool) -> Any:
        import xxhash
        from installer.records import Hash, RecordEntry

        relative = os.fspath(path)
        problem = (script_problem(relative) if scheme == "scripts"
                   else path_problem(posixpath.normpath(relative)))
        if problem:
            what = "a script" if scheme == "scripts" else "a file"
            raise ValueError(f"it holds {what} named {relative!r}, which "
                             f"{problem or 'is outside its tree'}")
        inside = f"{_SCHEME_DIRS[scheme]}/{posixpath.normpath(relative)}"
        target = self.root / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        sha256, fast, size = hashlib.sha256(), xxhash.xxh3_128(), 0
        with target.open("wb") as handle:
            while chunk := stream.read(_CHUNK):
                handle.write(chunk)
                sha256.update(chunk)
                fast.update(chunk)
                size += len(chunk)
                faults.point("unpack", target)
        if is_executable:
            target.chmod(0o755)
        self.records.append((inside, sha256.hexdigest(), fast.hexdigest(), size))
        return RecordEntry(relative, Hash("sha256", _urlsafe(sha256.digest())), size)

    def write_script(self, name: str, module: str, attr: str, section: str) -> Any:
        from installer.records import RecordEntry

        problem = script_problem(name)
        if problem:
            raise ValueError(f"it declares a {section} script named {name!r}, which {problem}")
        self.scripts.append((name, module, attr, section))
        return RecordEntry(f"bin/{name}", None, None)

    def finalize_installation(self, scheme: str, record_file_path: str,
                              records: Any) -> None:
        return None


def _real_dirs(site: Path) -> set[str]:
    real: set[str] = set()
    for folder, _dirs, files in os.walk(site):
        for name in files:
            path = Path(folder) / name
            if (".so" in name or os.access(path, os.X_OK)) and is_elf(path):
                relative = path.relative_to(site).as_posix()
                real |= climbing_dirs(relative, search_paths(path))
    return real


def _compile(site: Path, python: str) -> None:
    """Hash-based pycs, so a shared store is never rewritten at import time (PEP 552)."""
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                    "unchecked-hash", str(site)], capture_output=True, check=False)


def _urlsafe(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
