"""The CUDA a distribution is built for, and so the driver a lock needs.

A `+cuXYZ` local label says it outright (the PyTorch indexes). PyPI's CUDA builds carry no
label: their CUDA is in what they depend on, NVIDIA's runtime packages, whose names or
versions say which CUDA they are (`nvidia-cuda-runtime-cu12` 12.8.90 is CUDA 12.8,
`nvidia-cuda-runtime` 13.2.86 is CUDA 13.2, `nvidia-cufft-cu12` 11.3.3 is some CUDA 12).
A target's `cuda` is then a constraint on those packages, as pixi's `__cuda` virtual
package is for conda: a CUDA build whose runtime is newer than the target's never
resolves, and the resolver backtracks to a build the pod's driver runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from packaging.version import Version

# What says a build's CUDA: the CUDA runtime it loads (13.2.86 is CUDA 13.2), or the
# toolkit meta-package. The libraries beside it may be newer within the major version
# (nvjitlink 13.5 and cublas 13.1 ship to CUDA 13.0 builds: minor-version compatibility) or
# number their releases their own way (cufft 11.x, cudnn 9.x, nccl 2.x): for them only a
# `-cuNN` suffix in their name says their CUDA's major version.
_TOOLKIT_VERSIONED = frozenset({"nvidia-cuda-runtime", "cuda-toolkit"})
_SUFFIX = re.compile(r"(nvidia-[a-z0-9-]+)-cu(\d{2})")
# cu92, cu118, cu128, cu130: the last digit is the minor version; two digits only for 9.x.
_LABEL = re.compile(r"cu(9|\d\d)(\d)")
# Packages whose major version is their CUDA's (cuda-bindings 13.x needs a CUDA 13 driver).
_MAJOR_VERSIONED = frozenset({"cuda-bindings", "cuda-python"})
_CUPY = re.compile(r"cupy-cuda(\d{2})x")


def built_for(name: str, version: Version) -> tuple[int, int] | None:
    """The CUDA (major, minor) `name` `version` is built for; None when it says none. A
    `-cuNN` name alone gives (NN, 0): some CUDA NN."""
    local = version.local or ""
    if local.startswith("cu") and (label := _LABEL.fullmatch(local)):
        return int(label.group(1)), int(label.group(2))
    suffixed = _SUFFIX.fullmatch(name)
    base = suffixed.group(1) if suffixed else name
    if base in _TOOLKIT_VERSIONED and 9 <= version.major <= 99 and len(version.release) > 1:
        return version.major, version.minor
    if suffixed:
        return int(suffixed.group(2)), 0
    if name in _MAJOR_VERSIONED and 9 <= version.major <= 99:
        return version.major, 0
    if cupy := _CUPY.fullmatch(name):
        return int(cupy.group(1)), 0
    return None


def newer(found: tuple[int, int], cuda: str) -> bool:
    """Whether CUDA `found` is newer than the target's `cuda` ("12.8")."""
    major, minor = (int(part) for part in cuda.split(".")[:2])
    return found > (major, minor)


def needed(packages: Iterable[tuple[str, Version]]) -> str | None:
    """The newest CUDA among `packages` (name, version): what the pod's driver must run."""
    found = [cuda for name, version in packages if (cuda := built_for(name, version))]
    if not found:
        return None
    major, minor = max(found)
    return f"{major}.{minor}"
