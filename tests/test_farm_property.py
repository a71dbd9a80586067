"""The farm shows exactly what a plain copy of the same wheels would."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulock.env.farm import build
from gpulock.store import Entry, Store
from tests.support.dists import make_wheel

segments = st.sampled_from(["a", "b", "pkg", "nvidia", "lib", "sub"])
filenames = st.sampled_from(["__init__.py", "x.py", "data.bin", "z.txt"])
paths = st.builds(lambda dirs, name: "/".join([*dirs, name]),
                  st.lists(segments, min_size=1, max_size=3), filenames)


@st.composite
def wheel_sets(draw: st.DrawFn) -> list[dict[str, bytes]]:
    count = draw(st.integers(1, 4))
    chosen = draw(st.lists(paths, min_size=1, max_size=12, unique=True))
    # No path may be both a file and a folder.
    files = [p for p in chosen if not any(q.startswith(p + "/") for q in chosen)]
    contents = {p: draw(st.binary(max_size=64)) for p in files}
    wheels: list[dict[str, bytes]] = [{} for _ in range(count)]
    for path in files:
        owners = draw(st.sets(st.integers(0, count - 1), min_size=1))
        for owner in owners:  # a shared path always has equal bytes, as the farm requires
            wheels[owner][path] = contents[path]
    return [w for w in wheels if w]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(wheel_sets(), st.data())
def test_farm_shows_the_same_files_as_a_plain_copy(tmp_path_factory, wheels, data):
    root = tmp_path_factory.mktemp("farm")
    store = Store(root / "store").open()
    entries = []
    plain = root / "plain"
    for index, files in enumerate(wheels):
        wheel = make_wheel(root / "wheels", f"w{index}", "1.0", files=files)
        entry = store.add_wheel(wheel, f"{index:064x}-w{index}-1.0", f"w{index}", "1.0", None)
        # Pretend ELF files forced some folders to be real: the view must not change.
        folders = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
        real = data.draw(st.sets(st.sampled_from(folders))) if folders else set()
        entries.append(Entry(entry.key, entry.path, entry.name, entry.version, entry.scripts,
                             frozenset(real)))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(plain)
    farm = root / "farm"
    build(farm, entries)
    assert view(farm) == view(plain)


def view(folder: Path) -> dict[str, bytes]:
    seen = {}
    for current, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(current) / name
            relative = path.relative_to(folder).as_posix()
            # The farm's .dist-info has no RECORD and an INSTALLER of its own: compare code.
            if ".dist-info/" not in relative:
                seen[relative] = path.read_bytes()
    return seen
