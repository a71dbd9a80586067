"""A verified wheel unpacked into a new store entry: pypa's installer, with gpulock's rules.

Before anything is written the wheel's member names are checked (no absolute path, no `..`,
no link); while installer writes each file, every byte is hashed once (sha256 for `verify`,
xxh3 for `verify --fast`) and each source is handed to the sync's compiler (hash-based pycs,
see compile.py); scripts are recorded, not written (each environment writes its own for its
interpreter) and may not be named like the interpreter; RECORD is not written, so a pip
aimed at an environment cannot uninstall store files. Then the folders an ELF `$ORIGIN`
climbs out of are noted for the farm.
Imported only when something is unpacked: installer costs 40 ms to import.
"""

from __future__ import annotations

import base64
import configparser
import errno
import hashlib
import os
import posixpath
import re
import stat
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import xxhash
from installer import install
from installer.destinations import WheelDestination
from installer.exceptions import InstallerError
from installer.records import Hash, RecordEntry
from installer.sources import WheelFile
from installer.utils import Scheme

from gpulock import faults, untrusted
from gpulock.errors import GpulockError
from gpulock.names import member_problem, path_problem, script_problem
from gpulock.store.elf import climbing_dirs, is_elf, search_paths

if TYPE_CHECKING:
    from installer.scripts import ScriptSection

    from gpulock.store.compile import Compiled, Compiler

# installer skips a wheel's shipped __pycache__ (we compile our own) and warns each time.
warnings.filterwarnings("ignore", message="Skip installing", category=RuntimeWarning)

_SCHEME_DIRS = {"purelib": "site", "platlib": "site", "scripts": "scripts",
                "headers": "headers", "data": "data"}
_CHUNK = 1 << 20
_SHOWN = 200  # what a message shows of a member's name
_DIST_INFO = re.compile(r"[^/]+\.dist-info/[^/]+")
# RECORD lists every file of a wheel, about 100 bytes each: torch's 12,000 take 1.3 MB; this
# bound holds a million.
_RECORD_MAX = 8 * untrusted.TEXT_MAX


@dataclass
class Unpacked:
    records: list[tuple[str, str, str, int]]  # path in the entry, sha256, xxh3, size
    scripts: list[tuple[str, str, str, str]]  # entry points: name, module, attr, section
    real_dirs: set[str]  # site-relative folders the farm must not link whole


def unpack(wheel: Path, work: Path, label: str, compiler: Compiler | None,
           racing: Callable[[], bool]) -> Unpacked:
    """Install `wheel` into the empty folder `work`; compile its sources with `compiler`.

    `racing()` says whether another writer has published the entry meanwhile: then an
    OSError is that writer's doing (it took the download) and is raised as it is.
    """
    _refuse_unsafe_members(wheel, label)
    destination = EntryDestination(work, compiler)
    try:
        _install(wheel, destination, label, racing)
        real_dirs = _real_dirs(work / "site", destination.binaries)
        destination.record_compiled()
    finally:
        destination.stop_compiling()  # no worker may write into `work` once it is removed
    return Unpacked(destination.records, destination.scripts, real_dirs)


def _install(wheel: Path, destination: EntryDestination, label: str,
             racing: Callable[[], bool]) -> None:
    try:
        with WheelFile.open(wheel) as source:
            # The wheel's sha256 was checked against the lock; names still matter.
            source.validate_record(validate_contents=False)
            install(source, destination, {"INSTALLER": b"gpulock\n"})
    # What a wheel's own files can make installer raise: its RECORD and entry_points.txt are
    # parsed with configparser and csv, and a script reference it cannot read is an assertion.
    except (InstallerError, ValueError, KeyError, OSError, configparser.Error,
            AssertionError) as exc:
        if isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or racing()):
            raise
        reason = " ".join(str(exc).split()) or f"{type(exc).__name__} in its RECORD or entry points"
        raise GpulockError(f"{label}: the wheel {wheel.name} cannot be installed: "
                           f"{reason}") from None


