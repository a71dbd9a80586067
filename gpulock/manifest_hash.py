"""What decides a lock's content: the hash of gpu.toml's parsed data that a lock records
as `manifest-hash`. Light on purpose: the no-op sync (uptodate.py) computes it before it
imports the manifest's validation."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from gpulock.credentials import redact

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

__all__ = ["content_hash", "tomllib"]


def content_hash(data: dict[str, Any]) -> str:
    """Hash of everything that decides the lock's content ([verify] runs after sync, [cache]
    and `install-python` say only where sync takes entries and the interpreter from,
    `local-start` only how it lays a generation out).

    Credentials in URLs are left out: they are not part of what is locked (a rotated
    password leaves the lock fresh), and no hash of a secret is kept in the lock.
    """
    relevant = {k: v for k, v in data.items() if k not in ("verify", "cache")}
    if isinstance(relevant.get("project"), dict):
        relevant["project"] = {k: v for k, v in relevant["project"].items()
                               if k not in ("install-python", "install_python",
                                            "local-start")}
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(redact(canonical).encode()).hexdigest()
