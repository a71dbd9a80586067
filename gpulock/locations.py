"""Where a project's store is when no --store says so, and which folders in it the store
makes. Light on purpose: the no-op sync (uptodate.py) finds and checks the store before it
imports the store's machinery."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# The folders under `v1/` the store makes, and which must be real folders (Layout.check).
STORE_FOLDERS = ("pkgs", "envs", "tmp", "tmp/downloads", "tmp/models", "blobs",
                 "blobs/sha256", "blobs/xxh3", "blobs/git-sha1", "hf", "modelscope", "files",
                 "trees", "python", "roots", "roots/models", "roots/tmp", "roots/gc")


def default_store(project_dir: Path) -> Path:
    """--store, else $GPULOCK_STORE, else /workspace/.gpulock on a pod's volume, else ./store."""
    if env := os.environ.get("GPULOCK_STORE"):
        return Path(env)
    workspace = Path("/workspace")
    if workspace.is_dir() and os.access(workspace, os.W_OK):
        return workspace / ".gpulock"
    return project_dir / "store"


def sound_store(base: Path) -> bool:
    """Whether `base` (`<store>/v1`) and the folders in it that the store makes are real
    folders where they exist, as Layout.check demands (without importing the store)."""
    for name in ("", *STORE_FOLDERS):
        try:
            mode = os.lstat(base / name if name else base).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(mode):
            return False
    return True
