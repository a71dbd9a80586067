"""Models and data in the lock: each source pinned to exact bytes.

`hf://org/name` (and `hf://datasets/org/name`) goes through the real huggingface_hub client:
the requested revision is resolved to a commit, and the commit's tree gives every file's
path, size and hash (LFS files by sha256, small files by their git blob sha1), filtered by
the manifest's include/exclude globs. `ms://owner/name` goes through the real ModelScope
client; ModelScope has no commit for a branch, so its files' sha256 are the pin and a file
changed upstream fails the sync. `https://` sources are one file hashed at lock time.
Tokens are read from the environment when a call is made and never stored or printed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from gpulock.errors import GpulockError
from gpulock.manifest import Model


@dataclass(frozen=True)
class ModelFile:
    path: str
    size: int
    sha256: str | None = None  # LFS files and https:// downloads: the content's sha256
    git_sha1: str | None = None  # hub files: the git blob id (of the LFS pointer for LFS)

    @property
    def etag(self) -> str | None:
        """The name the Hugging Face cache gives this file's blob."""
        return self.sha256 or self.git_sha1

    def as_dict(self) -> dict[str, Any]:
        return _present({"path": self.path, "size": self.size, "sha256": self.sha256,
                         "git-sha1": self.git_sha1})


@dataclass(frozen=True)
class PinnedModel:
    name: str
    source: str
    revision: str | None
    commit: str | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    files: tuple[ModelFile, ...]
    # From the safetensors headers: parameters, bytes of weights, dtypes.
    weights: tuple[tuple[str, Any], ...] = ()
    extract: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        return _present({
            "name": self.name, "source": self.source, "revision": self.revision,
            "commit": self.commit, "include": list(self.include),
            "exclude": list(self.exclude), "weights": dict(self.weights),
            "extract": self.extract,
            "files": [f.as_dict() for f in sorted(self.files, key=lambda f: f.path)]})

    def matches(self, model: Model) -> bool:
        """Whether this pin was made for the same request (source, revision, filters)."""
        return (self.source, self.revision, self.include, self.exclude, self.extract) == (
            model.source, requested_revision(model), model.include, model.exclude,
            model.extract)


def _present(entry: dict[str, Any]) -> dict[str, Any]:
    """The lock leaves out what is empty, false or unknown (TOML has no null)."""
    return {key: value for key, value in entry.items()
            if key == "files" or not (value is None or value is False or value in ([], {}, ""))}


def requested_revision(model: Model) -> str | None:
    """The revision a model asks for; hub repositories follow their default branch."""
    if model.revision:
        return model.revision
    return {"hf": "main", "ms": "master"}.get(model.source.split("://")[0])


def from_dict(entry: dict[str, Any]) -> PinnedModel:
    return PinnedModel(
        name=entry["name"], source=entry["source"], revision=entry.get("revision"),
        commit=entry.get("commit"), include=tuple(entry.get("include", ())),
        exclude=tuple(entry.get("exclude", ())),
        files=tuple(ModelFile(f["path"], f["size"], f.get("sha256"), f.get("git-sha1"))
                    for f in entry.get("files", ())),
        weights=tuple(sorted(entry.get("weights", {}).items())),
        extract=bool(entry.get("extract", False)))


def pin(model: Model) -> PinnedModel:
    if model.source.startswith("hf://"):
        return _pin_hf(model)
    if model.source.startswith("ms://"):
        return _pin_ms(model)
    return _pin_url(model)


def modelscope_endpoint() -> str:
    return (os.environ.get("MODELSCOPE_ENDPOINT") or "https://www.modelscope.cn").rstrip("/")


