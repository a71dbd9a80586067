"""The content-addressed store on the volume: immutable entries, published atomically.

Layout (under `<store>/v1/`): `pkgs/<key>/` one unpacked wheel per entry, each scheme in its
own folder (`site/` for purelib and platlib, `scripts/`, `headers/`, `data/`) beside a
`gpulock-entry.json` manifest and `gpulock-records.json` (every file's sha256 and size);
`tmp/` work in progress; `envs/<project>/` generations.
An entry is built in `tmp/`, then renamed into place: a reader sees a complete entry or
none, and when two writers race the first rename wins and the other copy is discarded.
Correctness never rests on a lock file (network volumes ignore flock).

Beside the entries (Store, Entry) the package holds what keeps the store honest:
layout.py and names.py (every path, from checked names only), unpack.py and fetch.py (bytes
in, verified), compile.py (bytecode, by the environment's interpreter), scratch.py and
seal.py (work in progress, sealed records), roots.py, gc.py and verify.py, and
substituters/ (binary caches other stores fill it from).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gpulock import faults, places
from gpulock.errors import GpulockError
from gpulock.names import hex_problem, segment_problem
from gpulock.safeopen import Unsafe, read_json
from gpulock.store.layout import Layout
from gpulock.store.scratch import tag

if TYPE_CHECKING:
    from gpulock.pins import FileRef
    from gpulock.store.compile import Compiler

ENTRY_MANIFEST = "gpulock-entry.json"
ENTRY_RECORDS = "gpulock-records.json"
# What an entry's own files may hold: its manifest is names, scripts and folders (KiB); its
# records every file's hashes (torch's: 1.5 MB).
MANIFEST_LIMIT = 4 * 2**20
RECORDS_LIMIT = 256 * 2**20
# An entry point's module or attribute, as installer parses entry_points.txt: a console
# script is generated from them, so anything else would be code written into bin/.
_DOTTED = re.compile(r"[\w.]+")


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    name: str
    version: str
    scripts: tuple[tuple[str, str, str, str], ...]  # entry points: name, module, attr, section
    real_dirs: frozenset[str]  # site-relative folders the farm must not link whole
    origin: FileRef | None = None  # the locked wheel it was unpacked from, if any
    built: tuple[str, str, int] | None = None  # the built wheel it keeps: filename, sha256, size

    @property
    def site(self) -> Path:
        return self.path / "site"


class DamagedEntry(GpulockError):
    """An entry whose own files (manifest, records, scripts) are not what gpulock wrote:
    planted, edited, or of the wrong shape; `why` says how."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"store entry {path} is damaged ({why}); run 'gpulock verify "
                         "--repair'")
        self.why = why


