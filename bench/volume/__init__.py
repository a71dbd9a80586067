"""A network volume for the benchmark: latencyfs (a FUSE passthrough, latencyfs.c) mounted
over a local folder, adding a fixed latency to every metadata operation and counting them.

    with Volume(work, latency_ms=2.0) as volume:
        volume.path        # the mount point: put stores, caches and venvs here
        volume.backing     # the same files without latency, to prepare steps quickly
        volume.cold()      # remount and drop the page cache: the next step starts cold
        volume.trips()     # metadata round trips so far
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from types import TracebackType

SOURCE = Path(__file__).with_name("latencyfs.c")
OPERATIONS = ("getattr", "access", "readlink", "opendir", "readdir", "open", "create",
              "mkdir", "symlink", "link", "rename", "unlink", "rmdir", "setattr", "statfs",
              "fsync")


def unavailable() -> str | None:
    """Why a volume cannot be mounted here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    for tool in ("cc", "pkg-config", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install fuse3 libfuse3-dev gcc pkg-config)"
    if subprocess.run(["pkg-config", "--exists", "fuse3"], check=False).returncode != 0:
        return "libfuse3-dev is missing (apt-get install libfuse3-dev)"
    return None


def build(work: Path) -> Path:
    """Compile latencyfs into `work`."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                           text=True, check=True).stdout.split()
    binary = work / "latencyfs"
    subprocess.run(["cc", "-O2", "-Wall", str(SOURCE), *flags, "-o", str(binary)], check=True)
    return binary


class Volume:
    """A latencyfs mount of `work/backing` at `work/volume`."""

    def __init__(self, work: Path, latency_ms: float, cache_s: float = 1.0) -> None:
        self.binary = build(work)
        self.backing, self.path = work / "backing", work / "volume"
        self.counters = work / "latencyfs.counters"
        self.latency_ms, self.cache_s = latency_ms, cache_s
        self.backing.mkdir(exist_ok=True)
        self.path.mkdir(exist_ok=True)
        self._server: subprocess.Popen[bytes] | None = None
        self._before = (0,) * len(OPERATIONS)

    def __enter__(self) -> Volume:
        self._mount()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._unmount()

    def cold(self) -> None:
        """Forget what the kernel cached of the volume: entries, attributes and pages."""
        self._unmount()
        subprocess.run(["sync"], check=True)
        with contextlib.suppress(OSError):  # not root: the remount alone forgets entries
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        self._mount()

    def trips(self) -> dict[str, int]:
        """Round trips per operation since the volume was mounted."""
        counts = struct.unpack(f"{len(OPERATIONS)}Q", self.counters.read_bytes())
        return {name: count + base for name, count, base
                in zip(OPERATIONS, counts, self._before, strict=True)}

    def _mount(self) -> None:
        self._server = subprocess.Popen(
            # max_threads: libfuse's default of 10 would cap a parallel step at 10 / latency
            # operations per second, measuring the daemon instead of the tool.
            [str(self.binary), str(self.path), "-f", "-o", "max_threads=64",
             f"--backing={self.backing}",
             f"--latency-us={round(self.latency_ms * 1000)}", f"--cache={self.cache_s}",
             f"--counters={self.counters}"], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.ismount(self.path):
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"latencyfs did not mount at {self.path}")
            time.sleep(0.05)

    def _unmount(self) -> None:
        if self._server is None:
            return
        counts = struct.unpack(f"{len(OPERATIONS)}Q", self.counters.read_bytes())
        self._before = tuple(c + b for c, b in zip(counts, self._before, strict=True))
        subprocess.run(["fusermount3", "-u", str(self.path)], check=True)
        self._server.wait()
        self._server = None
