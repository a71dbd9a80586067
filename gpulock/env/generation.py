"""Generations: immutable, venv-like environments, and the `current` link between them.

`envs/<project>/gen-<N>/` holds `pyvenv.cfg`, `bin/` (the target interpreter's links, the
console scripts written for this generation) and `lib/pythonX.Y/site-packages/` (the farm
plus a `sitecustomize` that makes `.pth` files work through PYTHONPATH). A generation is
built in the store's `tmp/`, renamed into place, and only then made current by renaming a
new `current` link over the old one: a reader sees the old environment or the new one.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpulock import faults
from gpulock.env.farm import FarmStats, build, link
from gpulock.errors import GpulockError
from gpulock.names import entry_key_problem, optimized_bytecode, script_problem
from gpulock.places import CURRENT, GENERATION_FORMAT, GENERATION_RECORD, RECORD_LIMIT
from gpulock.safeopen import Unsafe, check_folder, open_regular, read_json, read_small
from gpulock.store import DamagedEntry, Entry, Store, seal
from gpulock.store.scratch import link_atomic, tag

# The shell's `'''true'` is `true`; Python's is the start of a string that ends before the
# script's own code. The shell never reaches that end: it has exec'd or exited.
_LAUNCHER = """\
#!/bin/sh
'''true'
p=$(realpath -- "$0" 2>/dev/null || realpath "$0" 2>/dev/null) || p=$0
b=${p%/*}
[ -x "$b/python" ] && exec "$b/python" "$0" "$@"
if ! command -v python@MINOR@ >/dev/null 2>&1; then
  echo "gpulock: $0 cannot start: the environment's interpreter ($b/python) is not on this \
machine, nor is python@MINOR@ on PATH" >&2
  exit 127
fi
PYTHONPATH="${b%/*}/lib/python@MINOR@/site-packages${PYTHONPATH:+:$PYTHONPATH}" \
exec python@MINOR@ "$0" "$@"
'''"""
_CONFIG_LIMIT = 64 * 2**10  # pyvenv.cfg: five lines
# The sitecustomize each generation holds: a module of its own (site_hook.py, which ruff and
# mypy read), copied with the environment's Python version set.
_SITE_HOOK = Path(__file__).with_name("site_hook.py")
_SITE_HOOK_VERSION = '_PYTHON = ""\n'


@dataclass(frozen=True)
class Generation:
    path: Path
    number: int
    lock_digest: str
    packages: dict[str, str]  # name -> store key
    python: str
    python_version: str
    created: float
    format: int = 1  # places.GENERATION_FORMAT of the gpulock that built it

    @property
    def python_minor(self) -> str:
        return ".".join(self.python_version.split(".")[:2])

    @property
    def interpreter(self) -> str:
        """The interpreter `bin/python` leads to, as a path on this machine (`python` may be
        relative to `bin/`: the store's own CPython, wherever the store is mounted now)."""
        return os.path.normpath(os.path.join(self.path, "bin", self.python))

    @property
    def site_packages(self) -> Path:
        return site_packages(self.path, self.python_minor)


def site_packages(root: Path, python_minor: str) -> Path:
    return root / "lib" / f"python{python_minor}" / "site-packages"


def recorded_python(store: Store, python: str) -> str:
    """How a generation names the interpreter `python` (its `bin/python` link, its record,
    its lock digest): a CPython in the store by its path relative to the generation's `bin/`,
    so it is found wherever the volume is mounted; any other by its absolute path."""
    inside = os.path.abspath(store.layout.python)
    if os.path.commonpath([os.path.abspath(python), inside]) != inside:
        return python
    return os.path.relpath(python, store.layout.env("project") / "gen-1" / "bin")


def project_dir(store: Store, project: str) -> Path:
    return store.layout.env(project)


def read(path: Path) -> Generation | None:
    """The generation at `path`, or None when its record is missing or not gpulock's."""
    try:
        data = read_json(path / GENERATION_RECORD, RECORD_LIMIT)
        generation = Generation(
            path=path, number=int(data["number"]), lock_digest=str(data["lock_digest"]),
            packages=dict(data["packages"]), python=str(data["python"]),
            python_version=str(data["python_version"]), created=float(data["created"]),
            format=int(data.get("format", 1)))
    except (OSError, Unsafe, ValueError, KeyError, TypeError, RecursionError):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) and not entry_key_problem(v)
               for k, v in generation.packages.items()):
        return None
    return generation


