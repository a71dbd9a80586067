"""Binary caches a store takes entries from and pushes them to, as Nix's substituters.

A substituter is a flat namespace of objects behind one URL: a local or mounted folder
(`file:///mnt/cache`, or a plain absolute path) or an S3 bucket and prefix
(`s3://bucket/prefix?endpoint=https://minio.example&region=us-east-1`, credentials from the
usual AWS variables or profile). What the objects are called and what they hold is
`gpulock.store.substituters.record`'s business; a backend only moves bytes, and a new backend is
one module implementing `Substituter` (backend.py), registered by its scheme in
`open_substituter`.
"""

from __future__ import annotations

import re

from gpulock.credentials import login_problem, shown
from gpulock.store.substituters.backend import CacheError, Substituter


def url_problem(url: str) -> str | None:
    """What is wrong with a cache URL, wherever it came from (gpu.toml, $GPULOCK_SUBSTITUTERS,
    `push --to`), or None. A cache URL never carries credentials: where one might hold some
    is `gpulock.credentials.login_problem`'s rule, and the answer never quotes the URL."""
    if problem := login_problem(url):
        return problem
    if not re.match(r"(s3://|file:///|/)", url):
        return "must be s3://bucket/prefix, file:///folder or an absolute path"
    return None


def open_substituter(url: str) -> Substituter:
    """The substituter a URL names, by its scheme; refused in one sentence that never shows
    a password."""
    problem = url_problem(url)
    if problem:
        raise CacheError(f"substituter {shown(url)!r} {problem}")
    if url.startswith("s3://"):
        from gpulock.store.substituters.s3 import S3

        return S3(url)
    from gpulock.store.substituters.folder import Folder

    return Folder(url)
