"""`hf://org/name` and `hf://datasets/org/name`: Hugging Face repositories, through the real
huggingface_hub client. The requested revision is resolved to a commit, and the commit's
tree gives every file's path, size and hash (LFS files by sha256, small files by their git
blob sha1), filtered by the manifest's include/exclude globs; safetensors headers give the
weights' size. Synced models are laid out as a real HF_HUB_CACHE (gpulock.models.views).
HF_TOKEN is read from the environment when a call is made, sent to HF_ENDPOINT only, and
never stored or printed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gpulock.credentials import redact, shown
from gpulock.errors import GpulockError
from gpulock.names import hex_problem, repo_problem, revision_problem
from gpulock.pins import ModelFile, ModelRequest, PinnedModel
from gpulock.sources.files import Remove, check_listing, chosen_files

if TYPE_CHECKING:
    from gpulock.store import Store


def hf_endpoint() -> str:
    """The hub that `hf://` models come from: HF_ENDPOINT, as huggingface_hub reads it."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


@dataclass(frozen=True)
class HubRepo:
    """`hf://org/name` or `hf://datasets/org/name`."""

    repo_id: str
    kind: str  # "model" or "dataset"

    @classmethod
    def of(cls, source: str) -> HubRepo:
        """The repository an `hf://` source names."""
        repo = source.removeprefix("hf://")
        if repo.startswith("datasets/"):
            return cls(repo.removeprefix("datasets/"), "dataset")
        return cls(repo, "model")

    def folder(self, store: Store) -> Path:
        """This repository's folder in the store's Hugging Face cache."""
        return store.layout.hf_repo(self.kind, self.repo_id)

    def url(self, endpoint: str, commit: str, path: str) -> str:
        """Where the hub serves `path` at `commit`."""
        prefix = "datasets/" if self.kind == "dataset" else ""
        return f"{endpoint}/{prefix}{self.repo_id}/resolve/{commit}/{quote(path)}"


