"""Whether a generation can start on this machine.

A generation names its interpreter: the store's own CPython by a path relative to its
`bin/` (found wherever the volume is mounted), any other by its absolute path, which a
worker's image may not have. Its scripts then fall back to `pythonX.Y` on PATH (see
generation.launcher). Scripts written by gpulock before that launcher start the absolute
path the store had when they were written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from gpulock.env.generation import Generation
from gpulock.safeopen import open_file

_SHEBANG_LIMIT = 4096


@dataclass(frozen=True)
class Start:
    """How a generation starts here: `runs` is False when nothing can start it; `problem`
    says what is not as built, and what to do (empty when its own interpreter runs)."""

    runs: bool
    problem: str = ""


def how_it_starts(gen: Generation) -> Start:
    """Whether `gen`'s interpreter and console scripts can start on this machine."""
    where = f"generation {gen.number}"
    stale = _stale_script(gen)
    if stale:
        return Start(False, f"{where}: its console scripts start {stale}, which is not on this "
                            "machine (the store was written at another path, by an older "
                            "gpulock); run 'gpulock sync' to rebuild it with scripts that "
                            "start wherever the store is mounted")
    if _runnable(gen.interpreter):
        failed = _start_failure(gen)
        if not failed:
            return Start(True)
        # The scripts' launcher runs an interpreter that is there: it falls back only when
        # there is none, so one that fails here fails them too.
        return Start(False, f"{where}: its interpreter {gen.interpreter} fails to start here "
                            f"({failed}); run 'gpulock sync --install-python' on the pod to "
                            "keep an interpreter that starts wherever the volume is mounted")
    minor = gen.python_minor
    fallback = shutil.which(f"python{minor}")
    missing = f"{where}: its interpreter {gen.interpreter} is not on this machine"
    if fallback:
        return Start(True, f"{missing}; its scripts start {fallback} from PATH with the "
                           "environment on PYTHONPATH (run 'gpulock sync --install-python' on "
                           "the pod to keep the interpreter on the volume)")
    return Start(False, f"{missing}, nor is python{minor} on PATH; install CPython {minor} in "
                        "this image, or run 'gpulock sync --install-python' on the pod to keep "
                        "the interpreter on the volume")


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _start_failure(gen: Generation) -> str | None:
    """The last line the environment's python says when it cannot start (a CPython that
    finds its standard library only where it was installed), or None when it starts. It
    starts isolated and without `site`: nothing of the store (its sitecustomize, a `.pth`
    file someone planted on the volume) runs when verify or doctor asks."""
    try:
        ran = subprocess.run([str(gen.path / "bin" / "python"), "-I", "-S", "-c", ""],
                             capture_output=True,
                             text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if ran.returncode == 0:
        return None
    said = ran.stderr.strip().splitlines()
    return said[-1] if said else f"exit status {ran.returncode}"


def _stale_script(gen: Generation) -> str | None:
    """The interpreter a script in `bin/` starts by an absolute shebang, when it is not
    here (gpulock's own scripts start through /bin/sh and find it beside them)."""
    bin_dir = gen.path / "bin"
    try:
        names = sorted(os.listdir(bin_dir))
    except OSError:
        return None
    for name in names:
        if os.path.islink(bin_dir / name):
            continue
        try:  # one line of a file in the generation: never a link's target, never a FIFO
            with open_file(bin_dir / name) as handle:
                line = handle.readline(_SHEBANG_LIMIT)
        except OSError:
            continue
        if not line.startswith(b"#!/") or line.startswith(b"#!/bin/sh"):
            continue
        interpreter = (line[2:].split() or [b""])[0].decode(errors="replace")
        # Only a generation's own python, as older gpulock wrote it: a package's script for
        # perl or bash is not this store's to judge.
        made = "/envs/" in interpreter and interpreter.endswith("/bin/python")
        if made and not _runnable(interpreter):
            return interpreter
    return None
