"""gpulock vs uv, side by side, in one run, on the same manifest.

    .venv/bin/python bench/bench.py [--manifest gpu.toml.example] [--runs 3]

Each step runs as a child process; wall time is the median of --runs runs, peak memory
is the child's maximum RSS (wait4). Cold steps start from empty caches. uv is given the
same requirements (the manifest's groups that uv can express: no_deps groups and non-PyPI
group indexes are left out of both sides) and the same target (x86_64-manylinux_2_28,
the manifest's Python). Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from uv import find_uv_bin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpulock.interpreter import find_python  # noqa: E402
from gpulock.manifest import DEFAULT_INDEX, load  # noqa: E402


@dataclass
class Sample:
    seconds: float
    peak_mib: float


def measure(command: list[str], env: dict[str, str], cwd: Path) -> Sample:
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(command)}\n{stderr}")
    return Sample(elapsed, usage.ru_maxrss / 1024)


def repeat(runs: int, prepare: Callable[[], None], command: list[str], env: dict[str, str],
           cwd: Path) -> Sample:
    samples = []
    for _ in range(runs):
        prepare()
        samples.append(measure(command, env, cwd))
    return Sample(statistics.median(s.seconds for s in samples),
                  max(s.peak_mib for s in samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", default=str(ROOT / "gpu.toml.example"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    manifest = load(Path(args.manifest))
    groups = [g for g in manifest.groups if not g.no_deps and g.index in (None, DEFAULT_INDEX)]
    requirements = [str(r) for g in groups for r in g.packages]
    work = Path(tempfile.mkdtemp(prefix="gpulock-bench-"))
    project = manifest.project
    toml = (f'[project]\nname = "bench"\npython = "{project.python}"\n'
            f'glibc = "{project.glibc}"\n'
            + (f'cuda = "{project.cuda}"\n' if project.cuda else "")
            + "[groups.all]\npackages = [" + ", ".join(f'"{r}"' for r in requirements) + "]\n")
    (work / "gpu.toml").write_text(toml)
    (work / "requirements.in").write_text("\n".join(requirements) + "\n")
    gp_cache, uv_cache = work / "gpulock-cache", work / "uv-cache"
    # Never let uv fetch an interpreter (that measures GitHub, not resolution): hand it the
    # target's CPython when this machine has one, as gpulock finds it.
    env = {**os.environ, "GPULOCK_CACHE": str(gp_cache), "UV_CACHE_DIR": str(uv_cache),
           "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never"}
    python = find_python(project.python)
    gpulock = [sys.executable, "-m", "gpulock", "lock", "--manifest", str(work / "gpu.toml")]
    uv = [find_uv_bin(), "pip", "compile", str(work / "requirements.in"), "-o",
          str(work / "requirements.txt"), "--python-platform",
          f"x86_64-manylinux_{project.glibc.replace('.', '_')}", "--python-version",
          project.python, "--index-url", DEFAULT_INDEX, "-q",
          *(["--python", python] if python else [])]

    def clean(*paths: Path) -> Callable[[], None]:
        def run() -> None:
            for path in paths:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        return run

    def nothing() -> None:
        return None

    lock_file, uv_out = work / "pylock.gpu.toml", work / "requirements.txt"
    env_py = {**env, "PYTHONPATH": str(ROOT)}
    rows = [
        ("lock, cold cache",
         repeat(args.runs, clean(gp_cache, lock_file), gpulock, env_py, work),
         repeat(args.runs, clean(uv_cache, uv_out), uv, env, work)),
        ("lock, warm cache, manifest unchanged",
         repeat(args.runs, nothing, gpulock, env_py, work),
         repeat(args.runs, nothing, uv, env, work)),
        ("lock, warm cache, re-resolve (--upgrade)",
         repeat(args.runs, nothing, [*gpulock, "--upgrade"], env_py, work),
         repeat(args.runs, nothing, [*uv, "--upgrade"], env, work)),
    ]
    uv_version = subprocess.run([find_uv_bin(), "--version"], capture_output=True,
                                text=True).stdout.strip()
    print(f"# {len(requirements)} requirements from {Path(args.manifest).name} "
          f"({len(lock_file.read_text().split('[[packages]]')) - 1} pinned), target "
          f"CPython {project.python} manylinux_{project.glibc} x86_64")
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{uv_version}, median of {args.runs} runs")
    print()
    print("| step | gpulock | uv | ratio (time) | gpulock peak MiB | uv peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours.seconds:.2f}s | {theirs.seconds:.2f}s | "
              f"{ours.seconds / theirs.seconds:.2f}x | {ours.peak_mib:.0f} | "
              f"{theirs.peak_mib:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
