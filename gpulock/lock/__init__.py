"""Locking: gpu.toml in, a fully pinned PEP 751 lock out.

    target.py    the pod's platform: marker environment, wheel tags, CUDA
    index.py     PEP 503/691 pages and file:// folders  ->  finder.py  candidates per package
    metadata.py  core metadata without downloading wheels  ->  resolve.py  resolvelib's seam
    vcs.py       git requirements pinned to commits
    locking.py   `gpulock lock`: the wiring, previous pins as preferences, model pins
    lockfile.py  the PEP 751 file, both directions, every entry checked when read
    diff.py      what changed between two locks

Modules are imported by what uses them: a no-op sync reads lockfile.py and nothing else.
"""