def _refuse_unsafe_members(wheel: Path, label: str) -> None:
    """Refuse a wheel with absolute, `..`, too deep or link members, or with metadata that
    installer would inflate whole into memory past its bound, before anything is written."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise GpulockError(f"{label}: {wheel.name} is not a readable wheel: {exc}") from None
    for member in members:
        name = member.filename
        if reason := member_problem(name):
            problem = f"a path outside its own tree (it {reason})"
        elif stat.S_ISLNK(member.external_attr >> 16):
            problem = "a symbolic link"
        elif member.file_size > (limit := _read_whole_limit(name)):
            # zipfile never inflates more than a member's declared size: this bounds it.
            raise untrusted.too_large(f"{label}: {name!r} of {wheel.name}", limit)
        else:
            continue
        shown = name if len(name) <= _SHOWN else name[:_SHOWN] + "..."
        raise GpulockError(f"{label}: {wheel.name} holds {problem} ({shown!r}); it was "
                           "refused and nothing was written")


def _read_whole_limit(name: str) -> int:
    """The most bytes the member `name` may inflate to: installer reads the .dist-info
    files whole (WHEEL, entry_points.txt, RECORD), and streams the rest."""
    if not _DIST_INFO.fullmatch(name):
        return sys.maxsize
    return _RECORD_MAX if name.endswith("/RECORD") else untrusted.TEXT_MAX


class EntryDestination(WheelDestination):
    """An installer destination that writes each scheme into its own folder of an entry.

    Console scripts are not written here: an entry is shared by environments, and each
    environment writes scripts for its own interpreter. RECORD is not written either, so a
    `pip uninstall` aimed at an environment refuses instead of deleting store files.
    """

    def __init__(self, root: Path, compiler: Compiler | None = None) -> None:
        self.root = root
        self.compiler = compiler
        self.scripts: list[tuple[str, str, str, str]] = []
        self.records: list[tuple[str, str, str, int]] = []
        self.compiling: list[Future[Compiled | None]] = []
        self.binaries: list[Path] = []  # under site/: what may be an ELF with an $ORIGIN
        self._folders: set[Path] = set()  # made already: one mkdir per folder, not per file

    def record_compiled(self) -> None:
        """Wait for the bytecode of every source, so `verify` covers what imports will load."""
        for future in self.compiling:
            if (pyc := future.result()) is not None:
                self.records.append((Path(pyc.path).relative_to(self.root).as_posix(),
                                     pyc.sha256, pyc.xxh3, pyc.size))

    def stop_compiling(self) -> None:
        """Cancel the sources not yet begun and wait for those being compiled."""
        for future in self.compiling:
            future.cancel()
        wait(self.compiling)

    def write_file(self, scheme: Scheme, path: str | os.PathLike[str], stream: BinaryIO,
                   is_executable: bool) -> RecordEntry:
        relative = os.fspath(path)
        problem = (script_problem(relative) if scheme == "scripts"
                   else path_problem(posixpath.normpath(relative)))
        if problem:
            what = "a script" if scheme == "scripts" else "a file"
            raise ValueError(f"it holds {what} named {relative!r}, which {problem}")
        inside = f"{_SCHEME_DIRS[scheme]}/{posixpath.normpath(relative)}"
        target = self.root / inside
        if target.parent not in self._folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(target.parent)
        sha256, fast, size = hashlib.sha256(), xxhash.xxh3_128(), 0
        try:
            # "x": a second member for the same path (root and .data/purelib, say) must
            # not rewrite a file whose bytecode may be compiling from it already.
            handle = target.open("xb")
        except FileExistsError:
            raise ValueError(f"it holds two files for {inside}") from None
        with handle:
            while chunk := stream.read(_CHUNK):
                handle.write(chunk)
                sha256.update(chunk)
                fast.update(chunk)
                size += len(chunk)
                faults.point("unpack", target)
        if is_executable:
            target.chmod(0o755)
        if inside.startswith("site/"):
            self._note(target, is_executable)
        self.records.append((inside, sha256.hexdigest(), fast.hexdigest(), size))
        return RecordEntry(relative, Hash("sha256", _urlsafe(sha256.digest())), size)

    def _note(self, target: Path, is_executable: bool) -> None:
        """Hand a source to the compiler now; keep a library's path for `_real_dirs`."""
        if self.compiler and target.name.endswith(".py"):
            self.compiling.append(self.compiler.submit(target))
        if ".so" in target.name or is_executable:
            self.binaries.append(target)

    def write_script(self, name: str, module: str, attr: str, section: ScriptSection
                     ) -> RecordEntry:
        problem = script_problem(name)
        if problem:
            raise ValueError(f"it declares a {section} script named {name!r}, which {problem}")
        self.scripts.append((name, module, attr, section))
        return RecordEntry(f"bin/{name}", None, None)

    def finalize_installation(self, scheme: Scheme, record_file_path: str,
                              records: Iterable[tuple[Scheme, RecordEntry]]) -> None:
        return None


def _real_dirs(site: Path, binaries: list[Path]) -> set[str]:
    """The site folders that the $ORIGIN paths of the ELF files among `binaries` climb."""
    real: set[str] = set()
    for path in binaries:
        if is_elf(path):
            real |= climbing_dirs(path.relative_to(site).as_posix(), search_paths(path))
    return real


def _urlsafe(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
