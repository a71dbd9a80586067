"""Writes hash-based pycs for gpulock; run by the environment's own interpreter, not gpulock's.

Bytecode must come from the interpreter that will import it, so `gpulock.store.compile`
starts this file as a script (`python -I -S compile_worker.py`) and keeps it for many files.
It must run on any Python 3 an environment may use, without gpulock or any other package.

Each request on stdin is `<length>\\n` and a source path of that many bytes. Each answer on
stdout is one of `ok <path length> <data length>\\n` and the pyc's path and bytes (so gpulock
hashes what was written without reading it back), `skip\\n` for a source that does not
compile (compileall skips it too: torch ships a file with 3.12 syntax), or
`error <errno> <length>\\n` and a message for anything else, a full disk included.
"""

import importlib.util
import os
import py_compile
import sys


def main() -> None:
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = requests.readline()
        if not header:
            return
        source = os.fsdecode(requests.read(int(header)))
        answers.write(_compile(source))
        answers.flush()


def _compile(source: str) -> bytes:
    try:
        # Like `compileall --invalidation-mode unchecked-hash`: the same writer, the same name.
        pyc = importlib.util.cache_from_source(source)
        py_compile.compile(source, pyc, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        with open(pyc, "rb") as handle:
            data = handle.read()
    except py_compile.PyCompileError:
        return b"skip\n"
    except OSError as exc:
        message = str(exc).encode("utf-8", "backslashreplace")
        return b"error %d %d\n" % (exc.errno or 0, len(message)) + message
    name = os.fsencode(pyc)
    return b"ok %d %d\n" % (len(name), len(data)) + name + data


if __name__ == "__main__":
    main()
