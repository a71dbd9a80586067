"""Writes hash-based pycs for gpulock; run by the environment's own interpreter, not gpulock's.

Bytecode must come from the interpreter that will import it, so `gpulock.store.compile`
starts this file as a script (`python -I -S compile_worker.py`) and keeps it for many files.
It must run on any Python 3 an environment may use, without gpulock or any other package.
A pyc is built as py_compile builds one with `invalidation_mode=UNCHECKED_HASH` (PEP 552:
magic, flags, the source's hash, the marshalled code), from public APIs only, but written
straight into the new entry: no temporary file and rename per pyc, and no read back.

Each request on stdin is `<length>\\n` and a source path of that many bytes. Each answer on
stdout is one of `ok <path length> <data length>\\n` and the pyc's path and bytes (so gpulock
hashes what was written without reading it), `skip\\n` for a source that does not compile
(compileall skips it too: torch ships a file with 3.12 syntax), or
`error <errno> <length>\\n` and a message for anything else, a full disk included.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import sys

_UNCHECKED_HASH = (0b01).to_bytes(4, "little")  # PEP 552 flags: hash-based, never checked


def main() -> None:
    # Run with -I: this file's folder (gpulock/store, with a gc.py) must not shadow the
    # standard library on sys.path.
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = requests.readline()
        if not header:
            return
        source = os.fsdecode(requests.read(int(header)))
        answers.write(_answer(source))
        answers.flush()


def _answer(source: str) -> bytes:
    try:
        pyc = importlib.util.cache_from_source(source)
        data = _compile(source)
        if data is None:
            return b"skip\n"
        _write(pyc, data, os.stat(source).st_mode)
    except OSError as exc:
        where = str(exc.filename or exc).encode("utf-8", "backslashreplace")
        return b"error %d %d\n" % (exc.errno or 0, len(where)) + where
    except Exception:  # marshal or the interpreter refusing it: skipped, as compileall would
        return b"skip\n"
    name = os.fsencode(pyc)
    return b"ok %d %d\n" % (len(name), len(data)) + name + data


def _compile(source: str) -> bytes | None:
    """The pyc's bytes, or None where py_compile would raise PyCompileError."""
    with open(source, "rb") as handle:
        text = handle.read()
    try:
        code = compile(text, source, "exec", dont_inherit=True)
    except Exception:  # a syntax or encoding error, null bytes, nesting too deep
        return None
    return (importlib.util.MAGIC_NUMBER + _UNCHECKED_HASH + importlib.util.source_hash(text)
            + marshal.dumps(code))


def _write(pyc: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(pyc), exist_ok=True)
    # The source's mode, writable by its owner, as py_compile sets it; O_EXCL: never
    # through a file or link already there.
    handle = os.open(pyc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, (mode | 0o200) & 0o666)
    with open(handle, "wb") as out:
        out.write(data)


if __name__ == "__main__":
    main()
