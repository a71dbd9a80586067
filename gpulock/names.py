"""What a name from outside may look like before any part of gpulock turns it into a path.

gpu.toml, a lock, a hub's file list and a wheel all hand gpulock strings that end up as
folder and file names in the store. Each rule here answers "what is wrong with this value"
(None when nothing is), so the reader of each input can say where the value came from:
`gpu.toml:7:1`, the lock's entry, the hub and model. The store layout checks again before it
builds a path, so a value that slipped past a reader still cannot leave the store.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection
from urllib.parse import urlsplit

from gpulock.credentials import login_problem

# Project and model names: one folder name, portable, never hidden, never `.` or `..`.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX = re.compile(r"[0-9a-f]+")
# Hub repositories as huggingface_hub's validate_repo_id accepts them, checked here without
# importing huggingface_hub (sync reads every manifest; the import costs 0.3 s).
_REPO_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A store entry: `<sha256 of the wheel, or of source and build settings>-<name>-<version>`.
_ENTRY_KEY = re.compile(r"[0-9a-f]{64}-[a-z0-9][a-z0-9-]*-[A-Za-z0-9.+!_-]+")
NAME_MAX = 128
SEGMENT_MAX = 255  # bytes: the longest file name Linux file systems take
PATH_MAX = 4096
# Folders a path may nest: Python walks a tree by recursion (os.walk and shutil.rmtree before
# 3.12, pathlib's mkdir, the farm's merge), one frame a folder, and stops at its recursion
# limit, 1,000. The deepest real trees are far shallower: torch's wheel nests 15 deep.
DEPTH_MAX = 256
# An archive member lands a few folders further down (a wheel's in its entry's `site/`, its
# bytecode in `__pycache__/`): its own nesting leaves room for them.
MEMBER_DEPTH_MAX = DEPTH_MAX - 8


def name_problem(value: str) -> str | None:
    """What is wrong with a project or model name, or None."""
    if not value:
        return "is empty"
    if len(value) > NAME_MAX:
        return f"is longer than {NAME_MAX} characters"
    if not _NAME.fullmatch(value):
        return ("must start with a letter or digit and hold only letters, digits, '.', '_' "
                "and '-'")
    return None


def path_problem(value: str) -> str | None:
    """What is wrong with a file's path inside a repository or archive, or None.

    A relative POSIX path: no leading `/`, no empty, `.` or `..` segment, no backslash, no
    control character (NUL and newline included), at most DEPTH_MAX segments.
    """
    if not value:
        return "is empty"
    if _CONTROL.search(value):
        return "holds a control character"
    if "\\" in value:
        return "holds a backslash"
    if value.startswith("/"):
        return "is absolute"
    if len(value.encode()) > PATH_MAX:
        return f"is longer than {PATH_MAX} bytes"
    if value.count("/") >= DEPTH_MAX:
        return f"is nested more than {DEPTH_MAX} folders deep"
    for segment in value.split("/"):
        if not segment:
            return "has an empty segment"
        if segment in (".", ".."):
            return f"has a {segment!r} segment"
        if len(segment.encode()) > SEGMENT_MAX:
            return f"has a segment longer than {SEGMENT_MAX} bytes"
    return None


def member_problem(name: str) -> str | None:
    """What is wrong with an archive member's name (it must stay inside its tree), or None.

    Archives name folders with a trailing `/` and may say `a/./b`: judged once normalised.
    """
    normal = posixpath.normpath(name)
    if normal.count("/") >= MEMBER_DEPTH_MAX:
        return f"is nested more than {MEMBER_DEPTH_MAX} folders deep"
    return path_problem(normal)


def segment_problem(value: str) -> str | None:
    """What is wrong with a single file or folder name (a path without `/`), or None."""
    if "/" in value:
        return "holds a '/'"
    return path_problem(value)


def hex_problem(value: str, length: int) -> str | None:
    """What is wrong with a digest or commit id of `length` lowercase hex digits, or None."""
    if len(value) != length or not _HEX.fullmatch(value):
        return f"is not {length} lowercase hexadecimal digits"
    return None


def repo_problem(value: str) -> str | None:
    """What is wrong with a hub repository id `owner/name`, or None (huggingface_hub's rules)."""
    parts = value.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) for p in parts):
        return "must name a repository as owner/name (letters, digits, '_', '.', '-')"
    if "--" in value or ".." in value or any(p.endswith((".", "-")) for p in parts):
        return "may not hold '--' or '..' or end a part with '.' or '-'"
    return None


