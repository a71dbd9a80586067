"""Written by gpulock: makes this environment's .pth files work through PYTHONPATH and, on a
network volume, imports the farm's linked packages from the store."""
import os as _os
import site as _site
import sys as _sys

# The environment's Python version ("3.11"): set in the copy each generation holds
# (gpulock.env.generation.scaffold); this module is never imported from gpulock itself.
_PYTHON = ""
_here = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if f"{_sys.version_info[0]}.{_sys.version_info[1]}" != _PYTHON:
    _sys.stderr.write("gpulock: this environment was built for Python " + _PYTHON
                      + ", but Python " + _sys.version.split()[0] + " is running it\n")
if _os.path.realpath(_sys.prefix) != _os.path.realpath(_os.path.join(_here, "..", "..", "..")):
    # Not started through the environment's own interpreter: add it as a site directory.
    _site.addsitedir(_here)
else:
    # pip aimed at this environment (`python -m pip`, `pip --python`) would write through
    # links into the shared store: refuse, and say where packages are declared.
    _argv = getattr(_sys, "orig_argv", _sys.argv)
    _pip = (_argv[1:3] == ["-m", "pip"] or "_PIP_RUNNING_IN_SUBPROCESS" in _os.environ
            or _os.path.basename((_argv[1:2] or [""])[0].rstrip("/"))
            in ("pip", "pip3", "pip.pyz", "__pip-runner__.py"))
    if _pip and {"install", "uninstall"} & set(_argv):
        _sys.stderr.write("gpulock: this environment is built from gpu.toml and shared "
                          "through the store; add or remove packages in gpu.toml and run "
                          "'gpulock sync'\n")
        _sys.stderr.flush()
        _os._exit(1)


def _store_imports():
    """GPULOCK_STORE_IMPORTS=1 or 0, else whether this folder is on a network volume now:
    the pod that built it may have had it on a local disk, a worker mounts it over NFS."""
    said = _os.environ.get("GPULOCK_STORE_IMPORTS")
    if said in ("0", "1"):
        return said == "1"
    found = {}
    source = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "mounts.py")
    try:
        with open(source, encoding="utf-8") as handle:
            exec(compile(handle.read(), source, "exec"), found)
        return found["on_network_volume"](_here)
    except Exception:  # never an error at every start: the farm's paths are kept
        return False


if _store_imports():
    # Only here: on a local disk no Python started in the environment pays for importlib.
    import importlib.machinery as _machinery
    import importlib.util as _util

    class _FarmFinder(_machinery.FileFinder):
        """Imports a top-level package whose folder is one of the farm's links from the
        store folder the link names, so every later lookup inside it walks that path instead
        of reading the link again: on a network volume each readlink is a round trip (a cold
        `import torch, transformers` read links 25,000 times). Only whole packages move, so
        a package's modules all share one root; the farm links a folder whole only when no
        ELF file in it has an $ORIGIN path climbing out of it."""

        def find_spec(self, fullname, target=None):
            spec = super().find_spec(fullname, target)
            if spec is None or not spec.has_location or not spec.submodule_search_locations:
                return spec
            folder = spec.submodule_search_locations[0]
            if not _os.path.islink(folder):
                return spec
            real = _os.path.realpath(folder)
            return _util.spec_from_file_location(
                fullname, _os.path.join(real, _os.path.basename(spec.origin)),
                submodule_search_locations=[real])

    _LOADERS = [(_machinery.ExtensionFileLoader, _machinery.EXTENSION_SUFFIXES),
                (_machinery.SourceFileLoader, _machinery.SOURCE_SUFFIXES),
                (_machinery.SourcelessFileLoader, _machinery.BYTECODE_SUFFIXES)]

    def _farm_hook(path):
        if path != _here:
            raise ImportError("not this environment's site folder")
        return _FarmFinder(path, *_LOADERS)

    _sys.path_hooks.insert(0, _farm_hook)
    _sys.path_importer_cache.pop(_here, None)  # made before the hook was there

# The next sitecustomize on the path runs too: the system's, or another gpulock
# environment's when several are on PYTHONPATH (each then adds its own site directory);
# each runs once, whichever chain reaches it.
_ran = _sys.__dict__.setdefault("_gpulock_sitecustomized", set())
_ran.add(_os.path.realpath(_here))
for _entry in list(_sys.path):
    if _os.path.realpath(_entry or ".") in _ran:
        continue
    _candidate = next((_c for _c in (_os.path.join(_entry or ".", "sitecustomize.py"),
                                     _os.path.join(_entry or ".", "sitecustomize",
                                                   "__init__.py")) if _os.path.isfile(_c)),
                      None)
    if _candidate:
        with open(_candidate, "rb") as _handle:
            exec(compile(_handle.read(), _candidate, "exec"),
                 {"__name__": "sitecustomize", "__file__": _candidate})
        break
