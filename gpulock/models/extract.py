"""An archive model (`extract = true`) unpacked once into `trees/<archive sha256>/`: zip,
tar or 7z, by one rule for all three (no member outside the tree, no device or FIFO, 7z
without links), complete or absent, and sealed so that verify tells what it held."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

from gpulock.errors import GpulockError
from gpulock.names import member_problem
from gpulock.pins import ModelFile, PinnedModel
from gpulock.store import Store, seal
from gpulock.store.scratch import built_beside, write_atomic


def extracted(store: Store, model: PinnedModel, file: ModelFile, blob: Path) -> Path:
    """The archive unpacked once into `trees/<archive sha256>/`, complete or absent."""
    import tarfile
    import zipfile
    import zlib

    tree = store.layout.ready(store.layout.tree(str(file.sha256)))
    if tree.is_dir():
        return tree
    with built_beside(tree) as work:
        try:
            if zipfile.is_zipfile(blob):
                with zipfile.ZipFile(blob) as archive:
                    _refuse_escapes(model, [i.filename for i in archive.infolist()])
                    archive.extractall(work)
            elif tarfile.is_tarfile(blob):
                with tarfile.open(blob) as archive:
                    members = archive.getmembers()
                    _refuse_escapes(model, [m.name for m in members]
                                    + [m.linkname for m in members if m.issym() or m.islnk()])
                    archive.extractall(work, filter="data")  # no devices, FIFOs, escapes
            elif _is_7z(blob):
                _extract_7z(model, blob, work)
            else:
                raise GpulockError(f"model '{model.name}': {file.path} is not a zip, tar or "
                                   "7z archive (rar is not supported); set extract = false "
                                   "to keep it as one file")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, _SevenZipError, RuntimeError,
                NotImplementedError, zlib.error) as exc:  # zipfile: encrypted, method, corrupt
            raise GpulockError(f"model '{model.name}': the archive {file.path} cannot be "
                               f"extracted ({exc}); nothing was extracted") from None
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            raise GpulockError(f"model '{model.name}': the archive {file.path} holds a file "
                               "and a folder of the same name; nothing was extracted") from None
        # Sealed before the tree is published: verify tells what it held from what it holds.
        write_atomic(store.layout.tree_seal(str(file.sha256)),
                     json.dumps(dict(seal.contents(work)), sort_keys=True))
    return tree


class _SevenZipError(Exception):
    """A 7z archive py7zr cannot read (its own errors, raised as this)."""


def _is_7z(blob: Path) -> bool:
    with blob.open("rb") as handle:
        return handle.read(6) == b"7z\xbc\xaf\x27\x1c"


def _extract_7z(model: PinnedModel, blob: Path, work: Path) -> None:
    """Unpack a 7z archive (seed 004's ETH3D data) by the rules of zip and tar: no member
    outside the tree, and no links (7z has no safe-link filter like tar's "data"); never
    more bytes than its members declare, nor than the volume has free."""
    import py7zr

    try:
        with py7zr.SevenZipFile(blob) as archive:
            members = archive.list()
            _refuse_escapes(model, [m.filename for m in members])
            linked = next((m.filename for m in members if m.is_symlink), None)
            if linked is not None:
                raise GpulockError(f"model '{model.name}': the archive holds a link, "
                                   f"{linked!r}, and gpulock extracts 7z archives without "
                                   "links; nothing was extracted")
            declared = sum(m.uncompressed or 0 for m in members)
            if declared > shutil.disk_usage(work).free:
                raise GpulockError(f"model '{model.name}': the archive unpacks to {declared:,} "
                                   "bytes, more than the store's volume has free; nothing was "
                                   "extracted")
        with py7zr.SevenZipFile(blob, max_extract_size=declared) as archive:
            archive.extractall(work)
    except (GpulockError, MemoryError):
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _SevenZipError(str(exc) or type(exc).__name__) from None
    except Exception as exc:  # py7zr's codecs fail in their own ways (LZMAError, zlib...)
        raise _SevenZipError(str(exc) or type(exc).__name__) from None


def _refuse_escapes(model: PinnedModel, names: list[str]) -> None:
    for name in names:
        if problem := member_problem(name):
            raise GpulockError(f"model '{model.name}': the archive holds {name!r}, outside its "
                               f"own tree (the path {problem}); nothing was extracted")