def current(store: Store, project: str) -> Generation | None:
    """The project's current generation, if it has one."""
    return current_in(project_dir(store, project))


def current_in(folder: Path) -> Generation | None:
    """The generation `folder/current` names; None when there is none (or the link is not
    gpulock's: it only ever names `gen-<N>` beside it)."""
    name = current_name(folder)
    return read(folder / name) if name else None


def current_name(folder: Path) -> str | None:
    """`gen-<N>` when `folder/current` is a link gpulock made, else None."""
    try:
        name = os.readlink(folder / CURRENT)
    except OSError:
        return None
    return name if re.fullmatch(r"gen-\d+", name) else None


def all_generations(store: Store, project: str) -> list[Generation]:
    return generations_in(project_dir(store, project))


def generations_in(folder: Path) -> list[Generation]:
    """The readable generations in a project's folder, oldest first (links are not ours)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = [read(folder / n) for n in names
             if re.fullmatch(r"gen-\d+", n) and not os.path.islink(folder / n)]
    return sorted((g for g in found if g), key=lambda g: g.number)


@dataclass
class Built:
    generation: Generation
    farm: FarmStats
    scripts: int


def create(store: Store, project: str, entries: Mapping[str, Entry], python: str,
           python_version: str, lock_digest: str, lock_text: str,
           verify_imports: Sequence[str], previous: Generation | None = None,
           local_start: bool = False) -> Built:
    """Build a complete generation on the interpreter `python` (a path on this machine) and
    publish it (not yet current); the links `previous` (the current generation) already
    holds are taken over, not made again; `local_start`: with its pack (localstart.py)."""
    python = recorded_python(store, python)
    envs = store.layout.folder(project_dir(store, project))
    number = _next_number(envs)
    final = envs / f"gen-{number}"
    minor = ".".join(python_version.split(".")[:2])
    # Built beside its final place: the farm's relative links must not change depth.
    work = Path(tempfile.mkdtemp(prefix=f".building-{tag()}-", dir=envs))
    work.chmod(0o755)
    try:
        stats, scripts = scaffold(work, list(entries.values()), python, python_version,
                                  f"generation {number}",
                                  previous.path if previous is not None else None)
        (work / "pylock.gpu.toml").write_text(lock_text)
        generation = Generation(path=final, number=number, lock_digest=lock_digest,
                                packages={n: e.key for n, e in entries.items()},
                                python=python, python_version=python_version,
                                created=time.time(), format=GENERATION_FORMAT)
        (work / GENERATION_RECORD).write_text(json.dumps({
            "number": number, "lock_digest": lock_digest, "packages": generation.packages,
            "python": python, "python_version": python_version,
            "created": generation.created, "format": GENERATION_FORMAT},
            sort_keys=True, indent=1))
        if local_start:
            from gpulock.env import localstart  # tarfile: not for `gpulock env` to import

            localstart.write(work, store.layout.base, minor, lock_digest[:16])
        _verify(work, minor, verify_imports)
        faults.point("farm", work)
        while True:
            _seal(work)
            try:
                os.rename(work, final)
                break
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            # Another sync published this number first: take the next one. Only the record
            # and pyvenv.cfg name the number; scripts find `bin/python` beside themselves.
            number = _next_number(envs)
            final = envs / f"gen-{number}"
            _renumber(work, number)
            generation = dataclasses.replace(generation, path=final, number=number)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Built(generation, stats, scripts)


def scaffold(work: Path, entries: Sequence[Entry], python: str, python_version: str,
             what: str = "a build environment", previous: Path | None = None
             ) -> tuple[FarmStats, int]:
    """Lay out a venv of `entries` on `python` (absolute, or relative to `bin/`) in the empty
    folder `work`: interpreter links, pyvenv.cfg, the farm with gpulock's sitecustomize, and
    console scripts that start the `bin/python` beside them; links the environment
    `previous` already holds are shared with it (farm.link)."""
    minor = ".".join(python_version.split(".")[:2])
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3", f"python{minor}"):
        link(python, bin_dir / name, previous / "bin" / name if previous else None)
    # `home` is where the interpreter is as the generation is built. `bin/python` is a
    # link, and CPython follows it when `home` is gone (the volume mounted elsewhere).
    executable = os.path.normpath(os.path.join(bin_dir, python))
    (work / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(executable)}\ninclude-system-site-packages = false\n"
        f"version = {python_version}\nexecutable = {executable}\n"
        f"command = gpulock sync ({what})\n")
    site = site_packages(work, minor)
    stats = build(site, entries, reserved=("sitecustomize.py", "sitecustomize"),
                  previous=site_packages(previous, minor) if previous else None)
    # A package whose __pycache__ is a file: Python can never write bytecode into the
    # generation (it would be a file verify cannot tell from a planted one).
    (site / "sitecustomize").mkdir()
    hook = _SITE_HOOK.read_text(encoding="utf-8")
    (site / "sitecustomize" / "__init__.py").write_text(
        hook.replace(_SITE_HOOK_VERSION, f"_PYTHON = {minor!r}\n", 1))
    # Which filesystem holds the environment is asked where Python starts (mounts.py needs
    # only `os`): one copy of the rule, run by the sitecustomize.
    from gpulock.env import mounts

    shutil.copyfile(mounts.__file__, site / "sitecustomize" / "mounts.py")
    (site / "sitecustomize" / "__pycache__").write_bytes(b"")
    return stats, _write_scripts(bin_dir, minor, entries)


def _seal(work: Path) -> None:
    """Record every file of the generation by its sha256 and every link by where it leads,
    so that verify finds one added, changed or removed later."""
    record = read_json(work / GENERATION_RECORD, RECORD_LIMIT)
    record["files"] = {path: what for path, what in seal.contents(work)
                       if path != GENERATION_RECORD}
    (work / GENERATION_RECORD).write_text(json.dumps(record, sort_keys=True, indent=1))


def tampered(generation: Generation) -> str | None:
    """What was added to, changed in or removed from a generation since it was sealed (None
    when nothing, or when an older gpulock built it without a seal). Bytecode Python writes
    for `-O` runs beside a known source is not gpulock's to judge."""
    try:
        sealed = read_json(generation.path / GENERATION_RECORD, RECORD_LIMIT).get("files")
    except (OSError, Unsafe, AttributeError):
        return "its record cannot be read"
    if not isinstance(sealed, dict):
        return None
    return seal.broken(generation.path, sealed, skip=(GENERATION_RECORD,),
                       tolerated=optimized_bytecode)


