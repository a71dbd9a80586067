"""Building wheels from source (sdists, git checkouts) with uv, once per build setting.

A build runs `uv build --wheel` on the target's CPython when this machine has it (else the
running one), isolated unless a group says `no_build_isolation`, with the group's `env`.
`Builder.key` names the settings, so a built wheel is cached per (source, interpreter,
settings) and never rebuilt for the same three.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gpulock.errors import GpulockError


@dataclass(frozen=True)
class Builder:
    """Builds a wheel from source with uv, for the target's interpreter and a group's settings."""

    python: str
    isolation: bool = True
    env: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return hashlib.sha256(repr((self.python, self.isolation, self.env)).encode()).hexdigest()

    def interpreter(self) -> str:
        """The target's CPython when this machine has it, else the running one.

        Metadata rarely depends on the minor version; when the target interpreter is absent
        (a lock made on a laptop) the running interpreter is the honest fallback.
        """
        from gpulock.interpreter import find_python

        return find_python(self.python) or sys.executable

    def metadata(self, source: Path, label: str) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gpulock-build-") as out:
            wheel = self.build(source, Path(out), label)
            with zipfile.ZipFile(wheel) as archive:
                names = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")
                         and n.count("/") == 1]
                if len(names) != 1:
                    raise GpulockError(f"building {label} gave a wheel without METADATA")
                return archive.read(names[0])

    def build(self, source: Path, out: Path, label: str) -> Path:
        command = [_uv(), "build", "--wheel", "--out-dir", str(out), "--python",
                   self.interpreter(), "--no-python-downloads"]
        if not self.isolation:
            command.append("--no-build-isolation")
        command.append(str(source))
        env = {**os.environ, **dict(self.env)}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wheels = sorted(out.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
            raise GpulockError(f"building {label} failed (uv build exited "
                               f"{result.returncode}); its last lines:",
                               details=["  " + line for line in tail])
        return wheels[0]


def _uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()
