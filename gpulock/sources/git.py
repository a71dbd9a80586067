"""`git+https://host/owner/repo.git@rev` (and `git+file://`): a model repository served
over git, as Hugging Face and ModelScope both do, pinned to a commit with every file's
sha256. Git LFS pointers are refused unless `git lfs` is installed to resolve them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from gpulock.errors import GpulockError
from gpulock.lock.vcs import GitSource, checkout, resolve
from gpulock.manifest import Model
from gpulock.models import ModelFile, PinnedModel
from gpulock.sources import pinned_file, select
from gpulock.store import Store

_LFS = b"version https://git-lfs.github.com/spec/v1"


class GitModelSource:
    """A repository at a commit."""

    def problem(self, source: str) -> str | None:
        from gpulock.lock.vcs import split_url
        from gpulock.store.names import git_url_problem, path_problem, revision_problem

        repo, revision, subdirectory = split_url(source)
        if subdirectory is not None and (problem := path_problem(subdirectory)):
            return f"has a subdirectory {subdirectory!r} that {problem}"
        if source.rstrip().endswith("@"):
            return "ends with '@' but names no revision (git+URL@REV)"
        if revision is not None and (problem := revision_problem(revision)):
            return f"has a revision {revision!r} that {problem}"
        return git_url_problem(repo)

    def pin(self, model: Model, store: Store) -> PinnedModel:
        url = model.source if not model.revision else \
            f"{model.source.rsplit('@', 1)[0]}@{model.revision}"
        source = resolve(url)
        tree = self._tree(model, source)
        paths = select(model, _files(model, tree))
        files = tuple(pinned_file(path, tree / path) for path in paths)
        return PinnedModel(name=model.name, source=model.source, revision=model.revision,
                           commit=source.commit, include=model.include, exclude=model.exclude,
                           files=files, extract=model.extract)

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, target: Path) -> None:
        from gpulock.lock.vcs import split_url

        repo, revision, subdirectory = split_url(model.source)
        if not model.commit:
            raise GpulockError(f"model '{model.name}': its pin has no commit")
        tree = self._tree(model, GitSource(repo, revision, model.commit, subdirectory))
        shutil.copyfile(tree / file.path, target, follow_symlinks=False)

    def _tree(self, model: Model | PinnedModel, source: GitSource) -> Path:
        """The commit's working tree (cloned once into the user's cache), LFS resolved."""
        from gpulock.cache import Cache

        tree = checkout(source, Cache().root)
        if _has_pointers(tree):
            if shutil.which("git-lfs") is None:
                raise GpulockError(f"model '{model.name}': {source.url} keeps files in Git "
                                   "LFS, and git-lfs is not installed to fetch them "
                                   "(https://git-lfs.com, or apt-get install git-lfs)")
            result = subprocess.run(["git", "lfs", "pull"], cwd=tree, capture_output=True,
                                    text=True, check=False)
            if result.returncode != 0:
                raise GpulockError(f"model '{model.name}': git lfs pull failed: "
                                   f"{result.stderr.strip().splitlines()[-1:]}")
        return tree


def _files(model: Model, tree: Path) -> list[str]:
    """The repository's files at the commit (git's own listing, so .git and untracked
    files never count); a link is refused: its target is not the repository's bytes."""
    listed = subprocess.run(["git", "ls-files", "-s", "-z"], cwd=tree, capture_output=True,
                            check=True).stdout.decode(errors="surrogateescape")
    paths = []
    for line in filter(None, listed.split("\0")):
        mode, _, path = line.partition("\t")
        if mode.startswith("120000"):
            raise GpulockError(f"model '{model.name}': {path} is a symbolic link in the "
                               "repository; gpulock pins regular files only")
        if not mode.startswith("160000"):  # a submodule is another repository
            paths.append(path)
    return paths


def _has_pointers(tree: Path) -> bool:
    for folder, dirs, names in os.walk(tree):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink() and path.stat().st_size < 1024:
                with path.open("rb") as handle:
                    if handle.read(len(_LFS)) == _LFS:
                        return True
    return False