def _next_number(envs: Path) -> int:
    numbers = [int(p.name[4:]) for p in envs.glob("gen-*") if p.name[4:].isdigit()]
    return max(numbers, default=0) + 1


def _renumber(work: Path, number: int) -> None:
    record = read_json(work / GENERATION_RECORD, RECORD_LIMIT)
    record["number"] = number
    (work / GENERATION_RECORD).write_text(json.dumps(record, sort_keys=True, indent=1))
    config = read_small(work / "pyvenv.cfg", _CONFIG_LIMIT).decode()
    (work / "pyvenv.cfg").write_text(re.sub(r"\(generation \d+\)", f"(generation {number})",
                                            config))


def _write_scripts(bin_dir: Path, minor: str, entries: Iterable[Entry]) -> int:
    from installer.scripts import Script

    count = 0
    for entry in entries:
        for name, module, attr, section in entry.scripts:
            kind: Literal["console", "gui"] = "gui" if section == "gui" else "console"
            _, data = Script(name, module, attr, kind).generate("python", "posix")
            _write_script(bin_dir, entry, name, launcher(minor) + data[data.index(b"\n"):])
            count += 1
        for name, data in _data_scripts(entry):
            # `#!python` in .data/scripts means "the interpreter that installs me".
            if re.match(rb"#!pythonw?(\r?\n)", data):
                data = _started(minor, data[data.index(b"\n"):])
            _write_script(bin_dir, entry, name, data)
            count += 1
    return count


def _data_scripts(entry: Entry) -> Iterator[tuple[str, bytes]]:
    """The files of the entry's `scripts/` (a wheel's .data/scripts), read through real
    folders only: a link or FIFO planted there is a damaged entry, never followed into a
    file outside the store (it would be copied into `bin/`, readable by every user)."""
    if not os.path.lexists(entry.path / "scripts"):
        return
    try:
        names = sorted(os.listdir(check_folder(entry.path, "scripts")))
        for name in names:
            with open_regular(entry.path, f"scripts/{name}") as handle:
                yield name, handle.read()
    except Unsafe as exc:
        raise DamagedEntry(entry.path, str(exc)) from None