class HfSource:
    """A Hugging Face model or dataset repository at a commit."""

    prefixes = ("hf://",)
    named = "hf://"
    default_revision = "main"
    commits = True
    git_ids = True  # small files are pinned by their git blob id, as the Hub lists them
    one_file = False

    def problem(self, source: str) -> str | None:
        """What is wrong with an `hf://` source, or None."""
        return repo_problem(HubRepo.of(source).repo_id)

    def revision_problem(self, revision: str) -> str | None:
        """What is wrong with a branch, tag or commit to pin, or None."""
        return revision_problem(revision)

    def pin(self, model: ModelRequest, store: Store) -> PinnedModel:
        """The commit the revision names now, its files, and the weights' size."""
        pinned = _pin(model)
        if pinned.problem(self):  # refused by the caller: no header is read for it
            return pinned
        return dataclasses.replace(pinned, weights=_weights(pinned))

    def fetch(self, store: Store, model: PinnedModel, file: ModelFile, streams: int) -> Path:
        """The file's blob, downloaded from the hub at the pinned commit."""
        from gpulock.models.download import download

        url = HubRepo.of(model.source).url(hf_endpoint(), model.commit or "", file.path)
        token = os.environ.get("HF_TOKEN")  # only ever sent to its own hub
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return download(store, model, file, url, auth, streams)

    def cache(self, store: Store, project: str) -> Path:
        """The store's HF_HUB_CACHE, one for every project."""
        return store.layout.hf

    def exports(self, store: Store, project: str) -> dict[str, str]:
        """The variables that point huggingface_hub at the store's cache, offline."""
        cache = str(store.layout.hf)
        # huggingface_hub reads HF_HUB_OFFLINE at import: the pinned snapshots are complete.
        # Before 0.20 (transformers 4.35 pins 0.17) it reads only HUGGINGFACE_HUB_CACHE.
        return {"HF_HUB_CACHE": cache, "HUGGINGFACE_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}

    def view(self, store: Store, project: str, model: PinnedModel) -> Path:
        """`hf/models--org--name/snapshots/<commit>`."""
        from gpulock.store.layout import Layout

        return Layout.commit_folder(HubRepo.of(model.source).folder(store) / "snapshots",
                                    model.commit or "")

    def lay_out(self, store: Store, project: str, model: PinnedModel,
                blobs: dict[str, Path]) -> None:
        """The snapshot, its blob links, `refs/<revision>` and `trees/<commit>.json`."""
        from gpulock.models.views import hf_view

        hf_view(store, HubRepo.of(model.source).folder(store),
                self.view(store, project, model), model, blobs)

    def collect(self, store: Store, pinned: list[PinnedModel], remove: Remove) -> None:
        """Snapshots, refs, trees and blob links of commits nothing pins any more."""
        from gpulock.store import listing

        live = {(HubRepo.of(m.source).folder(store).name, m.commit or "") for m in pinned
                if m.source.startswith(self.prefixes)}
        # A live repository's folders stay even when empty: a sync may be about to fill them.
        live_repos = {name for name, _ in live}
        live_etags = {str(f.etag) for m in pinned for f in m.files}
        for repo in listing.dirs(store.layout.hf):
            for snapshot in listing.dirs(repo / "snapshots"):
                if (repo.name, snapshot.name) not in live:
                    remove(snapshot, f"snapshot {repo.name}@{snapshot.name[:12]}")
            for tree in listing.files(repo / "trees"):
                if (repo.name, tree.name.removesuffix(".json")) not in live:
                    remove(tree)
            for ref in listing.files(repo / "refs"):
                if (repo.name, listing.text(ref)) not in live:
                    remove(ref)
            for link in listing.files(repo / "blobs"):
                if link.name not in live_etags:
                    remove(link)
            if repo.name not in live_repos and not remove.dry_run:
                listing.prune_empty(repo)

    def damage(self, store: Store) -> list[tuple[Path, str]]:
        """Refs huggingface_hub follows that name no snapshot this store holds."""
        from gpulock.store import listing

        found: list[tuple[Path, str]] = []
        for repo in listing.dirs(store.layout.hf):
            if os.path.islink(repo / "refs"):  # repair removes the link, never what it leads to
                found.append((repo / "refs", "is a link, which gpulock never makes there"))
            for ref in listing.files(repo / "refs"):  # never through a link
                commit = (listing.small(ref) or b"").decode("ascii", "replace")
                if hex_problem(commit, 40) or not (repo / "snapshots" / commit).is_dir():
                    found.append((ref, "names no snapshot this store holds"))
        return found


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client errors of whichever client huggingface_hub uses (httpx, httpx2; the
    requests of older releases raise OSErrors), from the modules it has already imported."""
    found = []
    for module in ("httpx", "httpx2"):
        loaded = sys.modules.get(module)
        error = getattr(loaded, "HTTPError", None) if loaded else None
        if isinstance(error, type) and issubclass(error, Exception):
            found.append(error)
    return tuple(found)


def _first_line(exc: BaseException) -> str:
    """An error's first line as a message may quote it: any URL in it without its login."""
    return redact((str(exc).splitlines() or [type(exc).__name__])[0])


def _pin(model: ModelRequest) -> PinnedModel:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.hf_api import RepoFile

    from gpulock.http import paced

    repo = HubRepo.of(model.source)
    repo_id, repo_type = repo.repo_id, repo.kind
    revision = model.revision or HfSource.default_revision
    where = f"model '{model.name}' ({model.source}@{revision})"
    api = HfApi(endpoint=hf_endpoint(), token=os.environ.get("HF_TOKEN") or False)
    try:
        (info,) = paced(lambda: [api.repo_info(repo_id, revision=revision,
                                               repo_type=repo_type)], where)
        commit = info.sha
        if not isinstance(commit, str) or hex_problem(commit, 40):  # goes into a request path
            raise GpulockError(f"{where}: the Hub answered the commit {commit!r}, which is not "
                               "a commit id; nothing was pinned")
        tree = [f for f in paced(lambda: api.list_repo_tree(
            repo_id, recursive=True, revision=commit, repo_type=repo_type), where,
            distinct=lambda f: repr(f.path) if isinstance(f, RepoFile) else f"folder {f.path!r}")
            if isinstance(f, RepoFile)]
    except GatedRepoError:
        raise GpulockError(f"{where} is gated: accept its terms on the Hub and set HF_TOKEN"
                           ) from None
    except RevisionNotFoundError:
        raise GpulockError(f"{where}: the repository has no revision '{revision}'") from None
    except RepositoryNotFoundError:
        raise GpulockError(f"{where} does not exist, or is private and HF_TOKEN does not "
                           "grant access to it") from None
    except (HfHubHTTPError, OSError) as exc:
        raise GpulockError(f"{where}: the Hub answered: {_first_line(exc)}") from None
    except _transport_errors() as exc:  # huggingface_hub 1.x and 2.x speak httpx
        raise GpulockError(f"{where}: the Hub at {shown(api.endpoint)} cannot be reached "
                           f"({_first_line(exc)})") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise GpulockError(f"{where}: the Hub answered something that is not a repository "
                           f"listing ({type(exc).__name__})") from None
    check_listing(where, [(f.path, f.size, f.lfs.sha256 if f.lfs else f.blob_id)
                           for f in tree])
    chosen = chosen_files(model, tree, where)
    # git-sha1 is the blob id (for LFS files, the pointer's): the Hub cache's tree listing
    # and non-LFS etags use it; sha256 is the content hash of LFS files.
    files = tuple(ModelFile(path=f.path, size=f.size,
                            sha256=f.lfs.sha256 if f.lfs else None,
                            git_sha1=f.blob_id) for f in chosen)
    return PinnedModel(name=model.name, source=model.source, revision=revision, commit=commit,
                       include=model.include, exclude=model.exclude, files=files)


def _weights(model: PinnedModel) -> tuple[tuple[str, Any], ...]:
    """Parameters, bytes and dtypes of the safetensors files, from their headers alone.

    A safetensors file starts with an 8-byte little-endian length N and N bytes of JSON
    (dtype, shape, data_offsets per tensor): two small range requests per file, however
    large the weights.
    """
    import json
    import struct
    from concurrent.futures import ThreadPoolExecutor

    from gpulock.http import Http

    shards = [f for f in model.files if f.path.endswith(".safetensors")]
    if not shards:
        return ()
    repo, endpoint = HubRepo.of(model.source), hf_endpoint()
    urls = {f.path: repo.url(endpoint, model.commit or "", f.path) for f in shards}
    http = Http()
    token = os.environ.get("HF_TOKEN")
    auth = {"Authorization": f"Bearer {token}"} if token else {}

    def header(file: ModelFile) -> dict[str, Any]:
        first = http.get(urls[file.path], {**auth, "Range": "bytes=0-7"})
        if first.status != 206 or len(first.body) != 8:
            return {}
        (length,) = struct.unpack("<Q", first.body)
        if length > 100 * 2**20:
            return {}
        second = http.get(urls[file.path], {**auth, "Range": f"bytes=8-{7 + length}"})
        try:
            return json.loads(second.body) if second.status == 206 else {}
        except (ValueError, RecursionError):
            return {}

    parameters = size = 0
    dtypes: set[str] = set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for tensors in pool.map(header, shards):
            for tensor in tensors.values() if isinstance(tensors, dict) else ():
                counted = _tensor(tensor)
                if counted:  # a header that is not safetensors' says nothing: skipped
                    parameters, size = parameters + counted[0], size + counted[1]
                    dtypes.add(counted[2])
    if not dtypes:
        return ()
    return (("bytes", size), ("dtypes", sorted(dtypes)), ("parameters", parameters))


def _tensor(tensor: object) -> tuple[int, int, str] | None:
    """(parameters, bytes, dtype) of one safetensors header entry, None if it is not one."""
    if not isinstance(tensor, dict):
        return None  # `__metadata__`, or not a tensor
    shape, offsets, dtype = tensor.get("shape"), tensor.get("data_offsets"), tensor.get("dtype")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets) and isinstance(dtype, str)):
        return None
    count = 1
    for dim in shape:
        count *= dim
    return count, offsets[1] - offsets[0], dtype


