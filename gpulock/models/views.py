"""Model snapshots laid out as the Hugging Face and ModelScope caches read them.

The view `hf/` is a real HF_HUB_CACHE: `models--org--name/blobs/<etag>` links into the
store's blobs (gpulock.models.blobs), `snapshots/<commit>/<path>` are relative links
`../../blobs/<etag>`, `refs/<revision>` holds the commit and `trees/<commit>.json` lists the
files, so huggingface_hub finds a complete snapshot with HF_HUB_OFFLINE=1. A snapshot folder
is built aside and renamed into place: it is complete or absent. ModelScope repositories get
the folders each modelscope release reads, in the project's own cache; plain downloads get
`files/<project>/<model>/`. Which view a model gets, and where, is its source's choice
(gpulock.sources): the functions here only write the formats.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from gpulock.errors import GpulockError
from gpulock.models.blobs import link_to
from gpulock.pins import PinnedModel
from gpulock.safeopen import Unsafe, read_json, read_small
from gpulock.store.layout import Layout
from gpulock.store.scratch import built_beside, link_atomic, write_atomic

if TYPE_CHECKING:
    from gpulock.store import Store

_TREE_LIMIT = 256 * 2**20  # `trees/<commit>.json`: every pinned file of a commit


def hf_view(store: Store, root: Path, snapshot: Path, model: PinnedModel,
            blobs: dict[str, Path]) -> None:
    """The model's commit in the Hugging Face cache's repository folder `root`: blob links,
    the `snapshot` folder, `trees/<commit>.json` and `refs/<revision>`."""
    layout = store.layout
    commit = model.commit or ""
    links = layout.folder(root / "blobs")
    for file in model.files:
        link_to(Layout.named(links, str(file.etag), "a blob id"), blobs[file.path])
    snapshot = layout.ready(snapshot)
    _lay_out(store, model, snapshot, {
        file.path: "../" * (file.path.count("/") + 2) + f"blobs/{file.etag}"
        for file in model.files})
    _write_tree(layout.ready(root / "trees" / f"{commit}.json"), model)
    if model.revision and model.revision != commit:
        ref = layout.ready(Layout.ref(root, model.revision))
        with contextlib.suppress(OSError, Unsafe):
            if read_small(ref, len(commit)) == commit.encode():
                return
        write_atomic(ref, commit)  # no newline: huggingface_hub reads it verbatim


def _write_tree(path: Path, model: PinnedModel) -> None:
    """`trees/<commit>.json`: the files of the commit that the snapshot holds, so that
    huggingface_hub offline finds it complete. Projects pinning other files of the same
    commit add theirs."""
    try:
        files = read_json(path, _TREE_LIMIT)["files"]
    except (OSError, Unsafe, KeyError, TypeError):
        files = {}
    if not isinstance(files, dict):
        files = {}
    before = dict(files)
    for file in model.files:
        entry: dict[str, object] = {"size": file.size, "blob_id": file.git_sha1 or ""}
        if file.sha256:
            entry["lfs_sha256"], entry["lfs_size"] = file.sha256, file.size
        files[file.path] = entry
    if files != before or not path.exists():
        write_atomic(path, json.dumps({"format_version": 1, "files": files}, indent=1,
                                      sort_keys=True))


def _lay_out(store: Store, model: PinnedModel, snapshot: Path, links: dict[str, str]) -> None:
    """Make `snapshot` hold each of `links` (a file's path -> its relative link).

    A new snapshot is built beside and renamed into place: complete or absent. An existing
    one (another project's pin of the same commit, an earlier lock of a ModelScope
    revision) gets the links it lacks or holds differently, each replaced in one rename;
    links other pins need are left alone.
    """
    if not os.path.lexists(snapshot):
        with built_beside(snapshot) as work:
            for path, target in links.items():
                os.symlink(target, _new_link_path(model, work, path))
        return
    for path, target in links.items():
        link = Layout.inside(snapshot, path)
        with contextlib.suppress(OSError):
            if os.readlink(link) == target:
                continue
        if os.path.isdir(link) and not os.path.islink(link):
            raise GpulockError(f"model '{model.name}': {path} is a folder in the snapshot "
                               f"{snapshot} but a file in the lock; nothing was laid out")
        link_atomic(store.layout.ready(link), target)


def ms_view(store: Store, snapshot: Path, legacy: list[Path], repo_id: str,
            model: PinnedModel, blobs: dict[str, Path]) -> None:
    """The ModelScope repository `repo_id` at the pinned revision: `snapshot`
    (`models/{owner}--{name}/snapshots/{revision}/{path}`, as modelscope-hub reads it, in
    the project's own cache: a revision's files are what this project's lock pinned), and
    the `legacy` folders modelscope 1.x reads."""
    snapshot = store.layout.ready(snapshot)
    # A revision's files can change between locks (no commits on ModelScope): a link that
    # names another blob than the lock's is replaced.
    _lay_out(store, model, snapshot, {
        file.path: os.path.relpath(blobs[file.path], Layout.inside(snapshot, file.path).parent)
        for file in model.files})
    _ms_legacy_view(store, legacy, repo_id, model, blobs)


def _ms_legacy_view(store: Store, legacy: list[Path], repo_id: str, model: PinnedModel,
                    blobs: dict[str, Path]) -> None:
    """Each folder modelscope 1.x before modelscope-hub reads (Layout.ms_legacy_repos), with
    the index files of its hub/utils/caching.py: `.msc`, a pickled list of {Path, Revision}
    the cache holds (with `local_files_only=True` a non-empty list is the whole check), and
    `.mdl`, a pickled {"id": "owner/name"}. Both are plain files: that client rewrites `.mdl`
    when it loads, and must never write through a link into a blob."""
    import pickle

    revision = model.revision or "master"
    index = pickle.dumps([{"Path": f.path, "Revision": revision}
                          for f in sorted(model.files, key=lambda f: f.path)], protocol=2)
    meta = pickle.dumps({"id": repo_id}, protocol=2)
    for folder in legacy:
        root = store.layout.ready(folder)
        _lay_out(store, model, root, {
            file.path: os.path.relpath(blobs[file.path], Layout.inside(root, file.path).parent)
            for file in model.files})
        for name, content in ((".msc", index), (".mdl", meta)):
            path = root / name
            with contextlib.suppress(OSError, Unsafe):
                if read_small(path, len(content)) == content:
                    continue
            write_atomic(path, content)


def file_view(store: Store, view: Path, model: PinnedModel, blobs: dict[str, Path]) -> None:
    """`view/<filename>` for each file (`files/<project>/<model>/`), or `view` -> its tree
    when extracted; a view of the other kind left by an earlier lock is replaced."""
    from gpulock.models.extract import extracted

    view = store.layout.ready(view)
    is_link = os.path.islink(view)
    if model.extract:
        (file,) = model.files
        tree = extracted(store, model, file, blobs[file.path])
        if os.path.isdir(view) and not is_link:
            aside = store.work_dir(f"view-{model.name}")
            os.rename(view, aside / "old")
            shutil.rmtree(aside)
        link_to(view, tree)
        return
    if is_link:
        view.unlink()
    for file in model.files:
        link_to(store.layout.ready(Layout.inside(view, file.path)), blobs[file.path])


def _new_link_path(model: PinnedModel, work: Path, path: str) -> Path:
    """Where the link for repository file `path` goes in a snapshot being built in `work`."""
    link = Layout.inside(work, path)
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GpulockError(f"model '{model.name}': {path} needs a folder where the repository "
                           "has a file of the same name; nothing was laid out") from None
    return link
