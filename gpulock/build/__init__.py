"""Building wheels from source (sdists, git checkouts) with uv, once per build setting.

An isolated build runs `uv build --wheel` on the target's CPython (uv installs the source's
own build requirements). A `no_build_isolation` build sees an environment instead:
- at sync, one made of the lock's store entries (`gpulock.build.env`): the torch it compiles
  against is the locked torch that runs beside it;
- at lock time, for metadata only, a throwaway venv holding the group's `build_requires`
  (pinned to the previous lock's versions when there is one), or without them the other
  groups' locked wheels (`sees`: what the build at sync sees), and the source's declared
  build system; the PEP 517 metadata hook runs there, offline for every client that
  honours a proxy, so nothing is compiled or downloaded to lock.
`Builder.key` names the settings a build depends on besides its inputs.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gpulock import untrusted
from gpulock.errors import GpulockError

LOG_LINES = 40  # what a failed build shows of its log


@dataclass(frozen=True)
class Builder:
    """Builds a wheel from source with uv, for the target's Python and a group's settings."""

    python: str  # the target's CPython version ("3.10")
    isolation: bool = True
    env: tuple[tuple[str, str], ...] = ()
    build_requires: tuple[str, ...] = ()
    # Where a lock-time metadata environment gets build_requires: first the group's index.
    indexes: tuple[str, ...] = ()
    pins: tuple[tuple[str, str], ...] = ()  # name -> version the previous lock chose
    # Without build_requires: everything else the lock resolved, (its wheel's URL, name==
    # version), which the metadata hook sees as the build at sync sees their entries.
    sees: tuple[tuple[str, str], ...] = ()

    @property
    def metadata_key(self) -> str:
        """What a lock-time METADATA depends on: the build settings, and for a no-isolation
        hook the versions it saw (a setup.py may write `torch=={torch.__version__}`)."""
        if self.isolation:
            return self.key
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        named = {canonicalize_name(Requirement(r).name) for r in self.build_requires}
        held = tuple(pin for pin in self.pins if pin[0] in named)
        return hashlib.sha256(repr((self.key, self.sees, held)).encode()).hexdigest()

    @property
    def key(self) -> str:
        """The build settings, hashed: the same source built with a different key is a
        different wheel (indexes and pins only steer lock-time metadata environments)."""
        return hashlib.sha256(repr((self.python, self.isolation, self.env,
                                    self.build_requires)).encode()).hexdigest()

    def interpreter(self) -> str:
        """The target's CPython when this machine has it, else the running one.

        Metadata rarely depends on the minor version; when the target interpreter is absent
        (a lock made on a laptop) the running interpreter is the honest fallback.
        """
        from gpulock.env.interpreter import find_python

        return find_python(self.python) or sys.executable

    def metadata(self, source: Path, label: str) -> bytes:
        """The METADATA a wheel built from `source` (an sdist or a source tree) would carry."""
        with tempfile.TemporaryDirectory(prefix="gpulock-build-") as out:
            if not self.isolation:
                return self._prepared_metadata(source, Path(out), label)
            wheel = self.build(source, Path(out), label)
            with zipfile.ZipFile(wheel) as archive:
                names = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")
                         and n.count("/") == 1]
                if len(names) != 1:
                    raise GpulockError(f"building {label} gave a wheel without METADATA")
                return untrusted.zip_member(archive, names[0],
                                            f"the METADATA built from {label}")

    def build(self, source: Path, out: Path, label: str, python: str | None = None,
              described: str = "") -> Path:
        """Build `source` into a wheel in `out` with `python` (default: the target's CPython);
        `described` names the build environment in a failure."""
        command = [_uv(), "build", "--wheel", "--out-dir", str(out), "--python",
                   python or self.interpreter(), "--no-python-downloads"]
        if not self.isolation:
            command.append("--no-build-isolation")
        command.append(str(source))
        bin_dir = str(Path(python).parent) if python else ""
        env = {**os.environ, **dict(self.env), "PYTHONDONTWRITEBYTECODE": "1"}
        if python and not self.isolation:
            # The environment's own tools (ninja, cmake) come first, as in an activated venv.
            env["PATH"] = os.pathsep.join(filter(None, (bin_dir, env.get("PATH"))))
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wheels = sorted(out.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise _failed(label, f"uv build exited {result.returncode}",
                          described or self.describe(), result.stdout + result.stderr,
                          isolated=self.isolation)
        return wheels[0]

    def describe(self) -> str:
        """The build environment in words, for errors."""
        if self.isolation:
            return f"an isolated build on CPython {self.python}"
        wanted = ", ".join(self.build_requires) or "the locked packages"
        return f"a no-isolation build on CPython {self.python} against {wanted}"

    def _prepared_metadata(self, source: Path, work: Path, label: str) -> bytes:
        """Run the source's PEP 517 `prepare_metadata_for_build_wheel` in a throwaway venv
        holding build_requires and the declared build system (setup.py imports torch)."""
        tree = _source_tree(source, work / "src", label)
        system = _build_system(tree, label)
        venv = work / "venv"
        uv = _uv()
        made = subprocess.run([uv, "venv", "--quiet", "--no-python-downloads", "--python",
                               self.interpreter(), str(venv)], capture_output=True, text=True,
                              check=False)
        python = venv / "bin" / "python"
        wanted = [self._pinned(r) for r in (*self.build_requires, *system.requires)]
        if made.returncode == 0 and self.sees:
            self._install_sees(python, work, label)
        if made.returncode == 0 and wanted:
            made = subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python),
                                   "--no-python-downloads", *wanted],
                                  capture_output=True, text=True, env=self._index_env(),
                                  check=False)
        holding = f"a venv on CPython {self.python} with " + (
            ", ".join(wanted) + (" and the project's other locked packages" if self.sees
                                 else "") if wanted else "the project's other locked packages")
        if made.returncode != 0:
            raise _failed(label, "its metadata build environment could not be made", holding,
                          made.stdout + made.stderr)
        from pyproject_hooks import BuildBackendHookCaller, quiet_subprocess_runner

        # Offline, for every client that honours a proxy (urllib, requests, pip): a setup.py
        # that would fetch something (flash-attn fetches a prebuilt wheel when it can) must
        # not make the lock depend on what a server says today.
        dead = "http://127.0.0.1:9"
        settings = {**dict(self.env), "PYTHONDONTWRITEBYTECODE": "1", "NO_PROXY": "",
                    "no_proxy": "", **{f"{scheme}_proxy": dead for scheme in
                                       ("http", "https", "all", "HTTP", "HTTPS", "ALL")}}

        def runner(cmd: Sequence[str], cwd: str | None = None,
                   extra_environ: Mapping[str, str] | None = None) -> None:
            quiet_subprocess_runner(cmd, cwd, {**(extra_environ or {}), **settings})

        caller = BuildBackendHookCaller(str(tree), system.backend,
                                        list(system.backend_path) or None,
                                        runner=runner, python_executable=str(python))
        out = work / "metadata"
        out.mkdir()
        try:
            name = caller.prepare_metadata_for_build_wheel(str(out))
        except Exception as exc:  # the backend's own failure, whatever it raised
            output = getattr(exc, "output", b"") or b""
            said = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
            raise _failed(label, "its metadata hook failed", holding, said or str(exc)) from None
        metadata = out / name / "METADATA"
        if "/" in name or not metadata.is_file():
            raise GpulockError(f"building the metadata of {label} gave no METADATA")
        with metadata.open("rb") as handle:
            return untrusted.bounded(handle, f"the METADATA built from {label}")

    def _install_sees(self, python: Path, work: Path, label: str) -> None:
        """The other groups' locked packages into the hook's venv: their wheels for the
        target, else (a machine of another platform locking) the same versions for this one.
        The lists go through a 0600 file, not the command line every user can read."""
        failed = ""
        for attempt, entries in (("wheels", [url for url, _ in self.sees]),
                                 ("versions", [spec for _, spec in self.sees])):
            listed = work / f"sees-{attempt}.txt"
            listed.touch(mode=0o600)
            listed.write_text("".join(f"{entry}\n" for entry in entries))
            made = subprocess.run([_uv(), "pip", "install", "--quiet", "--no-deps", "--python",
                                   str(python), "--no-python-downloads", "-r", str(listed)],
                                  capture_output=True, text=True, env=self._index_env(),
                                  check=False)
            if made.returncode == 0:
                return
            failed = (made.stderr.strip().splitlines() or [f"exit {made.returncode}"])[-1]
        from gpulock.credentials import redact

        names = ", ".join(spec.split("==")[0] for _, spec in self.sees[:6])
        raise GpulockError(f"the metadata hook of {label} runs against the other groups' "
                           f"locked packages ({names}{'...' if len(self.sees) > 6 else ''}), "
                           "and neither their wheels for the target nor those versions for "
                           f"this machine install here ({redact(failed)}); lock on a machine "
                           "of the target's platform, or give the group build_requires")

    def _pinned(self, requirement: str) -> str:
        """`requirement` held to the previous lock's version (uv's match-runtime, as near as
        lock time allows: the runtime resolution is not finished yet)."""
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        parsed = Requirement(requirement)
        version = dict(self.pins).get(canonicalize_name(parsed.name))
        if version and not parsed.url and parsed.specifier.contains(version, prereleases=True):
            extras = f"[{','.join(sorted(parsed.extras))}]" if parsed.extras else ""
            return f"{parsed.name}{extras}=={version}"
        return requirement

    def _index_env(self) -> dict[str, str]:
        """uv's index settings from the environment, where `ps` does not show credentials."""
        from gpulock.credentials import with_credentials

        env = dict(os.environ)
        flat = [i for i in self.indexes if _flat_folder(i)]
        served = [with_credentials(i) for i in self.indexes if i not in flat]
        if served:
            env["UV_INDEX_URL"] = served[0]
            env["UV_EXTRA_INDEX_URL"] = " ".join(served[1:])
        if flat:  # a file:// folder of wheels is pip's find-links to uv, not an index
            env["UV_FIND_LINKS"] = ",".join(flat)  # uv splits this one on commas
        return env


