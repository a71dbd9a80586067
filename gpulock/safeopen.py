"""Reading a file below a folder someone else fills (a git checkout, a share, a cache, the
store's own volume): only a regular file reached through real folders, never through a
symbolic link, never a FIFO waited on, never more bytes than the reader expects.

`Path.open` follows a link at any step, and opening a FIFO blocks while a device may act on
being opened. Here every step below the root is opened relative to the one before it with
`O_NOFOLLOW` (`O_DIRECTORY` for folders), and the last is looked at (`lstat`) before it is
opened and checked again (`fstat`, same inode) after, so a link, a FIFO, a socket or a device
anywhere on the way is refused in words, and a swap between the two looks is caught. The
root itself is the caller's (a path the user named may be a link).

A file at a path gpulock made (a store entry's manifest, a generation's record, a download
in progress) is open to a planted link or FIFO only at its last step: `open_descriptor`,
`open_file`, `read_small` and `read_json` check that step alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_STEP = _FOLDER | os.O_NOFOLLOW
_ANY = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE = os.O_RDONLY | _ANY
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Unsafe(Exception):
    """A path that is not a regular file (or folder) below its root; `str()` says why, as
    the end of a sentence that starts with the path ("sub is a symbolic link")."""


def _kind(mode: int) -> str:
    kinds = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a folder", stat.S_IFREG: "a file",
             stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
    return kinds.get(stat.S_IFMT(mode), "a device")


def _parts(relative: str) -> list[str]:
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\0" in relative:
        raise Unsafe(f"{relative!r} is not a relative path of plain names")
    return parts


@contextmanager
def _folder(root: Path, parts: list[str], make: bool = False) -> Iterator[int]:
    """A descriptor of the folder `root/parts...`, each step a real folder (made first, when
    `make` and it is not there)."""
    try:
        fd = os.open(root, _FOLDER)
    except OSError as exc:
        raise Unsafe(f"{root} cannot be read as a folder ({exc.strerror})") from None
    try:
        for i, part in enumerate(parts):
            if make:
                with contextlib.suppress(FileExistsError):  # a link there is refused below
                    os.mkdir(part, dir_fd=fd)  # the umask decides, as for any folder
            try:
                step = os.open(part, _STEP, dir_fd=fd)
            except OSError as exc:
                raise _refusal("/".join(parts[:i + 1]), part, fd, exc, "a folder") from None
            os.close(fd)
            fd = step
        yield fd
    finally:
        os.close(fd)


def _refusal(shown: str, name: str | Path, folder: int | None, exc: OSError, wanted: str
             ) -> Unsafe:
    """Why `name` (in the folder open as `folder`, if any; shown as `shown`) could not be
    opened as `wanted`, in words."""
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return Unsafe(f"{shown} is not there")
    except OSError:
        return Unsafe(f"{shown} cannot be opened ({exc.strerror})")
    if (stat.S_ISDIR(mode) if wanted == "a folder" else stat.S_ISREG(mode)):
        return Unsafe(f"{shown} cannot be opened ({exc.strerror})")
    return Unsafe(f"{shown} is {_kind(mode)}, not {wanted}")


def check_folder(root: Path, relative: str) -> Path:
    """`root/relative`, checked to be a real folder reached through real folders."""
    with _folder(root, _parts(relative)):
        return root / relative


@contextmanager
def open_regular(root: Path, relative: str) -> Iterator[BinaryIO]:
    """The regular file `root/relative` open for reading, reached through real folders."""
    *folders, name = _parts(relative)
    with _folder(root, folders) as parent:
        try:
            before = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise Unsafe(f"{relative} is not there") from None
        if not stat.S_ISREG(before.st_mode):
            raise Unsafe(f"{relative} is {_kind(before.st_mode)}, not a regular file")
        try:
            fd = os.open(name, _FILE, dir_fd=parent)
        except OSError as exc:
            raise Unsafe(f"{relative} cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise Unsafe(f"{relative} was replaced while it was opened")
        yield handle


def open_descriptor(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """`os.open(path, flags, mode)` when `path` is (or, with O_CREAT, becomes) a regular
    file: never through a link as its last step, never waiting on a FIFO someone planted
    (opened non-blocking, blocking again once it is known to be a file). OSError otherwise,
    its `strerror` a sentence that starts with the path ("... is a FIFO, not a regular
    file"); FileNotFoundError when it is not there."""
    try:
        fd = os.open(path, flags | _ANY, mode)
    except OSError as exc:  # the same error, with a `strerror` that says why in words
        said = _refusal(str(path), path, None, exc, "a regular file")
        raise OSError(exc.errno, str(said)) from None
    try:
        found = os.fstat(fd).st_mode
        if not stat.S_ISREG(found):
            raise OSError(errno.EINVAL, f"{path} is {_kind(found)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: Path) -> BinaryIO:
    """`path` opened for reading when it is a regular file (`open_descriptor`). For a file at
    a path gpulock made (a share's entry, a store record), where only the last step is open
    to a planted link; `open_regular` walks a path below a folder someone else fills."""
    return os.fdopen(open_descriptor(path), "rb")


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, which may hold at most `limit` of them: for a
    file gpulock wrote in the store, which anyone who can write to the volume may have
    replaced. FileNotFoundError when it is not there; Unsafe (starting with the path) when
    it is a link, a FIFO, a folder or a device, or holds more: never blocks, never fills
    memory."""
    try:
        handle = open_file(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Unsafe(exc.strerror) from None
    with handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise Unsafe(f"{path} cannot be read ({exc.strerror})") from None
    if len(data) > limit:
        raise Unsafe(f"{path} holds more than the {limit} bytes gpulock writes there")
    return data


def read_json(path: Path, limit: int) -> Any:
    """`read_small`, parsed as JSON; Unsafe when it is not JSON (or nests too deep)."""
    data = read_small(path, limit)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise Unsafe(f"{path} is not JSON ({type(exc).__name__})") from None


def replace_below(root: Path, relative: str, source: BinaryIO) -> None:
    """Write the rest of `source` as the file `root/relative`, replacing any file of that
    name whole. Every folder on the way is made or opened relative to the one before
    (`O_NOFOLLOW`), and the file is written under a new name in the last of them and renamed
    there through that folder's descriptor: a link planted below the root is refused, and one
    swapped in for a folder already opened is never written through (what someone who may
    write a shared cache could do to the one who pushes to it). The root is the caller's."""
    import shutil  # here: the no-op sync reads its records through this module

    *folders, name = _parts(relative)
    with _folder(root, folders, make=True) as parent:
        temporary = f".upload-{os.urandom(8).hex()}"
        fd = os.open(temporary, _NEW, 0o644, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o644)  # readable by every pod, whatever the umask
                shutil.copyfileobj(source, out, 1 << 20)
            os.replace(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=parent)
            raise
