"""Where a project's store is when no --store says so. Light on purpose: the no-op sync
(uptodate.py) finds the store before it imports the store's machinery."""

from __future__ import annotations

import os
from pathlib import Path


def default_store(project_dir: Path) -> Path:
    """--store, else $GPULOCK_STORE, else /workspace/.gpulock on a pod's volume, else ./store."""
    if env := os.environ.get("GPULOCK_STORE"):
        return Path(env)
    workspace = Path("/workspace")
    if workspace.is_dir() and os.access(workspace, os.W_OK):
        return workspace / ".gpulock"
    return project_dir / "store"