def _flat_folder(index: str) -> bool:
    """Whether `index` is a file:// folder of archives rather than a simple index."""
    from urllib.parse import unquote, urlsplit

    if not index.startswith("file://"):
        return False
    folder = Path(unquote(urlsplit(index).path))
    try:
        return any(p.suffix in (".whl", ".gz", ".zip") for p in folder.iterdir())
    except OSError:
        return False


def _failed(label: str, what: str, environment: str, log: str, isolated: bool = False
            ) -> GpulockError:
    from gpulock.credentials import redact

    # uv and build backends got the index logins through their environment: a log line
    # that echoes an index URL must not carry them to the terminal.
    tail = [redact(line) for line in log.strip().splitlines()[-LOG_LINES:]]
    # The usual cause, said first: the failure itself (the last traceback's exception, not
    # an optional import the build caught and logged) is a module its environment lacks.
    failure = log.rsplit("Traceback (most recent call last):", 1)[-1]
    missing = _MISSING.findall(failure) if "Traceback" in log else []
    if missing:
        module = missing[-1]
        fix = (f"add the package that provides {module} to its group's build_requires (or, "
               "for a no_build_isolation group without build_requires, to another group of "
               "the project)" if not isolated
               else f"set no_build_isolation = true on its group with {module}'s package in "
               "build_requires")
        return GpulockError(
            f"building {label} failed: it imports '{module}', which {environment} lacks; "
            f"{fix}; the last {len(tail)} lines of its log:",
            details=["  " + line for line in tail])
    return GpulockError(f"building {label} failed ({what}) in {environment}; the last "
                        f"{len(tail)} lines of its log:", details=["  " + line for line in tail])