def _pin_ms(model: Model) -> PinnedModel:
    """ModelScope never resolves a branch to a commit: the files' sha256 are the pin."""
    from modelscope_hub.api import HubApi
    from modelscope_hub.errors import HubError

    repo_id = model.source.removeprefix("ms://")
    revision = requested_revision(model) or "master"
    where = f"model '{model.name}' ({model.source}@{revision})"
    api = HubApi(endpoint=modelscope_endpoint(),
                 token=os.environ.get("MODELSCOPE_API_TOKEN") or None)
    try:
        listing = api.list_repo_files(repo_id, "model", revision=revision, recursive=True)
    except (HubError, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise GpulockError(f"{where}: ModelScope answered: {reason}") from None
    blobs = [f for f in listing if not f.is_dir and f.path]
    chosen = _chosen(model, blobs, where)
    missing = [f.path for f in chosen if not f.sha256]
    if missing:
        raise GpulockError(f"{where}: ModelScope gave no sha256 for {missing[0]}, so it cannot "
                           "be pinned")
    files = tuple(ModelFile(path=f.path, size=f.size, sha256=f.sha256) for f in chosen)
    return PinnedModel(name=model.name, source=model.source, revision=revision, commit=None,
                       include=model.include, exclude=model.exclude, files=files)


def _chosen(model: Model, files: list[Any], where: str) -> list[Any]:
    """The repository files `include` / `exclude` select, by huggingface_hub's own rules."""
    from huggingface_hub.utils import filter_repo_objects

    chosen = list(filter_repo_objects(files, allow_patterns=list(model.include) or None,
                                      ignore_patterns=list(model.exclude) or None,
                                      key=lambda f: f.path))
    if not chosen:
        raise GpulockError(f"{where}: no file matches include={list(model.include)} "
                           f"exclude={list(model.exclude)}")
    return chosen


def _pin_hf(model: Model) -> PinnedModel:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.hf_api import RepoFile

    repo_id = model.source.removeprefix("hf://")
    repo_type = "model"
    if repo_id.startswith("datasets/"):
        repo_id, repo_type = repo_id.removeprefix("datasets/"), "dataset"
    revision = requested_revision(model) or "main"
    where = f"model '{model.name}' ({model.source}@{revision})"
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None,
                token=os.environ.get("HF_TOKEN") or False)
    try:
        commit = api.repo_info(repo_id, revision=revision, repo_type=repo_type).sha
        tree = [f for f in api.list_repo_tree(repo_id, recursive=True, revision=commit,
                                              repo_type=repo_type) if isinstance(f, RepoFile)]
    except GatedRepoError:
        raise GpulockError(f"{where} is gated: accept its terms on the Hub and set HF_TOKEN"
                           ) from None
    except RevisionNotFoundError:
        raise GpulockError(f"{where}: the repository has no revision '{revision}'") from None
    except RepositoryNotFoundError:
        raise GpulockError(f"{where} does not exist, or is private and HF_TOKEN does not "
                           "grant access to it") from None
    except (HfHubHTTPError, OSError) as exc:
        reason = str(exc).splitlines()[0]
        raise GpulockError(f"{where}: the Hub answered: {reason}") from None
    if commit is None:
        raise GpulockError(f"{where}: the Hub did not say which commit it is")
    chosen = _chosen(model, tree, where)
    # git-sha1 is the blob id (for LFS files, the pointer's): the Hub cache's tree listing
    # and non-LFS etags use it; sha256 is the content hash of LFS files.
    files = tuple(ModelFile(path=f.path, size=f.size,
                            sha256=f.lfs.sha256 if f.lfs else None,
                            git_sha1=f.blob_id) for f in chosen)
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    prefix = "datasets/" if repo_type == "dataset" else ""
    urls = {f.path: f"{endpoint}/{prefix}{repo_id}/resolve/{commit}/{f.path}" for f in files}
    weights = _weights(model, files, urls)
    return PinnedModel(name=model.name, source=model.source, revision=revision, commit=commit,
                       include=model.include, exclude=model.exclude, files=files,
                       weights=weights)


# Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2,
                "BF16": 2, "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1,
                "BOOL": 1}


def _weights(model: Model, files: tuple[ModelFile, ...], urls: dict[str, str]
             ) -> tuple[tuple[str, Any], ...]:
    """Parameters, bytes and dtypes of the safetensors files, from their headers alone.

    A safetensors file starts with an 8-byte little-endian length N and N bytes of JSON
    (dtype, shape, data_offsets per tensor): two small range requests per file, however
    large the weights.
    """
    import json
    import struct
    from concurrent.futures import ThreadPoolExecutor

    from gpulock.http import Http

    shards = [f for f in files if f.path.endswith(".safetensors")]
    if not shards:
        return ()
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
        except ValueError:
            return {}

    parameters = size = 0
    dtypes: set[str] = set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for tensors in pool.map(header, shards):
            for name, tensor in tensors.items():
                if name == "__metadata__" or not isinstance(tensor, dict):
                    continue
                count = 1
                for dim in tensor.get("shape", []):
                    count *= int(dim)
                parameters += count
                start, end = tensor.get("data_offsets", [0, 0])
                size += int(end) - int(start)
                dtypes.add(str(tensor.get("dtype")))
    if not dtypes:
        return ()
    return (("bytes", size), ("dtypes", sorted(dtypes)), ("parameters", parameters))


def _pin_url(model: Model) -> PinnedModel:
    from urllib.parse import unquote, urlsplit

    from gpulock.http import Http, redact

    digest, size = hashlib.sha256(), 0
    with Http().stream(model.source) as (response, body):
        if response.status != 200:
            raise GpulockError(f"model '{model.name}': {redact(model.source)} answered HTTP "
                               f"{response.status}")
        while chunk := body.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    name = unquote(urlsplit(model.source).path.rsplit("/", 1)[-1]) or "download"
    return PinnedModel(name=model.name, source=model.source, revision=None, commit=None,
                       include=(), exclude=(),
                       files=(ModelFile(path=name, size=size, sha256=digest.hexdigest()),),
                       extract=model.extract)
