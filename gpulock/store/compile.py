"""Bytecode for new store entries: hash-based pycs, compiled while the wheels are unpacked.

Compiling is most of a cold sync's CPU time (torch, transformers and sympy hold 9,000
sources). One pool of the environment's interpreter serves the whole sync: a source is
compiled as soon as it is on disk, so torch's bytecode is written while its libraries are,
and each interpreter starts once rather than one `compileall -j 0` tree per package.
The workers send each pyc's bytes back, so it is hashed for `verify` without a re-read.
"""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, NamedTuple

import xxhash

from gpulock.errors import GpulockError

_WORKER = Path(__file__).with_name("compile_worker.py")


class Compiled(NamedTuple):
    path: str  # the pyc, absolute
    sha256: str
    xxh3: str
    size: int


class Compiler:
    """Worker processes of `python` that write hash-based pycs (PEP 552) next to sources.

    Use it as a context manager; processes start on the first source and stop on exit.
    """

    def __init__(self, python: str, workers: int | None = None) -> None:
        self.python = python
        self._threads = ThreadPoolExecutor(workers or os.cpu_count() or 1,
                                           thread_name_prefix="gpulock-compile")
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._started: list[_Worker] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Compiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, source: Path) -> Future[Compiled | None]:
        """Compile `source` into its `__pycache__/`; the result is None if it does not compile.

        A source that does not compile is skipped as compileall skips it (torch ships one in
        3.12 syntax); an OSError writing its pyc, a full disk say, is raised.
        """
        return self._threads.submit(self._compile, source)

    def close(self) -> None:
        """Drop what has not started, wait for what has, then let the workers exit."""
        self._threads.shutdown(wait=True, cancel_futures=True)
        for worker in self._started:
            worker.close()

    def _compile(self, source: Path) -> Compiled | None:
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            worker = _Worker(self.python)
            with self._lock:
                self._started.append(worker)
        try:
            return worker.compile(source)
        finally:
            if worker.alive:  # one that stopped answering is closed and never reused
                self._idle.put(worker)


class _Worker:
    """One `compile_worker.py` process and its pipes (protocol in that file)."""

    def __init__(self, python: str) -> None:
        self.python = python
        # -I -S: no PYTHON* variables (an optimisation level would rename the pycs), no site.
        self.process = subprocess.Popen([python, "-I", "-S", str(_WORKER)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests: IO[bytes] = self.process.stdin
        self.answers: IO[bytes] = self.process.stdout
        self.alive = True

    def compile(self, source: Path) -> Compiled | None:
        """The pyc written for `source`, None if it does not compile; OSError as raised there."""
        name = os.fsencode(source)
        try:
            self.requests.write(b"%d\n" % len(name) + name)
            self.requests.flush()
            kind, *fields = self.answers.readline().split() or [b""]
            sizes = [int(field) for field in fields]
        except (OSError, ValueError):
            kind, sizes = b"", []
        if kind == b"skip":
            return None
        if kind == b"ok" and len(sizes) == 2:
            pyc, data = self._read(sizes[0]), self._read(sizes[1])
            return Compiled(os.fsdecode(pyc), hashlib.sha256(data).hexdigest(),
                            xxhash.xxh3_128_hexdigest(data), len(data))
        if kind == b"error" and len(sizes) == 2:
            code, where = sizes[0], self._read(sizes[1]).decode(errors="replace")
            raise OSError(code, os.strerror(code) if code else "cannot write bytecode", where)
        raise self._stopped(source)

    def _read(self, size: int) -> bytes:
        data = self.answers.read(size)
        if len(data) != size:
            raise self._stopped(None)
        return data

    def _stopped(self, source: Path | None) -> GpulockError:
        self.close()
        what = f"compiling {source}" if source else "an answer"
        return GpulockError(f"the bytecode worker ({self.python}) exited with status "
                            f"{self.process.returncode} during {what}")

    def close(self) -> None:
        """Close its stdin (it exits on that) and wait for it."""
        self.alive = False
        for pipe in (self.requests, self.answers):
            pipe.close()
        self.process.wait()
