"""Downloading locked files: streamed, verified, resumable, in parallel.

A download is written to `tmp/downloads/<sha256>/wheel.part.<writer>`; a killed sync leaves
the part, and the next one claims it and continues it with a Range request after re-hashing
what is there. A verified file moves to `tmp/downloads/<sha256>/<writer>/<filename>` (the
installer reads name and tags from the filename), which its writer removes once unpacked
and gc removes once its writer is gone.
Only a file whose size and sha256 match the lock is ever handed on; a mismatch deletes
the part and says package, URL, expected and actual hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gpulock import faults
from gpulock.credentials import redact
from gpulock.errors import FetchError, GpulockError
from gpulock.http import Http
from gpulock.pins import FileRef
from gpulock.safeopen import open_file
from gpulock.store.layout import Layout
from gpulock.store.scratch import alive_writers, claim_partial, open_part, tag

_CHUNK = 1 << 20
Progress = Callable[[int], None]


def _hash_file(path: Path, digest: hashlib._Hash) -> int:
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size


def fetch(ref: FileRef, label: str, layout: Layout, http: Http,
          progress: Progress | None = None) -> Path:
    """A local path holding exactly the locked file (pass it to `discard` when done)."""
    folder = layout.folder(layout.download_folder(ref.sha256))
    # The wheel keeps its own filename (installers read name and tags from it).
    final = Layout.named(folder / tag(), ref.name, "a wheel's filename")
    part = claim_partial(folder, "wheel", alive_writers(layout.tmp_roots))
    try:
        if ref.url.startswith("file://"):
            return _copy(ref, label, part, final, progress)
        return _download(ref, label, part, final, http, progress)
    except BaseException:
        if not part.is_file() or part.stat().st_size == 0:
            part.unlink(missing_ok=True)
        raise


def _copy(ref: FileRef, label: str, part: Path, final: Path, progress: Progress | None
          ) -> Path:
    """A file:// wheel copied to `part` as it is hashed, then moved to `final`: what is
    unpacked is what was checked. Only a regular file is opened (never through a link or a
    FIFO), and no more than the lock's size and one byte is read: a hand-edited lock may aim
    the URL at any file on the machine."""
    from urllib.parse import unquote, urlsplit

    path = Path(unquote(urlsplit(ref.url).path))
    digest, have = hashlib.sha256(), 0
    part.unlink(missing_ok=True)  # a claimed leftover of a download: copied anew
    try:
        with open_file(path) as source, open_part(part) as out:
            while chunk := source.read(min(_CHUNK, ref.size + 1 - have)):
                out.write(chunk)
                digest.update(chunk)
                have += len(chunk)
                if progress:
                    progress(len(chunk))
    except FileNotFoundError:
        raise GpulockError(f"{label}: {path} is missing; the lock names it as the file to "
                           "install") from None
    except OSError as exc:
        raise GpulockError(f"{label}: {path} cannot be read as a regular file "
                           f"({exc.strerror or exc}); the lock names it as the file to "
                           "install") from None
    try:
        _check(ref, label, digest.hexdigest(), have, path)
    except GpulockError:
        part.unlink(missing_ok=True)
        raise
    final.parent.mkdir()
    os.replace(part, final)
    return final


def _download(ref: FileRef, label: str, part: Path, final: Path, http: Http,
              progress: Progress | None) -> Path:
    digest = hashlib.sha256()
    have = _hash_file(part, digest) if part.is_file() else 0
    resumed = have > 0
    if have > ref.size:
        part.unlink()
        digest, have = hashlib.sha256(), 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have < ref.size or not have:
        with http.stream(ref.url, headers, label) as (response, body):
            if response.status == 200 and have:
                digest, have = hashlib.sha256(), 0  # the server ignored the Range
                part.unlink()
            elif response.status not in (200, 206):
                raise FetchError(f"{label}: cannot download {redact(ref.url)}: HTTP "
                                 f"{response.status}")
            with open_part(part) as out:
                while chunk := body.read(_CHUNK):
                    if have + len(chunk) > ref.size:  # never more bytes than the lock's size
                        part.unlink(missing_ok=True)
                        raise FetchError(f"{label}: {redact(ref.url)} sent more than the "
                                         f"{ref.size} bytes the lock says; it was not stored")
                    out.write(chunk)
                    digest.update(chunk)
                    have += len(chunk)
                    if progress:
                        progress(len(chunk))
                    faults.point("download", part)
    try:
        _check(ref, label, digest.hexdigest(), have, None)
    except GpulockError:
        part.unlink(missing_ok=True)
        if resumed:  # the bytes kept from before may be the bad ones: once more, whole
            return _download(ref, label, part, final, http, progress)
        raise
    final.parent.mkdir()
    os.replace(part, final)
    return final


def discard(layout: Layout, wheel: Path) -> None:
    """Remove a fetched or built wheel once it is unpacked (its own folder under tmp/)."""
    if layout.tmp in wheel.parents:
        shutil.rmtree(wheel.parent, ignore_errors=True)


def _check(ref: FileRef, label: str, sha256: str, size: int, path: Path | None) -> None:
    """Refuse bytes that are not the locked file. What a server sent is described (its
    hash helps whoever debugs a mirror, and anyone could ask the server for it); what a
    local file holds never is: a hand-edited lock could aim a file:// URL at a secret and
    read its hash or length from a CI log (the rule model files follow, models/blobs.py)."""
    if size == ref.size and sha256 == ref.sha256:
        return
    locked = f"the lock says {ref.sha256} ({ref.size} bytes); it was not stored"
    if path is not None:
        raise GpulockError(f"{label}: {path} holds other bytes, but {locked}")
    raise GpulockError(f"{label}: {redact(ref.url)} has sha256 {sha256} ({size} bytes), but "
                       f"{locked}")
