"""The store's layout: every path under `<store>/v1/`, and the one place names become paths.

Each method takes names that came from outside (a project or model name, a digest, a
commit, a repository id, a file's path in a repository) and returns the path they name,
after checking them against gpulock.names. A value that breaks a rule never becomes a path:
it is refused with an UnsafeNameError, whatever reader let it through.

Writers never follow a link into the store's own folders: `folder()` and `ready()` create
each folder from `v1/` down and check that every one of them is a real folder, so a
symbolic link planted at `tmp/` or `hf/models--x/blobs` is refused instead of written
through.

    pkgs/<sha256>-<name>-<version>/     one unpacked wheel (see store.py)
    envs/<project>/gen-<N>/, current    generations (see generation.py)
    blobs/sha256/<aa>/<rest>            model and data files; blobs/xxh3/ their xxh3;
    blobs/git-sha1/<aa>/<rest>          links indexing small hub files by git blob id
    hf/<kind>s--<owner>--<name>/        the Hugging Face cache view (snapshots by commit)
    modelscope/<project>/models/<o>--<n>/  each project's ModelScope cache view (a revision's
                                        files can differ between two projects' locks), and
    modelscope/<project>/<o>/<n>/       the same files where modelscope 1.x looks
    files/<project>/<model>/            plain downloads and extracted archives
    trees/<sha256>/                     archives unpacked once
    python/cpython-<X.Y.Z>-linux-<arch>-gnu/  CPython interpreters uv installed (see pythons.py),
                                        shared by every project's generations
    roots/models/<project>.json         GC roots: each project's synced models
    roots/tmp/<writer>.json             GC roots of running syncs
    roots/gc/<writer>                   a running gc, while it chooses what goes
    tmp/                                work in progress, named by its writer
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path

from gpulock import places
from gpulock.errors import GpulockError
from gpulock.locations import STORE_FOLDERS
from gpulock.names import (
    entry_key_problem,
    hex_problem,
    name_problem,
    path_problem,
    repo_problem,
    revision_problem,
    segment_problem,
)

HUB_KINDS = ("model", "dataset")
ARCHES = ("x86_64", "aarch64")  # the architectures of gpu.toml's platforms


class UnsafeNameError(GpulockError):
    """A name from outside would have made a path that leaves its place in the store."""


def _checked(what: str, value: object, problem: str | None) -> None:
    if problem:
        raise UnsafeNameError(f"refused {value!r} as {what}: it {problem}; nothing was "
                              "written")


class Layout:
    """Paths of one store's `v1/` folder."""

    FIXED = STORE_FOLDERS

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pkgs = base / "pkgs"
        self.envs = base / places.ENVS
        self.tmp = base / "tmp"
        self.downloads = base / "tmp" / "downloads"
        self.model_parts = base / "tmp" / "models"
        self.blobs = base / "blobs" / "sha256"
        self.git_blobs = base / "blobs" / "git-sha1"
        self.hf = base / "hf"
        self.modelscope = base / "modelscope"
        self.files = base / "files"
        self.trees = base / "trees"
        self.python = base / places.PYTHON
        self.model_roots = base / places.ROOTS / places.MODEL_ROOTS
        self.tmp_roots = base / places.ROOTS / "tmp"
        self.collectors = base / places.ROOTS / "gc"
        self._real: set[Path] = set()

    # -- named places ------------------------------------------------------------------------

    def entry(self, key: str) -> Path:
        """`pkgs/<sha256>-<name>-<version>`."""
        _checked("a store entry key", key, entry_key_problem(key))
        return self.pkgs / key

    def env(self, project: str) -> Path:
        """`envs/<project>`: the project's generations and its `current` link."""
        _checked("a project name", project, name_problem(project))
        return self.envs / project

    def blob(self, sha256: str) -> Path:
        _checked("a sha256", sha256, hex_problem(sha256, 64))
        return self.blobs / sha256[:2] / sha256[2:]

    def fast_record(self, sha256: str) -> Path:
        """`blobs/xxh3/<aa>/<rest>` holds the xxh3_128 of the blob `blobs/sha256/<aa>/<rest>`."""
        _checked("a sha256", sha256, hex_problem(sha256, 64))
        return self.base / "blobs" / "xxh3" / sha256[:2] / sha256[2:]

    def git_index(self, git_sha1: str) -> Path:
        _checked("a git blob id", git_sha1, hex_problem(git_sha1, 40))
        return self.git_blobs / git_sha1[:2] / git_sha1[2:]

    def hf_repo(self, kind: str, repo_id: str) -> Path:
        """`hf/models--<owner>--<name>` (or `datasets--...`), as huggingface_hub names it."""
        _checked("a Hugging Face repository kind", kind,
                 None if kind in HUB_KINDS else "is not model or dataset")
        _checked("a repository id", repo_id, repo_problem(repo_id))
        return self.hf / (f"{kind}s--" + repo_id.replace("/", "--"))

    @staticmethod
    def commit_folder(folder: Path, commit: str) -> Path:
        """`<folder>/<commit>` for a 40-digit commit id (snapshots of a Hugging Face repo)."""
        _checked("a commit id", commit, hex_problem(commit, 40))
        return folder / commit

    @staticmethod
    def ref(repo: Path, revision: str) -> Path:
        """`<repo>/refs/<revision>`: a branch or tag name, possibly with `/` (refs/pr/1)."""
        _checked("a revision", revision, revision_problem(revision))
        return repo / "refs" / revision

    def file_cache(self, project: str) -> Path:
        """`files/<project>`: the project's models that are plain files ($GPULOCK_FILES)."""
        _checked("a project name", project, name_problem(project))
        return self.files / project

    def ms_cache(self, project: str) -> Path:
        """`modelscope/<project>`: the project's MODELSCOPE_CACHE."""
        _checked("a project name", project, name_problem(project))
        return self.modelscope / project

    def ms_legacy_repos(self, project: str, repo_id: str) -> list[Path]:
        """Where modelscope 1.x before modelscope-hub looks for a repository under
        MODELSCOPE_CACHE (no revision: one per project): `<owner>/<name>` up to 1.13,
        `<owner>/<name with '.' as '___'>` from 1.14, and the same below `hub/` from the
        release that made `hub/` the model cache root (1.20 reads it)."""
        _checked("a repository id", repo_id, repo_problem(repo_id))
        cache = self.ms_cache(project)
        return [cache.joinpath(*parts) for parts in self.ms_legacy_names(repo_id)]

    @staticmethod
    def ms_legacy_names(repo_id: str) -> list[tuple[str, ...]]:
        """The relative parts of `ms_legacy_repos`, for gc to tell live folders from dead."""
        owner, name = repo_id.split("/")
        masked = name.replace(".", "___")
        return list(dict.fromkeys([(owner, name), (owner, masked), ("hub", owner, masked)]))

    def ms_repo(self, project: str, repo_id: str) -> Path:
        """`modelscope/<project>/models/<owner>--<name>`, as modelscope-hub names it."""
        _checked("a repository id", repo_id, repo_problem(repo_id))
        return self.ms_cache(project) / "models" / repo_id.replace("/", "--")

    @staticmethod
    def ms_snapshot(repo: Path, revision: str) -> Path:
        _checked("a ModelScope revision", revision,
                 segment_problem(revision) or revision_problem(revision))
        return repo / "snapshots" / revision

    def file_view(self, project: str, model: str) -> Path:
        """`files/<project>/<model>`: a plain download's folder, or the link to its tree."""
        _checked("a model name", model, name_problem(model))
        return self.file_cache(project) / model

    def tree(self, sha256: str) -> Path:
        _checked("a sha256", sha256, hex_problem(sha256, 64))
        return self.trees / sha256

    def tree_seal(self, sha256: str) -> Path:
        """`trees/<sha256>.seal.json`: what the extracted tree held when it was made."""
        _checked("a sha256", sha256, hex_problem(sha256, 64))
        return self.trees / f"{sha256}.seal.json"

    def interpreter(self, version: str, arch: str) -> Path:
        """`python/cpython-<X.Y.Z>-linux-<arch>-gnu/bin/python<X.Y>`: where uv installs that
        CPython when its install folder is `python/` (uv's own naming, kept as uv writes it)."""
        _checked("a CPython version", version,
                 None if re.fullmatch(r"3\.\d{1,2}\.\d{1,3}", version)
                 else "is not a full CPython version like 3.10.13")
        _checked("an architecture", arch,
                 None if arch in ARCHES else f"is not one of {', '.join(ARCHES)}")
        minor = ".".join(version.split(".")[:2])
        return (self.python / f"cpython-{version}-linux-{arch}-gnu" / "bin"
                / f"python{minor}")

    def model_root(self, project: str) -> Path:
        _checked("a project name", project, name_problem(project))
        return self.model_roots / f"{project}.json"

    def download_folder(self, sha256: str) -> Path:
        _checked("a sha256", sha256, hex_problem(sha256, 64))
        return self.downloads / sha256

    @staticmethod
    def inside(folder: Path, relative: str) -> Path:
        """`folder/relative` for a repository or archive path that may not leave `folder`."""
        _checked("a file path", relative, path_problem(relative))
        return folder.joinpath(*relative.split("/"))

    @staticmethod
    def named(folder: Path, name: str, what: str) -> Path:
        """`folder/name` for one file name (a wheel's filename, a script)."""
        _checked(what, name, segment_problem(name))
        return folder / name

    # -- real folders --------------------------------------------------------------------

    def folder(self, path: Path) -> Path:
        """Create `path` inside the store as needed; every folder from `v1/` down must be real.

        Folders are made one level at a time and each is checked with lstat before the next
        is made inside it, so nothing is ever created through a planted symbolic link.
        """
        if path in self._real:
            return path
        try:
            relative = path.relative_to(self.base)
        except ValueError:
            raise UnsafeNameError(f"refused {path} as a folder of the store {self.base}: it "
                                  "is outside it") from None
        self.base.parent.mkdir(parents=True, exist_ok=True)
        current = self.base
        for part in ("", *relative.parts):
            current = current / part if part else current
            if current in self._real:
                continue
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
            self._require_real(current)
            self._real.add(current)
        return path

    def present(self, path: Path) -> bool:
        """Whether `path` exists in the store, reached only through real folders: what a sync
        may reuse. A link planted on the way (at `pkgs/<key>`, a blob's shard) is refused,
        never read through: what it leads to was never verified."""
        relative = path.relative_to(self.base)
        current = self.base
        for part in ("", *relative.parts):
            current = current / part if part else current
            if current in self._real:
                continue
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                return False
            except NotADirectoryError:  # a file where a folder belongs, one level up
                mode = stat.S_IFREG
                current = current.parent
            if stat.S_ISLNK(mode) or (current != path and not stat.S_ISDIR(mode)):
                what = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
                raise UnsafeNameError(f"the store path {current} is {what}, which gpulock did "
                                      "not make; nothing was read through it: run 'gpulock "
                                      "verify --repair'")
            if stat.S_ISDIR(mode) and current != path:
                self._real.add(current)
        return True

    def ready(self, path: Path) -> Path:
        """`path`, once its parent is a real folder of the store (see `folder`)."""
        self.folder(path.parent)
        return path

    def check(self) -> None:
        """Refuse a store whose own folders were replaced by links or files."""
        for name in ("", *self.FIXED):
            path = self.base / name if name else self.base
            if os.path.lexists(path):
                self._require_real(path)

    @staticmethod
    def _require_real(path: Path) -> None:
        mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
            raise UnsafeNameError(f"the store folder {path} is {what}, which gpulock did not "
                                  "make; nothing was written through it: remove it and retry")
