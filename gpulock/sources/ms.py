"""`ms://owner/name`: ModelScope repositories, through the real ModelScope client.
ModelScope has no commit for a branch, so its files' sha256 are the pin and a file changed
upstream fails the sync. Synced models are laid out, in the project's own MODELSCOPE_CACHE,
in the folders each modelscope release reads (gpulock.models.views). MODELSCOPE_API_TOKEN
is read from the environment when a call is made, sent to its own hub only, never stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gpulock.credentials import redact
from gpulock.errors import GpulockError
from gpulock.names import path_problem, repo_problem, revision_problem, segment_problem
from gpulock.pins import ModelFile, ModelRequest, PinnedModel
from gpulock.sources.files import Remove, check_listing, chosen_files

if TYPE_CHECKING:
    from gpulock.store import Store


def endpoint() -> str:
    """The hub `ms://` models come from: MODELSCOPE_ENDPOINT, as modelscope reads it."""
    return (os.environ.get("MODELSCOPE_ENDPOINT") or "https://www.modelscope.cn").rstrip("/")


class MsSource:
    """A ModelScope repository at a revision."""

    prefixes = ("ms://",)
    named = "ms://"
    default_revision = "master"
    commits = False
    git_ids = False
    one_file = False

    def problem(self, source: str) -> str | None:
        """What is wrong with an `ms://` source, or None."""
        return repo_problem(_repo(source))

    def revision_problem(self, revision: str) -> str | None:
        """A revision is one folder name in the cache (`snapshots/<revision>`)."""
        return revision_problem(revision) or segment_problem(revision)

    def pin(self, model: ModelRequest, store: Store) -> PinnedModel:
        """The revision's files, each by its sha256."""
        return _pin(model)

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, streams: int) -> Path:
        """The file's blob, downloaded from the hub at the pinned revision."""
        from gpulock.models.download import download

        url = (f"{endpoint()}/api/v1/models/{_repo(model.source)}/repo?"
               f"Revision={quote(model.revision or 'master')}&FilePath={quote(file.path)}")
        token = os.environ.get("MODELSCOPE_API_TOKEN")  # only ever sent to its own hub
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return download(store, model, file, url, auth, streams)

    def cache(self, store: Store, project: str) -> Path:
        """The project's MODELSCOPE_CACHE: a revision's files are what its lock pinned."""
        return store.layout.ms_cache(project)

    def exports(self, store: Store, project: str) -> dict[str, str]:
        """ModelScope loads offline with snapshot_download(repo, local_files_only=True)."""
        return {"MODELSCOPE_CACHE": str(self.cache(store, project))}

    def view(self, store: Store, project: str, model: PinnedModel) -> Path:
        """`modelscope/<project>/models/<owner>--<name>/snapshots/<revision>`."""
        from gpulock.store.layout import Layout

        return Layout.ms_snapshot(store.layout.ms_repo(project, _repo(model.source)),
                                  model.revision or "master")

    def lay_out(self, store: Store, project: str, model: PinnedModel,
                blobs: dict[str, Path]) -> None:
        """The snapshot modelscope-hub reads, and the folders of modelscope 1.x."""
        from gpulock.models.views import ms_view

        repo_id = _repo(model.source)
        ms_view(store, self.view(store, project, model),
                store.layout.ms_legacy_repos(project, repo_id), repo_id, model, blobs)

    def collect(self, store: Store, pinned: list[PinnedModel], remove: Remove) -> None:
        """Snapshots of revisions no root pins (in any project's cache), and the modelscope
        1.x folders of repositories none pins."""
        from gpulock.store import listing
        from gpulock.store.layout import Layout

        live = {(_repo(m.source).replace("/", "--"), m.revision or "master") for m in pinned
                if m.source.startswith(self.prefixes)}
        live_repos = {name for name, _ in live}
        # modelscope 1.x's own layouts beside it (Layout.ms_legacy_names), one per project.
        live_legacy = {parts for name in live_repos
                       for parts in Layout.ms_legacy_names(name.replace("--", "/", 1))}
        for cache in listing.dirs(store.layout.modelscope):
            for repo in listing.dirs(cache / "models"):
                for snapshot in listing.dirs(repo / "snapshots"):
                    if (repo.name, snapshot.name) not in live:
                        remove(snapshot, f"snapshot {cache.name}/{repo.name}@{snapshot.name}")
                if repo.name not in live_repos and not remove.dry_run:
                    listing.prune_empty(repo)
            for repo, parts in _legacy_folders(cache):
                if parts not in live_legacy:
                    remove(repo, f"modelscope 1.x view {cache.name}/{'/'.join(parts)}")
            for owner in listing.dirs(cache):
                if owner.name not in ("models", "temp") and not remove.dry_run:
                    listing.prune_empty(owner)

    def damage(self, store: Store) -> list[tuple[Path, str]]:
        """modelscope 1.x's index files (`.msc`, `.mdl`), which that client unpickles and
        trusts: one that would run code, or that lists a file its folder lacks."""
        layout = store.layout
        found = []
        for folder, _dirs, names in os.walk(layout.modelscope) if layout.present(
                layout.modelscope) else ():
            for name in sorted({".msc", ".mdl"} & set(names)):
                index = Path(folder) / name
                if problem := _index_problem(index):
                    found.append((index, problem))
        return found