_MISSING = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?([\w.]+)'?")


def _source_tree(source: Path, into: Path, label: str) -> Path:
    """A source tree for `source`: itself when it is a folder, else its sdist unpacked with
    tarfile's `data` filter (nothing outside `into`, no devices, no links leaving it)."""
    if source.is_dir():
        return source
    into.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                for member in archive.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise GpulockError(f"the sdist {label} holds {member!r}, a path "
                                           "outside its folder")
                archive.extractall(into)
        else:
            with tarfile.open(source) as archive:
                archive.extractall(into, filter="data")
    except (OSError, tarfile.TarError, zipfile.BadZipFile, RuntimeError, NotImplementedError,
            EOFError, zlib.error) as exc:  # zipfile's: encrypted, unknown method, corrupt
        raise GpulockError(f"cannot unpack the sdist {label}: {exc}") from None
    tops = [p for p in into.iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 and not (into / "pyproject.toml").exists() else into


@dataclass(frozen=True)
class _BuildSystem:
    requires: tuple[str, ...]
    backend: str
    backend_path: tuple[str, ...]  # empty: the backend is imported from the environment


def _build_system(tree: Path, label: str) -> _BuildSystem:
    """The `[build-system]` of a source tree, with PEP 517's defaults for a setup.py one."""
    from packaging.requirements import InvalidRequirement, Requirement

    pyproject = tree / "pyproject.toml"
    where = f"the pyproject.toml of {label}"
    data = untrusted.toml_file(pyproject, where) if pyproject.is_file() else {}
    table = data.get("build-system", {})
    if not isinstance(table, dict):
        raise GpulockError(f"{where}: build-system is not a table ([build-system])")
    requires = table.get("requires", ["setuptools>=40.8.0"])
    backend = table.get("build-backend", "setuptools.build_meta:__legacy__")
    backend_path = table.get("backend-path", [])
    for key, value in (("requires", requires), ("backend-path", backend_path)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise GpulockError(f"{where}: build-system.{key} is not a list of strings")
    if not isinstance(backend, str):
        raise GpulockError(f"{where}: build-system.build-backend is not a string")
    for text in requires:
        try:
            Requirement(text)
        except InvalidRequirement:
            raise GpulockError(f"{where}: build-system.requires holds {text!r}, which is "
                               "not a requirement") from None
    return _BuildSystem(tuple(requires), backend, tuple(backend_path))


def closure(names: Sequence[str], dependencies: Mapping[str, Sequence[str]]) -> list[str]:
    """`names` and everything they depend on, by the lock's dependency lists, sorted."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in dependencies:
            continue
        seen.add(name)
        todo.extend(dependencies[name])
    return sorted(seen)


def _uv() -> str:
    """uv's binary, found once. The metadata builds ask from many threads, and uv's finder
    reads sysconfig, which fills its variables in place on first use: a thread asking
    meanwhile sees half of them (CPython 3.11: `"uv" + None`)."""
    with _UV_LOCK:
        return _uv_bin()


_UV_LOCK = threading.Lock()


@cache
def _uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()
