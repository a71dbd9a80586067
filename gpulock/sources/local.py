"""`file:///mnt/nfs/data` or `/mnt/nfs/data`: a folder or file already mounted on the pod
(a PVC, an NFS share). Pinned by hashing every file at lock time; sync copies the files
into the blob store, so a file changed on the share later is an error, never a drift."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gpulock.errors import GpulockError
from gpulock.manifest import Model
from gpulock.models import ModelFile, PinnedModel
from gpulock.sources import pinned_file, select
from gpulock.store import Store
from gpulock.store.scratch import open_regular

_CHUNK = 1 << 20


def root_of(source: str) -> Path:
    return Path(unquote(urlsplit(source).path) if source.startswith("file://") else source)


class LocalSource:
    """A mounted folder or file."""

    def problem(self, source: str) -> str | None:
        if source.startswith("file://") and urlsplit(source).netloc not in ("", "localhost"):
            return "names another host: file:// sources are paths on the pod"
        if not str(root_of(source)).startswith("/"):
            return "is not an absolute path"
        return None

    def pin(self, model: Model, store: Store) -> PinnedModel:
        root = root_of(model.source)
        try:
            info = os.lstat(root)
        except OSError as exc:
            raise GpulockError(f"model '{model.name}': {root} cannot be read "
                               f"({exc.strerror})") from None
        if stat.S_ISREG(info.st_mode):
            files = [pinned_file(root.name, root)]
        elif stat.S_ISDIR(info.st_mode):
            paths = select(model, [p.relative_to(root).as_posix() for p in _walk(model, root)])
            files = [pinned_file(path, root / path) for path in paths]
        else:
            raise GpulockError(f"model '{model.name}': {root} is neither a file nor a folder")
        return PinnedModel(name=model.name, source=model.source, revision=None, commit=None,
                           include=model.include, exclude=model.exclude, files=tuple(files),
                           extract=model.extract)

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
        root = root_of(model.source)
        source = root if root.name == file.path and root.is_file() else root / file.path
        try:
            # The share's own regular file or an error: never through a link as its last
            # step, never waiting on a FIFO someone put where the locked file was.
            handle = open_regular(source)
        except OSError as exc:
            raise GpulockError(f"model '{model.name}': {source} cannot be read "
                               f"({exc.strerror or exc}); the lock pinned it") from None
        with handle, target.open("xb") as out:
            copied = 0
            while chunk := handle.read(_CHUNK):
                copied += len(chunk)
                if copied > file.size:
                    break  # larger than pinned: the hash check names it
                out.write(chunk)


def _walk(model: Model, root: Path) -> list[Path]:
    """The regular files below `root`; a link is refused (its target is not the share's)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in [*dirs, *names]:
            path = Path(folder) / name
            if path.is_symlink():
                raise GpulockError(f"model '{model.name}': {path} is a symbolic link; a "
                                   "file:// source is pinned from regular files only")
        found += [Path(folder) / name for name in sorted(names)]
    return found
