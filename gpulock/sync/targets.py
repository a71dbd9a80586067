"""Which of a manifest's targets this pod runs: its architecture, then the newest CUDA its
driver runs (read from nvidia-smi as doctor reads it). A lock serves a mixed fleet when
gpu.toml declares [targets.<name>] beside [project]'s own (`default`)."""

from __future__ import annotations

import platform

from packaging.version import InvalidVersion, Version

from gpulock.errors import GpulockError
from gpulock.lock.target import Target
from gpulock.manifest import DEFAULT_TARGET, Manifest
from gpulock.sync.doctor import Driver

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
    runs = []
    for name, target in targets_of(manifest):
        need = _cuda(target.cuda) if target.cuda else None
        if target.arch == arch and (need is None or (have is not None and have >= need)):
            runs.append((need or Version("0"), name))
    pod = f"this pod ({arch}, " + (f"NVIDIA driver {driver.version} running CUDA up to "
                                   f"{driver.cuda})" if isinstance(driver, Driver) and
                                   driver.cuda else "no NVIDIA driver)")
    if not runs:
        needs = "; ".join(f"{name} needs {target.arch}"
                          + (f" and CUDA {target.cuda}" if target.cuda else "")
                          for name, target in targets_of(manifest))
        raise GpulockError(f"{pod} runs none of gpu.toml's targets: {needs}; pass --target "
                           "NAME to take one anyway")
    # The newest CUDA this driver runs; [project]'s own target first among equals.
    order = [name for name, _ in targets_of(manifest)]
    best = max(runs, key=lambda run: (run[0], -order.index(run[1])))[1]
    return best, f"{pod} runs target '{best}' (--target NAME chooses another)"


def _cuda(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None
