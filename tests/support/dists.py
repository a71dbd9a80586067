"""Build real wheels and sdists for tests: valid zips with METADATA, WHEEL and RECORD."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path


def _metadata(name: str, version: str, requires: Iterable[str], extras: Mapping[str, Iterable[str]],
              requires_python: str | None, metadata_version: str = "2.1",
              dynamic: Iterable[str] = ()) -> str:
    lines = [f"Metadata-Version: {metadata_version}", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Dynamic: {d}" for d in dynamic]
    lines += [f"Requires-Dist: {r}" for r in requires]
    for extra, reqs in extras.items():
        lines.append(f"Provides-Extra: {extra}")
        for req in reqs:
            marker = f'extra == "{extra}"'
            if ";" in req:
                base, existing = req.split(";", 1)
                lines.append(f"Requires-Dist: {base.strip()}; ({existing.strip()}) and {marker}")
            else:
                lines.append(f"Requires-Dist: {req}; {marker}")
    return "\n".join(lines) + "\n\n"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def make_wheel(folder: Path, name: str, version: str, *, requires: Iterable[str] = (),
               extras: Mapping[str, Iterable[str]] | None = None, tag: str = "py3-none-any",
               files: Mapping[str, bytes] | None = None, requires_python: str | None = None,
               entry_points: str | None = None) -> Path:
    """A wheel named and tagged like a real one; `files` maps archive paths to bytes."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents: dict[str, bytes] = dict(files or {f"{dist}/__init__.py":
                                                f"VERSION = {version!r}\n".encode()})
    contents[f"{info}/METADATA"] = _metadata(name, version, requires, extras or {},
                                             requires_python).encode()
    contents[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: gpulock-tests\n"
                                 f"Root-Is-Purelib: {'true' if tag.endswith('any') else 'false'}\n"
                                 f"Tag: {tag}\n").encode()
    if entry_points:
        contents[f"{info}/entry_points.txt"] = entry_points.encode()
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in contents.items()]
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in contents.items():
            archive.writestr(member, data)
    return path


_BACKEND = '''\
"""A PEP 517 backend inside the sdist, so building it needs no download."""
import base64, hashlib, os, zipfile

NAME, VERSION = {name!r}, {version!r}
METADATA = {metadata!r}

def _dist():
    return NAME.replace("-", "_")

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    info = os.path.join(metadata_directory, f"{{_dist()}}-{{VERSION}}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as handle:
        handle.write(METADATA)
    return os.path.basename(info)

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if os.environ.get("GPULOCK_TEST_BUILD_LOG"):  # tests count builds
        with open(os.environ["GPULOCK_TEST_BUILD_LOG"], "a") as handle:
            handle.write(NAME + "\\n")
    info = f"{{_dist()}}-{{VERSION}}.dist-info"
    path = os.path.join(wheel_directory, f"{{_dist()}}-{{VERSION}}-py3-none-any.whl")
    files = {{f"{{_dist()}}/__init__.py": b"BUILT = True\\n",
             f"{{info}}/METADATA": METADATA.encode(),
             f"{{info}}/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\n"
                               b"Tag: py3-none-any\\n"}}
    record = []
    for member, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{{member}},sha256={{digest}},{{len(data)}}")
    record.append(f"{{info}}/RECORD,,")
    files[f"{{info}}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return os.path.basename(path)
'''


def source_tree(folder: Path, name: str, version: str, *, requires: Iterable[str] = ()) -> Path:
    """A buildable project folder with an in-tree backend (no network needed to build)."""
    metadata = _metadata(name, version, requires, {}, None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n')
    (folder / "backend.py").write_text(_BACKEND.format(name=name, version=version,
                                                       metadata=metadata))
    return folder


def make_sdist(folder: Path, name: str, version: str, *, requires: Iterable[str] = (),
               metadata_version: str = "2.2", dynamic: Iterable[str] = (),
               pkg_info_requires: Iterable[str] | None = None) -> Path:
    """An sdist whose PKG-INFO says `pkg_info_requires` but whose build says `requires`."""
    dist = name.replace("-", "_")
    base = f"{dist}-{version}"
    pkg_info = _metadata(name, version,
                         requires if pkg_info_requires is None else pkg_info_requires, {},
                         None, metadata_version, dynamic)
    metadata = _metadata(name, version, requires, {}, None)
    members = {
        f"{base}/PKG-INFO": pkg_info.encode(),
        f"{base}/pyproject.toml": (b'[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                   b'backend-path = ["."]\n'),
        f"{base}/backend.py": _BACKEND.format(name=name, version=version,
                                              metadata=metadata).encode(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return path
