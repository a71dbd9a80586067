"""`file:///mnt/nfs/data` or `/mnt/nfs/data`: a folder or file already mounted on the pod
(a PVC, an NFS share). Pinned by hashing every file at lock time; sync copies the files
into the blob store, so a file changed on the share later is an error, never a drift."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from gpulock.errors import GpulockError
from gpulock.pins import ModelFile, ModelRequest, PinnedModel
from gpulock.sources.files import FileSource, copy_below, pinned_below, select

if TYPE_CHECKING:
    from gpulock.store import Store


def root_of(source: str) -> Path:
    """The folder or file a `file://` URL or absolute path names."""
    return Path(unquote(urlsplit(source).path) if source.startswith("file://") else source)


class LocalSource(FileSource):
    """A mounted folder or file."""

    prefixes = ("file://", "/")
    named = "file://, /"

    def problem(self, source: str) -> str | None:
        """What is wrong with the path, or None."""
        if source.startswith("file://") and urlsplit(source).netloc not in ("", "localhost"):
            return "names another host: file:// sources are paths on the pod"
        if not str(root_of(source)).startswith("/"):
            return "is not an absolute path"
        return None

    def pin(self, model: ModelRequest, store: Store) -> PinnedModel:
        """Every chosen file, hashed where it lies."""
        root = root_of(model.source)
        try:
            info = os.lstat(root)
        except OSError as exc:
            raise GpulockError(f"model '{model.name}': {root} cannot be read "
                               f"({exc.strerror})") from None
        if stat.S_ISREG(info.st_mode):
            files = [pinned_below(model, root.parent, root.name, str(root.parent))]
        elif stat.S_ISDIR(info.st_mode):
            paths = select(model, [p.relative_to(root).as_posix() for p in _walk(model, root)])
            files = [pinned_below(model, root, path, str(root)) for path in paths]
        else:
            raise GpulockError(f"model '{model.name}': {root} is neither a file nor a folder")
        return PinnedModel(name=model.name, source=model.source, revision=None, commit=None,
                           include=model.include, exclude=model.exclude, files=tuple(files),
                           extract=model.extract)

    def write(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
        """A copy of the file as it lies now (the caller checks it is the pinned one)."""
        root = root_of(model.source)
        if root.name == file.path and not root.is_dir():  # the source is this one file
            root = root.parent
        copy_below(model, root, file, target, str(root))


def _walk(model: ModelRequest, root: Path) -> list[Path]:
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
