"""`gpulock env`: the exports that put a synced environment on a process's path.

Paths go through the stable `current` link, so an image or shell configured once follows
every later sync. The dockerfile form is an `ENV` block for a serverless image whose Python
is the system one (PYTHONPATH mode; the environment's sitecustomize runs its .pth files).

`PATH` starts with the generation's `bin/`, whose `python`, `python3` and `pythonX.Y` link
to the interpreter the generation was built on: with `sync --install-python` that is the
CPython uv installed into the store, so an image with another Python, or none, runs the
environment from the volume. The interpreter's own `bin/` is not put on PATH: its `pip`
would install into the interpreter the whole volume shares.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable

from gpulock.env.generation import project_dir, site_packages
from gpulock.errors import GpulockError
from gpulock.places import CURRENT
from gpulock.store import Store


def exports(store: Store, project: str, python: str, model_sources: Iterable[str] = ()
            ) -> dict[str, str]:
    """The variables that put the project's current environment, and the caches its models
    are laid out in (one per kind of `model_sources`), on a process's path. `store` is the
    store as the process will see it: on a serverless worker, where the volume is mounted."""
    minor = ".".join(python.split(".")[:2])
    current = project_dir(store, project).absolute() / CURRENT
    values = {
        "PYTHONPATH": str(site_packages(current, minor)),
        "PATH": f"{current / 'bin'}:$PATH",
    }
    sources = list(model_sources)
    if sources:
        from gpulock.sources import SOURCES, source_for

        kinds = {source_for(source) for source in sources}
        for kind in SOURCES:  # in the registry's order: the hubs' caches first
            if kind in kinds:
                values.update(kind.exports(store, project))
    return values


def render(values: dict[str, str], form: str) -> str:
    """The exports in one format, every value quoted for it; `:$PATH` extends the caller's PATH.

    A value that a format cannot hold safely (a newline in a Dockerfile, say) is refused in
    one sentence rather than written so that it ends the line and starts another.
    """
    if form == "json":
        return json.dumps({k: v.removesuffix(":$PATH") for k, v in values.items()}, indent=2,
                          sort_keys=True)
    lines = []
    for key, value in values.items():
        plain, extends = value.removesuffix(":$PATH"), value.endswith(":$PATH")
        if form == "sh":
            lines.append(f"export {key}={shlex.quote(plain)}" + (':"$PATH"' if extends else ""))
            continue
        if _UNSAFE.search(plain) or (form == "dotenv" and "$" in plain):
            raise GpulockError(f"{key} would be {plain!r}, which a {form} file cannot hold "
                               "safely; use --format sh or json, or a store path without "
                               "control characters" + (" or '$'" if form == "dotenv" else ""))
        quoted = plain.replace("\\", "\\\\").replace('"', '\\"')
        if form == "dotenv":
            # docker compose and python-dotenv expand ${VAR}; a bare $PATH is not portable.
            lines.append(f'{key}="{quoted}' + (':${PATH}"' if extends else '"'))
        else:
            quoted = quoted.replace("$", "\\$")  # Dockerfile ENV expands $VAR: keep it literal
            lines.append(f'ENV {key}="{quoted}' + (':$PATH"' if extends else '"'))
    return "\n".join(lines)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
