"""`gpulock doctor`: the pod it runs on against what the lock needs, one line a check.

The driver and GPUs come from `nvidia-smi` (every NVIDIA driver install ships it, and its
output is the boundary tests fake): the driver version, the highest CUDA it runs, and each
GPU's name, compute capability and free memory. Against the lock: its CUDA, the glibc its
wheels were chosen for, its CPython, the space sync still needs on the store's filesystem,
each model's weight memory, and the `TORCH_CUDA_ARCH_LIST` of groups that build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from gpulock.errors import GpulockError
from gpulock.manifest import Manifest
from gpulock.pins import Lock
from gpulock.store import Store

OK, INFO, WARN, BLOCKER = "ok", "info", "warn", "blocker"


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it stands, and the sentence that says so."""

    name: str
    status: str  # OK, INFO, WARN or BLOCKER (the last makes doctor and sync fail)
    message: str


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: str  # "9.0"
    free_mib: int
    total_mib: int


@dataclass(frozen=True)
class Driver:
    version: str
    cuda: str | None  # the highest CUDA this driver runs
    gpus: tuple[Gpu, ...]
    unread: tuple[str, ...] = ()  # the lines describing GPUs that could not be read, shown


# A count as nvidia-smi prints one (a GPU's index, MiB): ASCII digits, perhaps a fraction.
# Checked before int() or float() see it: float() takes "inf", "nan" and "1e400" (infinite,
# and int() of it raises), str.isdigit() takes "²", which int() refuses, and int() refuses
# more than 4,300 digits; twelve are more than any GPU has MiB.
_COUNT = re.compile(r"[0-9]{1,12}(\.[0-9]+)?")
_SHOWN = 120  # what a message shows of a line nvidia-smi printed


def count(field: str) -> int | None:
    """The whole number `field` says (a fraction dropped), or None when it is not a plain
    decimal number."""
    return int(field.partition(".")[0]) if _COUNT.fullmatch(field) else None


def probe_driver() -> Driver | str | None:
    """The NVIDIA driver and its GPUs; None without one; a sentence when nvidia-smi fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        header = subprocess.run([smi], capture_output=True, text=True, timeout=20)
        rows = subprocess.run([smi, "--query-gpu=index,name,compute_cap,memory.free,"
                               "memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi did not answer ({type(exc).__name__})"
    version = _after(header.stdout, "Driver Version:")
    if version is None:
        failed = header if header.returncode != 0 else rows
        said = (failed.stderr + failed.stdout).strip().splitlines() or ["no output"]
        return f"nvidia-smi failed: {_shown(said[-1])}"
    lines = rows.stdout.strip().splitlines() if rows.returncode == 0 else []
    read = [(line, _gpu(line)) for line in lines]
    gpus = tuple(gpu for _, gpu in read if gpu is not None)
    unread = tuple(_shown(line) for line, gpu in read if gpu is None)
    cuda = _after(header.stdout, "CUDA Version:")
    return Driver(version, cuda if _version(cuda or "") else None, gpus, unread)


def _gpu(line: str) -> Gpu | None:
    """A GPU from one line of `--query-gpu`, or None when the line cannot be read."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) < 5:
        return None
    index, free, total = count(parts[0]), _mib(parts[3]), _mib(parts[4])
    if index is None or free is None or total is None:
        return None
    return Gpu(index, _shown(parts[1], quoted=False), _shown(parts[2], quoted=False), free,
               total)


def _mib(field: str) -> int | None:
    """MiB as nvidia-smi printed them; 0 for the [N/A] or [Not Supported] of vGPU and MIG
    set-ups (unknown: no model is said to fit), None for anything else not a count."""
    if field.startswith("[") and field.endswith("]"):
        return 0
    return count(field)


def _shown(text: str, quoted: bool = True) -> str:
    """What nvidia-smi printed, cut short and with its unprintable characters escaped."""
    cut = text[:_SHOWN] + ("..." if len(text) > _SHOWN else "")
    shown = repr(cut)
    return shown if quoted else shown[1:-1]


def _after(text: str, label: str) -> str | None:
    _, found, rest = text.partition(label)
    return _shown(rest.split()[0], quoted=False) if found and rest.split() else None


def checks(manifest: Manifest, lock: Lock, store: Store, driver: Driver | str | None,
           interpreter: bool = True, packages: bool = True, models: bool = True
           ) -> list[Check]:
    """Every check, in the order doctor prints them (`interpreter=False`: not the target
    CPython, which sync has found before it asks; `packages`/`models`: what the sync that
    asks will fetch)."""
    python = [_python(lock, store, manifest.project.install_python)] if interpreter else []
    found = [*_driver_checks(lock, driver), _glibc(lock), *python,
             _disk(manifest, lock, store, packages, models)]
    gpus = driver.gpus if isinstance(driver, Driver) else ()

    pinned = list(lock.models)
    found += [_model(model.name, dict(model.weights), gpus) for model in pinned
              if model.weights]
    found += _arch_lists(manifest, lock, gpus)
    if interpreter:
        found += _environment(manifest, store)
    return found


