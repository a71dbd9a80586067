"""What changes between two locks, in words: packages and models, one line each.

Used by `lock` (what re-locking moved), `sync` (what the new generation changes against the
current one) and `gpulock diff OLD NEW`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

from packaging.version import Version

from gpulock.pins import Lock

T = TypeVar("T")


def _paired(before: Mapping[str, T], after: Mapping[str, T]
            ) -> Iterator[tuple[str, T | None, T | None]]:
    for name in sorted(before.keys() | after.keys()):
        yield name, before.get(name), after.get(name)


def diff(old: Lock | None, new: Lock) -> list[str]:
    lines = []
    for name, a, b in _paired({p.name: p for p in (old.packages if old else ())},
                              {p.name: p for p in new.packages}):
        if a is None and b is not None:
            lines.append(f"+ {name} {b.version}")
        elif b is None and a is not None:
            lines.append(f"- {name} {a.version}")
        elif a is not None and b is not None:
            if a.version != b.version:
                verb = "upgrade" if Version(b.version) > Version(a.version) else "downgrade"
                lines.append(f"~ {name} {a.version} -> {b.version} ({verb})")
            elif a.artifact != b.artifact:
                lines.append(f"~ {name} {b.version} (rebuilt: {a.artifact} -> {b.artifact})")
    for name, m, n in _paired({m.name: m for m in (old.models if old else ())},
                              {m.name: m for m in new.models}):
        if n is None and m is not None:
            lines.append(f"- model {name}")
        elif n is not None and m is None:
            lines.append(f"+ model {name} {n.source}@{(n.commit or '')[:12]} "
                         f"({len(n.files)} files, {n.size / 2**20:.1f} MiB)")
        elif m is not None and n is not None and m.files != n.files:
            ours = {f.path: f for f in m.files}
            theirs = {f.path: f for f in n.files}
            added = len(theirs.keys() - ours.keys())
            removed = len(ours.keys() - theirs.keys())
            changed = sum(1 for p in ours.keys() & theirs.keys() if ours[p] != theirs[p])
            lines.append(f"~ model {name} {(m.commit or '')[:12]} -> {(n.commit or '')[:12]} "
                         f"({added} added, {removed} removed, {changed} changed)")
    return lines
