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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gpulock import faults
from gpulock.errors import GpulockError
from gpulock.store.layout import Layout
from gpulock.store.scratch import tag

if TYPE_CHECKING:
    from gpulock.store.compile import Compiler

LAYOUT_VERSION = 1
ENTRY_MANIFEST = "gpulock-entry.json"
ENTRY_RECORDS = "gpulock-records.json"


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
        # Absolute before anything is written: shebangs and links made from a relative
        # `./store` would break as soon as a command runs from another folder.
        self.root = Path(os.path.abspath(root))
        if os.pathsep in str(self.root) or "\n" in str(self.root):
            # Its environments go on PATH and PYTHONPATH, which split at ':'.
            raise GpulockError(f"the store path {str(self.root)!r} holds {os.pathsep!r} or a "
                               "newline, which PATH and PYTHONPATH cannot hold; choose another")
        self.base = self.root / f"v{LAYOUT_VERSION}"
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
        """Whether the entry is published (refusing one reached through a planted link)."""
        return self.layout.present(self.entry_path(key) / ENTRY_MANIFEST)

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
                  compiler: Compiler | None, origin: dict[str, Any] | None = None,
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
                compiler: Compiler | None, origin: dict[str, Any] | None, keep: bool) -> Entry:
        from gpulock.store.unpack import unpack

        work = self.work_dir(key)
        try:
            unpacked = unpack(wheel, work, f"{name} {version}", compiler,
                              racing=lambda: self.has(key))
            built = _keep_wheel(wheel, work, unpacked.records) if keep else None
            # Every file's hashes for `verify`, apart from the small manifest that each
            # environment build reads (torch's records alone are 1.5 MB of JSON).
            (work / ENTRY_RECORDS).write_text(json.dumps({"files": unpacked.records}))
            (work / ENTRY_MANIFEST).write_text(json.dumps({
                "name": name, "version": version, "origin": origin, "built": built,
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
        data = json.loads((self.entry_path(key) / ENTRY_RECORDS).read_text())
        return [Record(*item) for item in data["files"]]

    def origin(self, key: str) -> dict[str, Any] | None:
        return json.loads((self.entry_path(key) / ENTRY_MANIFEST).read_text()).get("origin")

    def built(self, key: str) -> tuple[Path, str, int] | None:
        """The wheel a built entry was unpacked from (path, sha256, size), if it kept one."""
        kept = json.loads((self.entry_path(key) / ENTRY_MANIFEST).read_text()).get("built")
        if not isinstance(kept, dict):
            return None
        path = Layout.named(self.entry_path(key) / "built", str(kept.get("filename")),
                            "a built wheel's filename")
        return path, str(kept.get("sha256")), int(kept.get("size", 0))


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


class Record(NamedTuple):
    path: str  # relative to the entry, e.g. "site/torch/__init__.py"
    sha256: str
    xxh3: str
    size: int


