"""A binary cache in a folder: a second volume, an NFS share, a test's temporary folder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from gpulock.credentials import shown
from gpulock.safeopen import Unsafe, open_file, replace_below
from gpulock.store.substituters.backend import CacheError, Progress

_CHUNK = 1 << 20


class Folder:
    """Objects as files below one folder; each written to a temporary name, then renamed."""

    def __init__(self, url: str) -> None:
        self.url = shown(url)
        self.root = Path(unquote(urlsplit(url).path) if url.startswith("file://") else url)

    def _path(self, name: str) -> Path:
        # Names come from gpulock.store.substituters.record, made of checked keys and digests.
        if name.startswith("/") or ".." in name.split("/"):
            raise CacheError(f"refused the cache object name {name!r}")
        return self.root / name

    def read(self, name: str, limit: int) -> bytes | None:
        try:
            with open_file(self._path(name)) as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read {name} from {self.url}: "
                             f"{exc.strerror or exc}") from None
        if len(data) > limit:
            raise CacheError(f"{name} in {self.url} is larger than the {limit} bytes it may be")
        return data

    def download(self, name: str, target: Path, limit: int,
                 progress: Progress | None = None) -> bool:
        path = self._path(name)
        copied = 0
        try:
            with open_file(path) as source, open(target, "xb") as out:
                while chunk := source.read(_CHUNK):
                    copied += len(chunk)
                    if copied > limit:
                        raise CacheError(f"{name} in {self.url} is larger than its record "
                                         "says")
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
        except FileNotFoundError:
            if path.exists():  # the target's folder went: not the cache's doing
                raise
            return False
        except OSError as exc:
            raise CacheError(f"cannot read {name} from {self.url}: "
                             f"{exc.strerror or exc}") from None
        return True

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def upload(self, name: str, source: Path) -> None:
        self._path(name)  # the name's check
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as data:
                replace_below(self.root, name, data)
        except Unsafe as exc:
            raise CacheError(f"cannot write {name} to {self.url}: {exc}; push never writes "
                             "through a link") from None
        except OSError as exc:
            raise CacheError(f"cannot write {name} to {self.url}: {exc.strerror}") from None