def _repo(source: str) -> str:
    return source.removeprefix("ms://")


def _legacy_folders(cache: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Every `<owner>/<name>` and `hub/<owner>/<name>` folder below a project's cache."""
    from gpulock.store import listing

    found: list[tuple[Path, tuple[str, ...]]] = []
    for owner in listing.dirs(cache):
        if owner.name in ("models", "temp"):
            continue
        for repo in listing.dirs(owner):
            if owner.name == "hub":
                found += [(inner, ("hub", repo.name, inner.name)) for inner in listing.dirs(repo)]
            else:
                found.append((repo, (owner.name, repo.name)))
    return found


def _pin(model: ModelRequest) -> PinnedModel:
    """ModelScope never resolves a branch to a commit: the files' sha256 are the pin."""
    from modelscope_hub.api import HubApi
    from modelscope_hub.errors import HubError

    from gpulock.http import paced

    repo_id = _repo(model.source)
    revision = model.revision or MsSource.default_revision
    where = f"model '{model.name}' ({model.source}@{revision})"
    api = HubApi(endpoint=endpoint(),
                 token=os.environ.get("MODELSCOPE_API_TOKEN") or None)
    try:
        listing = paced(lambda: api.list_repo_files(repo_id, "model", revision=revision,
                                                    recursive=True), where)
    except (HubError, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise GpulockError(f"{where}: ModelScope answered: {redact(reason)}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise GpulockError(f"{where}: ModelScope answered something that is not a file "
                           f"listing ({type(exc).__name__})") from None
    check_listing(where, [(f.path, f.size, f.sha256) for f in listing])
    blobs = [f for f in listing if not f.is_dir and f.path]
    chosen = chosen_files(model, blobs, where)
    missing = [f.path for f in chosen if not f.sha256]
    if missing:
        raise GpulockError(f"{where}: ModelScope gave no sha256 for {missing[0]}, so it cannot "
                           "be pinned")
    files = tuple(ModelFile(path=f.path, size=f.size, sha256=f.sha256) for f in chosen)
    return PinnedModel(name=model.name, source=model.source, revision=revision, commit=None,
                       include=model.include, exclude=model.exclude, files=files)


def _index_problem(index: Path) -> str | None:
    import io
    import pickle

    from gpulock.store import listing

    class Plain(pickle.Unpickler):
        """Unpickles lists, dicts and strings only: a class or function is refused."""

        def find_class(self, module: str, name: str) -> Any:
            raise pickle.UnpicklingError(f"it names {module}.{name}")

    raw = listing.small(index)
    if raw is None:
        return "is not a small regular file, as modelscope writes it"
    try:
        data = Plain(io.BytesIO(raw)).load()
    except Exception as exc:  # any way a hostile pickle fails is damage, not a crash
        return f"is not a plain pickle ({type(exc).__name__}), and modelscope unpickles it"
    if index.name == ".mdl":
        return None if isinstance(data, dict) else "is not the dict modelscope writes"
    if not isinstance(data, list) or not all(
            isinstance(item, dict) and isinstance(item.get("Path"), str) for item in data):
        return "is not the file list modelscope writes"
    for item in data:
        if path_problem(item["Path"]) or not os.path.isfile(index.parent / item["Path"]):
            return f"lists {item['Path']!r}, which the folder does not hold"
    return None