class Store:
    """One store on a volume: its root, its layout, and the package entries in it."""

    def __init__(self, root: Path) -> None:
        # Absolute before anything is written: shebangs and links made from a relative
        # `./store` would break as soon as a command runs from another folder.
        self.root = Path(os.path.abspath(root))
        if os.pathsep in str(self.root) or "\n" in str(self.root):
            # Its environments go on PATH and PYTHONPATH, which split at ':'.
            raise GpulockError(f"the store path {str(self.root)!r} holds {os.pathsep!r} or a "
                               "newline, which PATH and PYTHONPATH cannot hold; choose another")
        self.base = self.root / f"v{places.LAYOUT_VERSION}"
        self.layout = Layout(self.base)

    def check_layout(self) -> None:
        """Refuse a store written by a newer gpulock, before anything is read or written."""
        newer = sorted(p.name for p in self.root.glob("v*")
                       if p.name[1:].isdigit() and int(p.name[1:]) > places.LAYOUT_VERSION
                       ) if self.root.is_dir() else []
        if newer:
            raise GpulockError(f"the store {self.root} has layout {newer[-1]}, newer than this "
                               f"gpulock's v{places.LAYOUT_VERSION}: upgrade gpulock")

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
        """Whether the entry is published (refusing one reached through a planted link)."""
        return self.layout.present(self.entry_path(key) / ENTRY_MANIFEST)

    def entry(self, key: str) -> Entry:
        """The published entry `key`, its manifest checked field by field (DamagedEntry)."""
        path = self.entry_path(key)
        data = self._manifest(key)
        name, version = data.get("name"), data.get("version")
        if not (isinstance(name, str) and isinstance(version, str)):
            raise DamagedEntry(path, "its manifest has no name and version")
        scripts = data.get("scripts")
        if not isinstance(scripts, list) or not all(map(_entry_point, scripts)):
            raise DamagedEntry(path, "its manifest's scripts are not entry points")
        real_dirs = data.get("real_dirs")
        if not isinstance(real_dirs, list) or not all(isinstance(d, str) for d in real_dirs):
            raise DamagedEntry(path, "its manifest's real_dirs are not folder names")
        return Entry(key=key, path=path, name=name, version=version,
                     scripts=tuple((s[0], s[1], s[2], s[3]) for s in scripts),
                     real_dirs=frozenset(real_dirs), origin=_origin(path, data.get("origin")),
                     built=_built(path, data.get("built")))

    def _manifest(self, key: str) -> dict[str, Any]:
        data = self._own(key, ENTRY_MANIFEST, MANIFEST_LIMIT)
        if not isinstance(data, dict):
            raise DamagedEntry(self.entry_path(key), "its manifest is not a JSON object")
        return data

    def _own(self, key: str, name: str, limit: int) -> Any:
        """One of the entry's own JSON files, read as safeopen reads a file anyone may have
        replaced: never through a link, never waiting on a FIFO, never more than `limit`."""
        path = self.entry_path(key)
        try:
            return read_json(path / name, limit)
        except FileNotFoundError:
            raise DamagedEntry(path, f"{name} is not there") from None
        except Unsafe as exc:
            raise DamagedEntry(path, str(exc).removeprefix(f"{path}/")) from None

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
                  compiler: Compiler | None, origin: FileRef | None = None,
                  keep: bool = False) -> Entry:
        """Unpack a verified wheel into a new entry (a no-op when the entry exists).

        `compiler` writes its bytecode (None: none). `origin` (the locked file: url, sha256,
        size) is kept so `verify --repair` can fetch the wheel again; a wheel built from
        source has none and is kept (`keep`) in the entry's `built/` instead, so that `push`
        can share it.
        """
        if self.has(key):
            return self.entry(key)
        try:
            return self._unpack(wheel, key, name, version, compiler, origin, keep)
        except (GpulockError, OSError):
            if self.has(key):  # a racing writer published it (and took the download)
                return self.entry(key)
            raise

    def _unpack(self, wheel: Path, key: str, name: str, version: str,
                compiler: Compiler | None, origin: FileRef | None, keep: bool) -> Entry:
        from gpulock.store.unpack import unpack

        work = self.work_dir(key)
        try:
            unpacked = unpack(wheel, work, f"{name} {version}", compiler,
                              racing=lambda: self.has(key))
            built = _keep_wheel(wheel, work, unpacked.records) if keep else None
            # Every file's hashes for `verify`, apart from the small manifest that each
            # environment build reads (torch's records alone are 1.5 MB of JSON).
            (work / ENTRY_RECORDS).write_text(json.dumps({"files": unpacked.records}))
            kept = None if origin is None else {"url": origin.url, "sha256": origin.sha256,
                                                "size": origin.size, "name": origin.name}
            (work / ENTRY_MANIFEST).write_text(json.dumps({
                "name": name, "version": version, "origin": kept, "built": built,
                "scripts": unpacked.scripts, "real_dirs": sorted(unpacked.real_dirs),
            }, sort_keys=True))
            faults.point("publish", work)
            self.publish(work, key)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self.entry(key)

    def records(self, key: str) -> list[Record]:
        """The files an entry was published with: (path in the entry, sha256, xxh3, size)."""
        data = self._own(key, ENTRY_RECORDS, RECORDS_LIMIT)
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(map(_record, files)):
            raise DamagedEntry(self.entry_path(key), f"{ENTRY_RECORDS} does not list "
                               "[path, sha256, xxh3, size] records")
        return [Record(*item) for item in files]

    def origin(self, key: str) -> FileRef | None:
        """The locked wheel the entry was unpacked from (None: built from source), read from
        the manifest's `origin` alone: what `verify --repair` fetches again when the rest of
        the manifest is damaged."""
        return _origin(self.entry_path(key), self._manifest(key).get("origin"))

    def built(self, key: str) -> tuple[Path, str, int] | None:
        """The wheel a built entry was unpacked from (path, sha256, size), if it kept one."""
        kept = self.entry(key).built
        if kept is None:
            return None
        filename, sha256, size = kept
        return self.entry_path(key) / "built" / filename, sha256, size


