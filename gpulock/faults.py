"""Named points where a test makes gpulock crash, fill the disk or pause, like a real fault.

`GPULOCK_FAULT=ACTION:POINT` (comma-separated for several) arms one point:
`kill` sends SIGKILL to this process, `enospc` raises a full-disk OSError, `pause` writes
`<GPULOCK_FAULT_DIR>/paused-POINT` and waits for `<GPULOCK_FAULT_DIR>/resume-POINT`.
Points: `download` (after the first chunk of a file is on disk), `unpack` (midway through
writing an entry), `farm` (a generation built, not yet published), `switch` (published,
not yet current), `plan` (temporary roots written, before the store is read),
`model` (after the first chunk of a model file). Unset, a point costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path


def point(name: str, path: Path | str = "") -> None:
    armed = os.environ.get("GPULOCK_FAULT")
    if not armed:
        return
    for fault in armed.split(","):
        action, _, where = fault.partition(":")
        if where != name:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) or None)
        elif action == "pause":
            folder = Path(os.environ["GPULOCK_FAULT_DIR"])
            (folder / f"paused-{name}").touch()
            while not (folder / f"resume-{name}").exists():
                time.sleep(0.02)
