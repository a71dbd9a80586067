"""`gpulock env`: the exports that put a synced environment on a process's path.

Paths go through the stable `current` link, so an image or shell configured once follows
every later sync. The dockerfile form is an `ENV` block for a serverless image whose Python
is the system one (PYTHONPATH mode; the environment's sitecustomize runs its .pth files).
"""

from __future__ import annotations

import json
import shlex

from gpulock.generation import project_dir, site_packages
from gpulock.store import Store


def exports(store: Store, project: str, python: str, hub_models: bool = False,
            modelscope_models: bool = False) -> dict[str, str]:
    minor = ".".join(python.split(".")[:2])
    current = project_dir(store, project).absolute() / "current"
    values = {
        "PYTHONPATH": str(site_packages(current, minor)),
        "PATH": f"{current / 'bin'}:$PATH",
    }
    if hub_models:
        # huggingface_hub reads HF_HUB_OFFLINE at import: the pinned snapshots are complete.
        values["HF_HUB_CACHE"] = str((store.base / "hf").absolute())
        values["HF_HUB_OFFLINE"] = "1"
    if modelscope_models:
        # ModelScope loads offline with snapshot_download(repo, local_files_only=True).
        values["MODELSCOPE_CACHE"] = str((store.base / "modelscope").absolute())
    return values


def render(values: dict[str, str], form: str) -> str:
    if form == "json":
        return json.dumps({k: v.replace(":$PATH", "") if k == "PATH" else v
                           for k, v in values.items()}, indent=2, sort_keys=True)
    lines = []
    for key, value in values.items():
        if form == "sh":
            quoted = shlex.quote(value.replace(":$PATH", ""))
            lines.append(f"export {key}={quoted}:\"$PATH\"" if value.endswith(":$PATH")
                         else f"export {key}={quoted}")
        elif form == "dotenv":
            # docker compose and python-dotenv expand ${VAR}; a bare $PATH is not portable.
            lines.append(f"{key}={value.replace(':$PATH', ':${PATH}')}")
        else:
            lines.append(f'ENV {key}="{value}"')
    return "\n".join(lines)
