"""`git+https://host/owner/repo.git@rev` (and `git+file://`): a model repository served
over git, as Hugging Face and ModelScope both do, pinned to a commit with every file's
sha256. Git LFS pointers are refused unless `git lfs` is installed to resolve them.

Every git command goes through `gpulock.lock.vcs.run_git` (the repository's own config, hooks
and look-alike repositories are never read), and a file's bytes are read from the checkout
only as a regular file reached through real folders (`gpulock.safeopen`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gpulock.credentials import redact
from gpulock.errors import GpulockError
from gpulock.pins import ModelFile, ModelRequest, PinnedModel
from gpulock.sources.files import FileSource, copy_below, pinned_below, select

if TYPE_CHECKING:
    from gpulock.lock.vcs import GitSource
    from gpulock.store import Store

_LFS = b"version https://git-lfs.github.com/spec/v1"


class GitModelSource(FileSource):
    """A repository at a commit."""

    prefixes = ("git+https://", "git+http://", "git+file://")
    named = "git+https://, git+file://"
    commits = True

    def problem(self, source: str) -> str | None:
        """What is wrong with the repository URL, its revision or subdirectory, or None."""
        from gpulock.lock.vcs import split_url
        from gpulock.names import git_url_problem, path_problem, revision_problem

        repo, revision, subdirectory = split_url(source)
        if subdirectory is not None and (problem := path_problem(subdirectory)):
            return f"has a subdirectory {subdirectory!r} that {problem}"
        if source.rstrip().endswith("@"):
            return "ends with '@' but names no revision (git+URL@REV)"
        if revision is not None and (problem := revision_problem(revision)):
            return f"has a revision {revision!r} that {problem}"
        return git_url_problem(repo)

    def pin(self, model: ModelRequest, store: Store) -> PinnedModel:
        """The commit the revision names now, and every chosen file's sha256."""
        url = model.source if not model.revision else \
            f"{model.source.rsplit('@', 1)[0]}@{model.revision}"
        try:
            from gpulock.lock.vcs import resolve

            source = resolve(url)
        except GpulockError as exc:
            raise GpulockError(f"model '{model.name}': {exc}") from None
        root, tree = _checkout(model, source)
        paths = select(model, _files(model, root, source.subdirectory))
        _resolve_lfs(model, source, root, [_in_root(source, path) for path in paths])
        where = f"{redact(source.url)} at {source.commit}"
        files = tuple(pinned_below(model, tree, path, where) for path in paths)
        return PinnedModel(name=model.name, source=model.source, revision=model.revision,
                           commit=source.commit, include=model.include, exclude=model.exclude,
                           files=files, extract=model.extract)

    def write(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
        """The file from a checkout of the pinned commit (LFS pointers resolved)."""
        from gpulock.lock.vcs import GitSource, split_url

        repo, revision, subdirectory = split_url(model.source)
        if not model.commit:
            raise GpulockError(f"model '{model.name}': its pin has no commit")
        source = GitSource(repo, revision, model.commit, subdirectory)
        root, tree = _checkout(model, source)
        if any(part.lower() == ".git" for part in file.path.split("/")):
            raise GpulockError(f"model '{model.name}': {file.path} is inside '.git', git's own "
                               "folder, not a file of the repository")
        if _is_pointer(root, _in_root(source, file.path)):  # the first of the model's
            _resolve_lfs(model, source, root, [_in_root(source, f.path) for f in model.files])
        copy_below(model, tree, file, target, f"{redact(repo)} at {model.commit}")


def _checkout(model: ModelRequest | PinnedModel, source: GitSource) -> tuple[Path, Path]:
    """The commit's checkout (cloned once into the user's cache) and the model's folder in
    it; an error names the model."""
    from gpulock.cache import Cache
    from gpulock.lock.vcs import checkout_root, subdirectory_of

    try:
        root = checkout_root(source, Cache().root)
        return root, subdirectory_of(root, source)
    except GpulockError as exc:
        raise GpulockError(f"model '{model.name}': {exc}") from None


def _in_root(source: GitSource, path: str) -> str:
    """A model file's path relative to the repository's root (its subdirectory's, given)."""
    return f"{source.subdirectory}/{path}" if source.subdirectory else path


def _resolve_lfs(model: ModelRequest | PinnedModel, source: GitSource, root: Path,
                 paths: list[str]) -> None:
    """Replace the Git LFS pointers among the model's `paths` (relative to the checkout's
    root) by their files: `git lfs pull` of those files only (never the repository's other
    weights), one at a time per checkout, from the LFS endpoint of the repository's own
    URL: a `.lfsconfig` in the repository may name another (`lfs.url`, `remote.*.lfsurl`)
    or leave files out (`lfs.fetchexclude`), and git config outranks it, so git-lfs never
    takes the credentials, or the request, elsewhere."""
    if not any(_is_pointer(root, path) for path in paths):
        return
    import shutil

    if shutil.which("git-lfs") is None:
        raise GpulockError(f"model '{model.name}': {redact(source.url)} keeps files in Git "
                           "LFS, and git-lfs is not installed to fetch them "
                           "(https://git-lfs.com, or apt-get install git-lfs)")
    from gpulock.http import MIN_RATE
    from gpulock.lock.vcs import held, run_git

    settings = {"lfs.url": lfs_endpoint(source.url), "lfs.fetchinclude": "",
                "lfs.fetchexclude": ""}
    with held(root):  # another thread or process may have pulled them meanwhile
        pointers = [path for path in paths if _is_pointer(root, path)]
        if not pointers:
            return
        # A server that drips the bytes stays above lfs.activitytimeout: the whole pull
        # gets the time its files take at 1 KiB/s, the slowest rate any download may keep.
        size = sum(_pointer_size(root, path) or 0 for path in pointers)
        try:
            run_git("lfs", "pull", *_include(pointers), repo=root, url=source.url,
                    settings=settings, slack=size / MIN_RATE)
        except GpulockError as exc:
            raise GpulockError(f"model '{model.name}': {exc}") from None
    left = [path for path in pointers if _is_pointer(root, path)]
    if left:
        raise GpulockError(f"model '{model.name}': git lfs pull left {left[0]} of "
                           f"{redact(source.url)} a Git LFS pointer, not the file")


# git-lfs reads `--include` as comma-separated wildmatch patterns; a path with none of these
# characters is a pattern that matches itself (and same-named files below other folders).
_NOT_LITERAL = re.compile(r"[,*?\[\]\\!#]|^\s|\s$")


def _include(paths: list[str]) -> list[str]:
    """git lfs pull's `--include` naming exactly `paths`, or nothing (every LFS file of the
    commit) when a path is no literal pattern or the list would be too long an argument."""
    joined = ",".join(paths)
    if any(_NOT_LITERAL.search(path) for path in paths) or len(joined) > 64 * 1024:
        return []
    return [f"--include={joined}"]


def lfs_endpoint(url: str) -> str:
    """The Git LFS API that git-lfs derives from a clone URL (`<repo>.git/info/lfs`; a
    file:// repository is its own endpoint)."""
    url = url.rstrip("/")
    if urlsplit(url).scheme == "file":
        return url
    return f"{url}/info/lfs" if url.endswith(".git") else f"{url}.git/info/lfs"


def _files(model: ModelRequest, root: Path, subdirectory: str | None) -> list[str]:
    """The repository's files at the commit below `subdirectory`, relative to it (git's own
    listing, so .git and untracked files never count); a link is refused: its target is not
    the repository's bytes."""
    from gpulock.lock.vcs import run_git

    prefix = f"{subdirectory}/" if subdirectory else ""
    listed = run_git("ls-files", "-s", "-z", "--full-name", "--", subdirectory or ".",
                     repo=root)
    paths = []
    for line in filter(None, listed.split("\0")):
        mode, _, path = line.partition("\t")
        if not path.startswith(prefix):
            continue
        if mode.startswith("120000"):
            raise GpulockError(f"model '{model.name}': {path} is a symbolic link in the "
                               "repository; gpulock pins regular files only")
        if not mode.startswith("160000"):  # a submodule is another repository
            paths.append(path[len(prefix):])
    return paths


def _is_pointer(root: Path, path: str) -> bool:
    """Whether the checkout's file at `path` holds a Git LFS pointer (a small file that
    starts with the spec line); a link or a missing file is left to the reader to refuse."""
    return _pointer_size(root, path) is not None


def _pointer_size(root: Path, path: str) -> int | None:
    """The size a Git LFS pointer at `path` declares (0 where it declares none that reads),
    or None where the file is not a pointer."""
    from gpulock.safeopen import Unsafe, open_regular

    try:
        with open_regular(root, path) as handle:
            if os.fstat(handle.fileno()).st_size >= 1024:
                return None
            text = handle.read(1024)
    except (Unsafe, OSError):
        return None
    if not text.startswith(_LFS):
        return None
    sizes = re.findall(rb"^size ([0-9]{1,15})$", text, re.M)
    return int(sizes[0]) if sizes else 0