def _started(minor: str, body: bytes) -> bytes:
    """A data script's body behind the launcher; one whose first lines matter to Python
    (a coding cookie, `from __future__` after its docstring) gets `/usr/bin/env pythonX.Y`
    instead: the launcher's string would come before them. That finds the environment's
    python when its `bin/` leads PATH (`gpulock run`, `gpulock env`)."""
    head = body.lstrip(b"\r\n").split(b"\n", 2)[:2]
    if b"from __future__" in body or any(re.match(rb"[ \t\f]*#.*?coding[:=]", line)
                                         for line in head):
        return f"#!/usr/bin/env python{minor}".encode() + body
    return launcher(minor) + body


def launcher(minor: str) -> bytes:
    """The first lines of each Python script in `bin/`: a /bin/sh trampoline (pip's form for
    shebangs the kernel cannot read, uv's for relocatable venvs) that runs the script with
    the `python` beside it, wherever the store is mounted; where that interpreter is not on
    this machine (the pod's, seen from another image), with `pythonX.Y` from PATH and the
    environment's site-packages on PYTHONPATH. An absolute shebang would name the path the
    store had when it was written. To Python, the shell lines are one string."""
    return _LAUNCHER.replace("@MINOR@", minor).encode()


def _write_script(bin_dir: Path, entry: Entry, name: str, data: bytes) -> None:
    """Write one script into `bin/`: never over the interpreter links, never through a link.

    Entries published by older gpulock releases were not checked for such names: check here.
    """
    problem = script_problem(name)
    if problem:
        raise GpulockError(f"{entry.name} {entry.version} declares a script named {name!r}, "
                           f"which {problem}; the environment was not built")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with open(os.open(bin_dir / name, flags, 0o755), "wb") as handle:
        handle.write(data)
    os.chmod(bin_dir / name, 0o755)


# Imports each module of [verify] (names checked by the manifest) and, on failure, says the
# whole chain of causes: torch's "ImportError" hides "libc10_cuda.so: cannot open ...".
_VERIFY = """\
import sys
for name in sys.argv[1:]:
    try:
        __import__(name)
    except BaseException as error:
        chain, seen = [], set()
        while error is not None and id(error) not in seen and len(chain) < 6:
            seen.add(id(error))
            chain.append(f"{type(error).__name__}: {error}")
            error = error.__cause__ or error.__context__
        print(f"import {name}: " + "; caused by ".join(chain))
        sys.exit(1)
"""


def _verify(root: Path, minor: str, imports: Sequence[str]) -> None:
    if not imports:
        return
    result = subprocess.run([str(root / "bin" / "python"), "-c", _VERIFY, *imports],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        said = (result.stdout.strip() or result.stderr.strip() or "(no output)").splitlines()
        raise GpulockError(f"[verify] imports failed in the new environment, which was not "
                           f"made current: {' '.join(said[-1].split())}")


def switch(store: Store, project: str, generation: Generation) -> None:
    """Make `generation` current by renaming a fresh link over `current` (atomic)."""
    link_atomic(project_dir(store, project) / CURRENT, generation.path.name)


def rollback(store: Store, project: str, number: int | None) -> tuple[Generation, int | None]:
    """Make generation `number` (default: the one before current) current again.

    Refuses a generation whose store entries are gone (collected or damaged), so `current`
    never points at an environment that cannot import.
    """
    now = current(store, project)
    generations = all_generations(store, project)
    if not generations:
        raise GpulockError(f"'{project}' has no generations in {store.root}; run 'gpulock sync'")
    if number is None:
        if now is None:
            raise GpulockError(f"'{project}' has no current generation; name one: "
                               f"{', '.join(str(g.number) for g in generations)}")
        earlier = [g for g in generations if g.number < now.number]
        if not earlier:
            raise GpulockError(f"generation {now.number} is the oldest '{project}' has; "
                               "there is nothing to roll back to")
        target = earlier[-1]
    else:
        found = [g for g in generations if g.number == number]
        if not found:
            raise GpulockError(f"'{project}' has no generation {number}; it has "
                               f"{', '.join(str(g.number) for g in generations)}")
        target = found[0]
    gone = sorted(name for name, key in target.packages.items() if not store.has(key))
    if gone:
        raise GpulockError(f"generation {target.number} of '{project}' needs store entries "
                           f"that are gone ({', '.join(gone[:5])}); 'gpulock verify --repair' "
                           "restores them")
    switch(store, project, target)
    return target, now.number if now else None