def revision_problem(value: str) -> str | None:
    """What is wrong with a branch, tag or ref name (`main`, `v1.0`, `refs/pr/1`), or None."""
    problem = path_problem(value)
    if problem:
        return problem
    if any(segment.startswith(".") for segment in value.split("/")):
        return "has a segment that starts with '.'"
    return None


def entry_key_problem(value: str) -> str | None:
    """What is wrong with a store entry key, or None."""
    if not _ENTRY_KEY.fullmatch(value) or len(value.encode()) > SEGMENT_MAX:
        return "is not <sha256>-<name>-<version>"
    return None


def script_problem(value: str) -> str | None:
    """What is wrong with the name of a script an environment's `bin/` receives, or None.

    Beside the scripts `bin/` holds the interpreter links (`python`, `python3`,
    `python3.X`): a wheel's script with such a name would replace the environment's Python.
    """
    problem = segment_problem(value)
    if problem:
        return problem
    if re.fullmatch(r"python(\d+(\.\d+)?)?", value):
        return "is the name of the environment's interpreter"
    return None


def url_problem(url: str) -> str | None:
    """What is wrong with an http(s):// or file:// URL, or None (it must parse, port and all).

    The answer never quotes the URL: it may hold a password that could not be told apart."""
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        return "holds a space or a control character (percent-encode it: %20)"
    if problem := login_problem(url):
        return problem
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        return "cannot be read as a URL (its host or port)"
    if parts.scheme in ("http", "https") and not parts.hostname:
        return "names no host"
    return None


def git_url_problem(url: str) -> str | None:
    """What is wrong with a git repository URL (`https://h/o/r.git@v1`), or None.

    Only URLs with a scheme reach git, and nothing that git would read as an option.
    """
    if not re.match(r"(https?|ssh|git|file)://[^-]", url):
        return "must start with https://, http://, ssh://, git:// or file://"
    head, _, last = url.partition("#")[0].rpartition("/")
    revision = last.partition("@")[2]
    if problem := url_problem(f"{head}/{last.partition('@')[0]}"):  # `@rev` is no login
        return problem
    if revision.startswith("-"):
        return "names a revision that starts with '-'"
    return None


_OPTIMIZED = re.compile(r"(?:(.*)/)?__pycache__/([^/]+)\.[^/.]+\.opt-[12]\.pyc")
_BYTECODE = re.compile(r"(?:(.*)/)?__pycache__/([^/]+)\.[^/.]+(?:\.opt-[12])?\.pyc")


def optimized_bytecode(path: str, present: Collection[str]) -> bool:
    """Whether `path` is bytecode Python writes for a `-O`/`-OO` run (`__pycache__/m.<tag>.
    opt-1.pyc`) beside a source `m.py` that `present` holds: the only file Python adds to a
    tree gpulock compiled (it compiles for plain runs)."""
    return _beside_source(_OPTIMIZED.fullmatch(path), present)


def bytecode(path: str, present: Collection[str]) -> bool:
    """Whether `path` is any bytecode Python writes beside a source `present` holds (in a
    tree gpulock did not compile, such as an extracted archive whose .py files are run)."""
    return _beside_source(_BYTECODE.fullmatch(path), present)


def _beside_source(match: re.Match[str] | None, present: Collection[str]) -> bool:
    if match is None:
        return False
    folder, module = match.groups()
    return f"{folder}/{module}.py" in present if folder else f"{module}.py" in present
