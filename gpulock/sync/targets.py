"""Which of a manifest's targets this pod runs: its architecture, then the newest CUDA its
driver runs (read from nvidia-smi as doctor reads it). A lock serves a mixed fleet when
gpu.toml declares [targets.<name>] beside [project]'s own (`default`)."""

from __future__ import annotations

import platform

from packaging.version import InvalidVersion, Version

from gpulock.errors import GpulockError
from gpulock.manifest import DEFAULT_TARGET, Manifest
from gpulock.sync.doctor import Driver
from gpulock.target import Target

_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def targets_of(manifest: Manifest) -> list[tuple[str, Target]]:
    """Every target by name, [project]'s first."""
    return [(DEFAULT_TARGET, manifest.target),
            *((t.name, manifest.for_target(t.name).target) for t in manifest.targets)]


def choose(manifest: Manifest, driver: Driver | str | None, machine: str | None = None
           ) -> tuple[str, str]:
    """The target this pod runs, and why in words; one sentence when it runs none."""
    arch = _ARCHES.get((machine or platform.machine()).lower(), machine or platform.machine())
    have = _cuda(driver.cuda) if isinstance(driver, Driver) and driver.cuda else None
    targets = targets_of(manifest)
    runs = []
    for name, target in targets:
        need = _cuda(target.cuda) if target.cuda else None
        if target.arch == arch and (need is None or (have is not None and have >= need)):
            runs.append((need or Version("0"), name))
    pod = f"this pod ({arch}, " + (f"NVIDIA driver {driver.version} running CUDA up to "
                                   f"{driver.cuda})" if isinstance(driver, Driver) and
                                   driver.cuda else f"{_no_driver(driver)})")
    if not runs and have is not None:
        # CUDA's minor-version compatibility: a 12.8 build runs on a 12.4 driver (doctor
        # warns of PTX JIT), the nearest such target rather than none.
        runs = [(need, name) for name, target in targets
                if target.arch == arch and target.cuda and (need := _cuda(target.cuda))
                and need.major == have.major]
    if not runs and have is None:
        default = targets[0][1]
        if default.arch == arch:  # a build stage or CI: no driver to choose by
            return DEFAULT_TARGET, (f"{pod}: syncing target '{DEFAULT_TARGET}' (--target NAME "
                                    "chooses another)")
    if not runs:
        needs = "; ".join(f"{name} needs {target.arch}"
                          + (f" and CUDA {target.cuda}" if target.cuda else "")
                          for name, target in targets)
        raise GpulockError(f"{pod} runs none of gpu.toml's targets: {needs}; pass --target "
                           "NAME to take one anyway")
    # The newest CUDA this driver runs; [project]'s own target first among equals.
    order = [name for name, _ in targets]
    best = max(runs, key=lambda run: (run[0], -order.index(run[1])))[1]
    return best, f"{pod} runs target '{best}' (--target NAME chooses another)"


def _no_driver(driver: Driver | str | None) -> str:
    return driver if isinstance(driver, str) else "no NVIDIA driver"


def _cuda(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None