def _environment(manifest: Manifest, store: Store) -> list[Check]:
    """Whether the project's current environment starts here: on a worker whose image is
    not the pod's, its interpreter may be missing (its scripts then take pythonX.Y)."""
    from gpulock.env.generation import current
    from gpulock.env.starts import how_it_starts

    now = current(store, manifest.project.name)
    if now is None:
        return []
    start = how_it_starts(now)
    if not start.problem:
        return [Check("environment", OK, f"generation {now.number} starts with "
                      f"{now.interpreter}")]
    return [Check("environment", WARN if start.runs else BLOCKER, start.problem)]


def _driver_checks(lock: Lock, driver: Driver | str | None) -> list[Check]:
    # What the locked builds need (a CUDA 12.6 torch on a 12.8 target runs on a 12.6
    # driver); the target's own CUDA when no package says.
    from gpulock.lock.lockfile import cuda_needed

    cuda = cuda_needed(lock) or lock.target.cuda
    if not isinstance(driver, Driver):
        why = driver or "no NVIDIA driver here (nvidia-smi is not on PATH)"
        if cuda:
            return [Check("driver", BLOCKER, f"{why}, and the lock's environment needs CUDA "
                          f"{cuda} at run time")]
        return [Check("driver", INFO, f"{why}; the lock needs no CUDA")]
    found = [Check("driver", OK, f"NVIDIA driver {driver.version}, runs CUDA up to "
                   f"{driver.cuda or 'an unknown version'}")]
    found += [Check(f"gpu {g.index}", OK, f"GPU {g.index}: {g.name}, compute capability "
                    f"{g.capability}, {g.free_mib / 1024:.1f} GiB free of "
                    f"{g.total_mib / 1024:.1f} GiB") for g in driver.gpus]
    found += [Check("gpu", WARN, f"nvidia-smi described a GPU as {line}, which is not "
                    "index, name, compute capability, free and total MiB: it is left out")
              for line in driver.unread]
    if not driver.gpus:
        found.append(Check("gpu", WARN, "the driver sees no GPU"))
    if cuda and driver.cuda:
        found.append(_cuda(cuda, driver))
    return found


def _cuda(cuda: str, driver: Driver) -> Check:
    need, have = _version(cuda), _version(driver.cuda or "")
    if need is None or have is None or have >= need:
        return Check("cuda", OK, f"the lock's CUDA {cuda} runs on this driver")
    if have.major == need.major:
        # CUDA minor-version compatibility: a 12.x build runs on any 12.x driver, save for
        # code that needs the newer driver's PTX JIT or features.
        return Check("cuda", WARN, f"the lock's CUDA {cuda} is newer than the {driver.cuda} "
                     f"driver {driver.version} runs; it works through CUDA minor-version "
                     "compatibility, except kernels JIT-compiled from PTX")
    return Check("cuda", BLOCKER, f"the lock's CUDA {cuda} needs a newer driver than "
                 f"{driver.version} (it runs CUDA {driver.cuda} at most): update the driver "
                 f"or lock with project.cuda = \"{driver.cuda}\"")


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _glibc(lock: Lock) -> Check:
    try:
        here = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        here = ""
    have, need = _version(here.removeprefix("glibc ")), _version(lock.target.glibc)
    if have is None or need is None:
        return Check("glibc", WARN, f"cannot tell this machine's glibc ({here or 'none'}); "
                     f"the lock's wheels need {lock.target.glibc}")
    if have < need:
        return Check("glibc", BLOCKER, f"glibc {have} is older than the {need} the lock's "
                     "wheels were chosen for: lock with project.glibc = "
                     f"\"{have.major}.{have.minor}\"")
    return Check("glibc", OK, f"glibc {have}, the lock's wheels need {need}")


def _python(lock: Lock, store: Store, install: bool = False) -> Check:
    """The base CPython the environment's `bin/python` will link to, as sync finds it (the
    store's own first); with `install-python` a missing one is sync's to install."""
    from gpulock.env.interpreter import find_interpreter

    try:
        python, full = find_interpreter(lock.target.python, store,
                                        platform=lock.target.platform)
    except GpulockError as exc:
        if install:
            return Check("python", OK, f"CPython {lock.target.python} is not on this machine "
                         f"nor in the store; sync installs it into {store.layout.python} "
                         "with uv (install-python)")
        return Check("python", BLOCKER, str(exc))
    return Check("python", OK, f"CPython {full} at {python}")


