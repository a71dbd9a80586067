"""The on-disk cache that makes a second `gpulock lock` fast.

`lock` runs on laptops and in CI where no store exists, so index pages (with their HTTP
validators), wheel metadata and computed file hashes live here: `$GPULOCK_CACHE`, else
`$XDG_CACHE_HOME/gpulock`, else `~/.cache/gpulock`. Entries are written atomically
(temporary file + rename), so concurrent locks and killed processes never leave a torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

LAYOUT = "v1"
# The buckets, one folder each: what a name in one means is that bucket's alone.
PAGES = "pages"  # an index page by URL: its validators and body
METADATA = "metadata"  # core metadata by distribution (sdists and git: by build settings)
FACTS = "facts"  # a file's sha256 and size by URL, hashed once
INTERPRETERS = "interpreters"  # this machine's CPython by version, trusted while unchanged


def default_cache_dir() -> Path:
    if env := os.environ.get("GPULOCK_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpulock"


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_cache_dir()) / LAYOUT

    def _path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / bucket / digest[:2] / digest[2:]

    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        try:
            return self._path(bucket, key).read_bytes()
        except OSError:
            return None

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        path = self._path(bucket, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError:
            # A cache that cannot be written (read-only home, full disk) only costs speed.
            return

    def get_json(self, bucket: str, key: str) -> Any:
        raw = self.get_bytes(bucket, key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def put_json(self, bucket: str, key: str, value: Any) -> None:
        self.put_bytes(bucket, key, json.dumps(value, sort_keys=True).encode())
