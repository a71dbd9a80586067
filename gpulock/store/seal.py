"""Seals: what a finished tree gpulock built holds, recorded so that verify can tell it
from what it holds later (a file added, changed or removed, a link retargeted).

Generations and extracted archives are sealed; entries have their own records (per file
sha256 and xxh3, written as they are unpacked).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Collection, Iterator
from pathlib import Path


def contents(root: Path) -> Iterator[tuple[str, str]]:
    """(relative path, what it is) below `root`: a file's sha256, `-> target` for a link,
    "" for anything that is neither (a FIFO, a device). Links are not followed."""
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            if stat.S_ISLNK(mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(mode):
                what = _sha256(path)
            else:
                what = ""
            yield os.path.relpath(path, root), what


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def broken(root: Path, sealed: dict[str, str], skip: Collection[str] = (),
           tolerated: Callable[[str, Collection[str]], bool] = lambda _path, _present: False
           ) -> str | None:
    """What `root` holds now that its seal does not say, in words, or None. `skip` names
    files not sealed (the record itself); `tolerated(path, present)` excuses an added file."""
    found = {path: what for path, what in contents(root) if path not in skip}
    for path in sorted(set(found) | set(sealed)):
        if path not in sealed:
            if not tolerated(path, found):
                return f"{path} was not made by gpulock"
        elif found.get(path) != sealed[path]:
            return f"{path} was changed or removed since gpulock made it"
    return None
