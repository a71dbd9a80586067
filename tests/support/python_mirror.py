"""A python-build-standalone mirror on 127.0.0.1, serving a CPython archive made from a local
install, for tests of `sync --install-python` without uv's real downloads.

The archive is laid out like python-build-standalone's `install_only` archives: one top
folder `python/` holding `bin/`, `lib/` and `include/`. It is built from a pyenv CPython
(tests, idle, tkinter and bytecode left out to keep it small). A pyenv build links its
interpreter to `libpython` by an absolute RUNPATH into the pyenv folder; that string is
rewritten in place to `$ORIGIN/...` (shorter, padded with NULs), as python-build-standalone
builds are, so the installed copy runs on its own files wherever it is unpacked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import tarfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.support.loopback import Loopback

PBS_PREFIX = "https://github.com/astral-sh/python-build-standalone/releases/download"
BUILD = "20990101"  # a release date no real python-build-standalone build has
ARCH = platform.machine()  # the archive is this machine's CPython: x86_64 or aarch64
_SKIPPED = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
            "site-packages", "__pycache__"}


def pyenv_cpython(prefer: str = "3.10") -> Path | None:
    """A pyenv CPython install (its prefix): `prefer`'s minor when there is one, else the
    newest 3.8+ one; None when pyenv has none."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for folder in root.iterdir() if root.is_dir() else []:
        match = re.fullmatch(r"3\.(\d+)\.(\d+)", folder.name)
        if match and int(match.group(1)) >= 8 and (
                folder / "bin" / f"python3.{match.group(1)}").is_file():
            found.append(((folder.name.startswith(prefer + "."), int(match.group(1)),
                           int(match.group(2))), folder))
    return max(found)[1] if found else None


@dataclass(frozen=True)
class Archive:
    path: Path
    version: str  # the CPython's own X.Y.Z
    sha256: str

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def filename(self) -> str:
        return f"cpython-{self.version}+{BUILD}-{ARCH}-unknown-linux-gnu-install_only.tar.gz"


def build_install_only(prefix: Path, out: Path) -> Archive:
    """An install_only tar.gz of the CPython installed at `prefix`."""
    version = prefix.name
    minor = ".".join(version.split(".")[:2])
    old = str((prefix / "lib").resolve()).encode()
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        executable = prefix / "bin" / f"python{minor}"
        _add_file(tar, executable, "python/bin/" + executable.name, old, "$ORIGIN/../lib")
        for link in ("python3", "python"):
            info = tarfile.TarInfo(f"python/bin/{link}")
            info.type, info.linkname = tarfile.SYMTYPE, executable.name
            tar.addfile(info)
        for top in ("lib", "include"):
            for folder, dirs, names in os.walk(prefix / top):
                here = Path(folder)
                relative = here.relative_to(prefix)
                dirs[:] = sorted(d for d in dirs if d not in _SKIPPED
                                 and not d.startswith("config-"))
                tar.add(here, f"python/{relative}", recursive=False)
                for name in sorted(names):
                    if name.endswith((".a", ".pyc")):
                        continue
                    up = os.path.relpath(prefix / "lib", here)
                    _add_file(tar, here / name, f"python/{relative}/{name}", old,
                              "$ORIGIN" if up == "." else f"$ORIGIN/{up}")
    return Archive(out, version, hashlib.sha256(out.read_bytes()).hexdigest())


def _add_file(tar: tarfile.TarFile, path: Path, name: str, old: bytes, origin: str) -> None:
    """Add `path` as `name`; an ELF file's RUNPATH `old` becomes `origin` in place."""
    if path.is_symlink() or not path.is_file():
        tar.add(path, name, recursive=False)
        return
    data = path.read_bytes()
    if data[:4] == b"\x7fELF" and old + b"\0" in data:
        new = origin.encode()
        assert len(new) <= len(old)
        data = data.replace(old + b"\0", new.ljust(len(old), b"\0") + b"\0")
    info = tar.gettarinfo(str(path), name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@dataclass
class PythonMirror(Loopback):
    """Serves `/downloads.json` and the archive under `/mirror/<build>/`, as a
    python-build-standalone mirror (UV_PYTHON_INSTALL_MIRROR) would; counts requests."""

    archive: Archive
    # Served instead of the archive, under its sha256: "damaged", one byte changed in its
    # middle; "other", another valid archive of the same files (gzip's mtime changed).
    tamper: str | None = None
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        data = self.archive.path.read_bytes()
        if self.tamper == "damaged":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        elif self.tamper == "other":
            assert data[3] & 0x02 == 0  # no header CRC: the mtime is free to change
            data = data[:4] + b"\x01\x02\x03\x04" + data[8:]
        self.files = {f"/mirror/{BUILD}/{self.archive.filename.replace('+', '%2B')}": data,
                      "/downloads.json": self.downloads_json().encode()}
        self.serve()

    @property
    def mirror(self) -> str:
        return f"{self.origin}/mirror"

    @property
    def downloads_url(self) -> str:
        return f"{self.origin}/downloads.json"

    def downloads_json(self) -> str:
        """uv's downloads list naming the archive where python-build-standalone would have
        it (the mirror setting rewrites that prefix), with its sha256."""
        major, minor, patch = (int(part) for part in self.archive.version.split("."))
        key = f"cpython-{self.archive.version}-linux-{ARCH}-gnu"
        return json.dumps({key: {
            "name": "cpython", "arch": {"family": ARCH, "variant": None}, "os": "linux",
            "libc": "gnu", "major": major, "minor": minor, "patch": patch, "prerelease": "",
            "url": f"{PBS_PREFIX}/{BUILD}/{self.archive.filename.replace('+', '%2B')}",
            "sha256": self.archive.sha256, "variant": None, "build": BUILD}})

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append(path)
        body = self.files.get(path)
        handler.send_response(200 if body is not None else 404)
        body = body if body is not None else b"not found"
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