def _disk(manifest: Manifest, lock: Lock, store: Store, packages: bool = True,
          models: bool = True) -> Check:
    """What sync would still download (wheels and sdists whose entries the store lacks,
    model files it lacks) against the free space of the store's filesystem. Unpacked
    wheels and extracted archives take more than that: the check is a floor."""
    from gpulock.build.env import store_keys
    from gpulock.models.blobs import stored_blob

    present = set(os.listdir(store.layout.pkgs)) if store.layout.pkgs.is_dir() else set()
    keys = store_keys(manifest, lock)
    needed = sum(ref.size for p in lock.packages if (ref := p.wheel or p.sdist) is not None
                 and keys[p.name] not in present) if packages else 0
    for model in lock.models if models else ():
        needed += sum(f.size for f in model.files if stored_blob(store, f) is None)
    folder = Path(store.root)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    said = f"sync downloads {_size(needed)} more; {_size(free)} free on {folder}"
    return Check("disk", BLOCKER if needed > free else OK, said)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _model(model: str, weights: dict[str, object], gpus: tuple[Gpu, ...]) -> Check:
    raw = weights.get("bytes")
    size = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else 0
    name = f"model {model}"
    if not gpus:
        return Check(name, INFO, f"{model}: {size / 2**30:.2f} GiB of weights; no GPU here to "
                     "hold them")
    fits = [g for g in gpus if g.free_mib * 2**20 >= size]
    if fits:
        best = max(fits, key=lambda g: g.free_mib)
        return Check(name, OK, f"{model} {size / 2**30:.2f} GiB fits on GPU {best.index} "
                     f"({best.free_mib / 1024:.1f} GiB free)")
    most = max(gpus, key=lambda g: g.free_mib)
    return Check(name, WARN, f"{model} {size / 2**30:.2f} GiB of weights fits on no GPU (at "
                 f"most {most.free_mib / 1024:.1f} GiB free, on GPU {most.index}): shard it "
                 "across GPUs, quantize it, or free memory")


# What torch's cpp_extension makes of the architecture names TORCH_CUDA_ARCH_LIST takes.
_NAMED = {"Kepler": "3.5+PTX", "Maxwell": "5.0;5.2+PTX", "Pascal": "6.0;6.1+PTX",
          "Volta": "7.0+PTX", "Turing": "7.5+PTX", "Ampere": "8.0;8.6+PTX", "Ada": "8.9+PTX",
          "Hopper": "9.0+PTX"}


def _arch_lists(manifest: Manifest, lock: Lock, gpus: tuple[Gpu, ...]) -> list[Check]:
    """A group that builds from source with a TORCH_CUDA_ARCH_LIST must cover every GPU's
    compute capability, else what it builds has no kernel for that GPU."""
    built = {p.name for p in lock.packages if p.wheel is None}
    found = []
    for group in manifest.groups:
        listed = dict(group.env).get("TORCH_CUDA_ARCH_LIST")
        names = {canonicalize_name(r.name) for r in group.packages}
        if not listed or not gpus or not names & built:
            continue
        archs = ";".join(_NAMED.get(a, a) for a in listed.replace(";", " ").split()).split(";")
        missing = sorted({g.capability for g in gpus if not _covers(archs, g.capability)})
        name = f"arch {group.name}"
        if missing:
            found.append(Check(name, BLOCKER, f"group '{group.name}' builds for "
                               f"TORCH_CUDA_ARCH_LIST=\"{listed}\", which has no kernels for "
                               f"compute capability {', '.join(missing)} of this pod's GPUs"))
        else:
            found.append(Check(name, OK, f"group '{group.name}' builds for every GPU here "
                               f"(TORCH_CUDA_ARCH_LIST=\"{listed}\")"))
    return found


def _covers(archs: list[str], capability: str) -> bool:
    """Whether code built for `archs` runs on `capability`: a binary for X.y runs on X.z
    with z >= y; PTX for X.y is compiled at load on any later GPU; an arch-specific target
    (9.0a) runs on exactly that GPU."""
    have = _version(capability)
    if have is None:
        return True
    for arch in archs:
        ptx = arch.endswith("+PTX")
        target = arch.removesuffix("+PTX")
        specific = target.endswith(("a", "f"))
        base = _version(target.rstrip("af"))
        if base is None:
            continue
        if specific and base == have:
            return True
        if not specific and base <= have and (base.major == have.major or ptx):
            return True
    return False


def preflight(manifest: Manifest, lock: Lock, store: Store, *, packages: bool = True,
              models: bool = True) -> None:
    """sync's checks before it fetches for a new generation: the first blocker, as an error.
    A machine without a GPU builds CUDA environments (a Docker build stage), so that one is
    not; nor the target CPython, which sync has found before it asks."""
    found = checks(manifest, lock, store, probe_driver(), interpreter=False,
                   packages=packages, models=models)
    blocker = next((c for c in found if c.status == BLOCKER and c.name != "driver"), None)
    if blocker is not None:
        raise GpulockError(f"{blocker.message} ('gpulock doctor' says more; 'sync "
                           "--no-check' skips the checks)")


def as_json(found: list[Check]) -> dict[str, object]:
    return {"checks": [asdict(c) for c in found],
            "blockers": sum(c.status == BLOCKER for c in found)}
