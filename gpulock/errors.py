"""The error type every user-facing failure is raised as.

A `GpulockError` carries one sentence that says what went wrong and where (file, line,
package, URL); the CLI prints it without a traceback and exits non-zero. Anything else that
escapes is a bug in gpulock and keeps its traceback.
"""

from __future__ import annotations


class GpulockError(Exception):
    """A failure caused by input or environment, explained in words for the user."""

    exit_code = 1

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        return "\n".join([self.message, *self.details])


class ManifestError(GpulockError):
    """gpu.toml is malformed, has unknown keys, wrong types or bad requirement strings."""


class LockfileError(GpulockError):
    """The lockfile is missing, stale, truncated, unsafe or of an unknown version."""


class StaleLockError(LockfileError):
    """The lockfile is missing or was made from another manifest: locking again fixes it."""


class ResolutionError(GpulockError):
    """No set of pins satisfies the manifest for the target."""


class FetchError(GpulockError):
    """An index or file server failed, or served something that cannot be used."""


class HashMismatchError(GpulockError):
    """Downloaded bytes differ from the lock; `resumed` when some came from an earlier run."""

    def __init__(self, message: str, *, resumed: bool = False) -> None:
        super().__init__(message)
        self.resumed = resumed
