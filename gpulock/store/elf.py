"""What the symlink farm needs to know about ELF files: their $ORIGIN search paths.

`$ORIGIN` in an RPATH/RUNPATH is the folder a library was opened from, and the kernel
resolves `..` physically: torch's `$ORIGIN/../../nvidia/cublas/lib` only works when the
folders it climbs through are real folders of the farm (pex#2966, rules_python#3228).
Reads 64- and 32-bit little- and big-endian ELF without any dependency.
"""

from __future__ import annotations

import posixpath
import struct
from pathlib import Path

_MAGIC = b"\x7fELF"
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 5, 15, 29


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == _MAGIC
    except OSError:
        return False


def search_paths(path: Path) -> list[str]:
    """The RPATH and RUNPATH entries of an ELF file ([] for anything else)."""
    try:
        with path.open("rb") as handle:
            return _read_paths(handle)
    except (OSError, struct.error, ValueError):
        return []


def _read_paths(handle) -> list[str]:  # type: ignore[no-untyped-def]
    ident = handle.read(16)
    if len(ident) < 16 or ident[:4] != _MAGIC:
        return []
    wide = ident[4] == 2
    order = "<" if ident[5] == 1 else ">"
    if wide:
        header = struct.unpack(order + "HHIQQQIHHHHHH", handle.read(48))
        phoff, phentsize, phnum = header[4], header[8], header[9]
        ph_format, dyn_format = order + "IIQQQQQQ", order + "qQ"
    else:
        header = struct.unpack(order + "HHIIIIIHHHHHH", handle.read(36))
        phoff, phentsize, phnum = header[4], header[8], header[9]
        ph_format, dyn_format = order + "IIIIIIII", order + "iI"
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    for index in range(phnum):
        handle.seek(phoff + index * phentsize)
        raw = handle.read(struct.calcsize(ph_format))
        fields = struct.unpack(ph_format, raw)
        if wide:
            kind, offset, vaddr, filesz = fields[0], fields[2], fields[3], fields[5]
        else:
            kind, offset, vaddr, filesz = fields[0], fields[1], fields[2], fields[4]
        if kind == _PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif kind == _PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        return []
    handle.seek(dynamic[0])
    size = struct.calcsize(dyn_format)
    table = handle.read(dynamic[1])
    strtab, wanted = None, []
    for at in range(0, len(table) - size + 1, size):
        tag, value = struct.unpack_from(dyn_format, table, at)
        if tag == _DT_NULL:
            break
        if tag == _DT_STRTAB:
            strtab = value
        elif tag in (_DT_RPATH, _DT_RUNPATH):
            wanted.append(value)
    if strtab is None or not wanted:
        return []
    base = next((offset + strtab - vaddr for vaddr, offset, filesz in loads
                 if vaddr <= strtab < vaddr + filesz), None)
    if base is None:
        return []
    paths: list[str] = []
    for value in wanted:
        handle.seek(base + value)
        raw = handle.read(4096).split(b"\0", 1)[0]
        paths.extend(p for p in raw.decode("utf-8", "replace").split(":") if p)
    return paths


def climbing_dirs(relpath: str, paths: list[str]) -> set[str]:
    """Folders (relative, '/'-separated) above `relpath` that an $ORIGIN path leaves.

    Each must be a real folder in the farm, so that `..` walks the farm and not the store.
    """
    folder = posixpath.dirname(relpath)
    must_be_real: set[str] = set()
    for entry in paths:
        if "$ORIGIN" not in entry and "${ORIGIN}" not in entry:
            continue
        target = posixpath.normpath(entry.replace("${ORIGIN}", folder or ".")
                                    .replace("$ORIGIN", folder or "."))
        ancestor = folder
        while ancestor:
            if target != ancestor and not target.startswith(ancestor + "/"):
                must_be_real.add(ancestor)
            ancestor = posixpath.dirname(ancestor)
    return must_be_real