def _keep_wheel(wheel: Path, work: Path, records: list[Any]) -> dict[str, Any]:
    """Copy a built wheel into the entry's `built/`, recorded like every file it holds."""
    import xxhash

    kept = Layout.named(work / "built", wheel.name, "a built wheel's filename")
    kept.parent.mkdir()
    sha256, fast, size = hashlib.sha256(), xxhash.xxh3_128(), 0
    with wheel.open("rb") as source, kept.open("xb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
            sha256.update(chunk)
            fast.update(chunk)
            size += len(chunk)
    records.append((f"built/{wheel.name}", sha256.hexdigest(), fast.hexdigest(), size))
    return {"filename": wheel.name, "sha256": sha256.hexdigest(), "size": size}


def _entry_point(value: Any) -> bool:
    """Whether a manifest's script is [name, module, attribute, "console" or "gui"]."""
    return (isinstance(value, list) and len(value) == 4 and all(isinstance(v, str) for v in value)
            and bool(_DOTTED.fullmatch(value[1])) and bool(_DOTTED.fullmatch(value[2]))
            and value[3] in ("console", "gui"))


def _record(value: Any) -> bool:
    """Whether a records entry is [path, sha256, xxh3, size]."""
    return (isinstance(value, list) and len(value) == 4 and all(isinstance(v, str)
                                                                for v in value[:3])
            and isinstance(value[3], int) and not isinstance(value[3], bool))


def _origin(path: Path, value: Any) -> FileRef | None:
    """A manifest's `origin`, checked by the lock's own rules for a wheel it names."""
    from gpulock.pins import FileRef, file_problem

    if value is None:
        return None
    if not isinstance(value, dict):
        raise DamagedEntry(path, "its manifest's origin is not a locked file")
    fields: dict[str, Any] = {"name": None, "url": None, "size": None, "sha256": None, **value}
    ref = FileRef(name=fields["name"], url=fields["url"], size=fields["size"],
                  sha256=fields["sha256"])
    if problem := file_problem(ref):
        raise DamagedEntry(path, f"its manifest's origin {problem}")
    return ref


def _built(path: Path, value: Any) -> tuple[str, str, int] | None:
    """A manifest's `built`: the kept wheel's filename, sha256 and size."""
    if value is None:
        return None
    kept = value if isinstance(value, dict) else {}
    filename, sha256, size = kept.get("filename"), kept.get("sha256"), kept.get("size")
    if not (isinstance(filename, str) and not segment_problem(filename)
            and isinstance(sha256, str) and not hex_problem(sha256, 64)
            and isinstance(size, int) and not isinstance(size, bool) and size >= 0):
        raise DamagedEntry(path, "its manifest's built wheel is not a filename, sha256 and "
                           "size")
    return filename, sha256, size


class Record(NamedTuple):
    path: str  # relative to the entry, e.g. "site/torch/__init__.py"
    sha256: str
    xxh3: str
    size: int


