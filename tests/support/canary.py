"""What an attack must not touch: a folder beside the store, compared byte for byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

State = dict[str, tuple[str, str]]


def plant(folder: Path) -> Path:
    """A canary folder with files, a nested folder and a link, as a user's data would be."""
    (folder / "nested" / "deeper").mkdir(parents=True)
    (folder / "evil.txt").write_text("the canary's own evil.txt\n")
    (folder / "notes.md").write_text("keep me\n")
    (folder / "nested" / "weights.bin").write_bytes(os.urandom(4096))
    (folder / "nested" / "deeper" / "x").write_text("x\n")
    os.symlink("notes.md", folder / "link")
    return folder


def state(folder: Path, skip: tuple[str, ...] = ()) -> State:
    """Every path under `folder` (links not followed): its kind and content or target."""
    found: State = {}
    for parent, dirs, names in os.walk(folder):
        relative = os.path.relpath(parent, folder)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(relative, d)) not in skip]
        for name in [*dirs, *names]:
            path = os.path.join(parent, name)
            key = os.path.normpath(os.path.join(relative, name))
            if key in skip:
                continue
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                found[key] = ("dir", oct(stat.S_IMODE(mode)))
            else:
                found[key] = ("file", Path(path).read_bytes().hex() + oct(stat.S_IMODE(mode)))
    return found
