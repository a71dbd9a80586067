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

import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gpulock.credentials import credentials_in, login_problem, shown
from gpulock.errors import GpulockError, LockfileError
from gpulock.manifest import Model
from gpulock.store import Store
from gpulock.store.names import (
    hex_problem,
    name_problem,
    path_problem,
    repo_problem,
    revision_problem,
    segment_problem,
)

# The largest file a model may pin: 1 TiB, far past any checkpoint shard or dataset file the
# hubs serve (tens of GiB). A size beyond it comes from a hostile listing or a hand-edited
# lock, and a download would plan its ranges (or a disk check its space) for it.
FILE_LIMIT = 1 << 40


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

    def problem(self) -> str | None:
        """What makes this pin unsafe to lay out in a store, or None (see gpulock.store.names)."""
        if problem := name_problem(self.name):
            return f"has a name that {problem}"
        if credentials_in(self.source):
            return "has a source URL with credentials (locks keep bare URLs)"
        if problem := login_problem(self.source):
            return f"has a source that {problem}"
        if problem := source_problem(self.source, self.revision):
            return problem
        if self.source.startswith(("hf://", "git+")) and hex_problem(self.commit or "", 40):
            return f"has a commit {self.commit!r} that {hex_problem(self.commit or '', 40)}"
        if not self.files:
            return "lists no file"
        return _files_problem(self)

    def matches(self, model: Model) -> bool:
        """Whether this pin was made for the same request (source, revision, filters)."""
        return (self.source, self.revision, self.include, self.exclude, self.extract) == (
            model.source, requested_revision(model), model.include, model.exclude,
            model.extract)


def source_problem(source: str, revision: str | None) -> str | None:
    """What is wrong with a model's source and revision, or None."""
    if source.startswith(("hf://", "ms://")):
        repo = source.split("://", 1)[1]
        if source.startswith("hf://"):
            repo = repo.removeprefix("datasets/")
        if problem := repo_problem(repo):
            return f"has a source {shown(source)!r} that {problem}"
        if revision is not None:
            problem = revision_problem(revision) or (
                segment_problem(revision) if source.startswith("ms://") else None)
            if problem:
                return f"has a revision {revision!r} that {problem}"
        return None
    from gpulock.sources import source_for

    kind = source_for(source)
    if kind is not None:
        problem = kind.problem(source)
        return f"has a source {shown(source)!r} that {problem}" if problem else None
    if not source.startswith(("https://", "http://")):
        return (f"has a source {shown(source)!r} that is not hf://, ms://, https://, http://, "
                "s3://, git+https://, git+file://, file://, an absolute path or ref://")
    return None


def _files_problem(model: PinnedModel) -> str | None:
    folders: set[str] = set()
    seen: set[str] = set()
    for file in model.files:
        where = f"lists a file {file.path!r}"
        is_url = model.source.startswith(("https://", "http://"))  # one file, no folders
        problem = (segment_problem(file.path) if is_url else path_problem(file.path))
        if problem:
            return f"{where} that {problem}"
        if not 0 <= file.size <= FILE_LIMIT:
            return f"{where} of {file.size:,} bytes, not 0 to {FILE_LIMIT:,}"
        if file.sha256 is not None and (problem := hex_problem(file.sha256, 64)):
            return f"{where} whose sha256 {problem}"
        if file.git_sha1 is not None and (problem := hex_problem(file.git_sha1, 40)):
            return f"{where} whose git-sha1 {problem}"
        if not file.sha256 and not (file.git_sha1 and model.source.startswith(("hf://",
                                                                                "ref://"))):
            return f"{where} with no sha256"
        if file.path in seen:
            return f"{where} twice"
        seen.add(file.path)
        parts = file.path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    if clash := sorted(seen & folders):
        return f"lists {clash[0]!r} both as a file and as a folder"
    if is_url and len(model.files) != 1:
        return "has a URL source but not exactly one file"
    return None


def _present(entry: dict[str, Any]) -> dict[str, Any]:
    """The lock leaves out what is empty, false or unknown (TOML has no null)."""
    return {key: value for key, value in entry.items()
            if key == "files" or not (value is None or value is False or value in ([], {}, ""))}


def requested_revision(model: Model) -> str | None:
    """The revision a model asks for; hub repositories follow their default branch."""
    if model.revision:
        return model.revision
    return {"hf": "main", "ms": "master"}.get(model.source.split("://")[0])


def from_dict(entry: object, where: str = "a pinned model") -> PinnedModel:
    """A pinned model from its lock (or GC root) table, refused in one sentence when any
    field has the wrong type or breaks a naming rule (see `problem`)."""
    if not isinstance(entry, dict):
        raise LockfileError(f"{where} is not a table; run 'gpulock lock' to rewrite the lock")

    def field(table: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
        value = table.get(key, default)
        if value is default and key not in table:
            if default is _REQUIRED:
                raise LockfileError(f"{where} has no '{key}'; run 'gpulock lock' to rewrite "
                                    "the lock")
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) or (
                isinstance(value, list) and not all(isinstance(v, (str, dict)) for v in value)):
            raise LockfileError(f"{where}: '{key}' has the wrong type; run 'gpulock lock' "
                                "to rewrite the lock")
        return value

    files = []
    for raw in field(entry, "files", list, _REQUIRED):
        if not isinstance(raw, dict):
            raise LockfileError(f"{where}: a file entry is not a table")
        files.append(ModelFile(field(raw, "path", str, _REQUIRED), field(raw, "size", int,
                                                                         _REQUIRED),
                               field(raw, "sha256", str), field(raw, "git-sha1", str)))
    pinned = PinnedModel(
        name=field(entry, "name", str, _REQUIRED), source=field(entry, "source", str, _REQUIRED),
        revision=field(entry, "revision", str), commit=field(entry, "commit", str),
        include=tuple(_strings(field(entry, "include", list, []), where)),
        exclude=tuple(_strings(field(entry, "exclude", list, []), where)),
        files=tuple(files), weights=tuple(sorted(field(entry, "weights", dict, {}).items())),
        extract=field(entry, "extract", bool, False))
    problem = pinned.problem()
    if problem:
        raise LockfileError(f"{where}: model {pinned.name!r} {problem}; it was refused before "
                            "anything was written (run 'gpulock lock' to rewrite the lock)")
    return pinned


_REQUIRED = object()


def _strings(values: list[Any], where: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise LockfileError(f"{where}: include and exclude must be lists of strings")
    return values


def pin(model: Model, store: Store) -> PinnedModel:
    """Pin a manifest's model to exact files; refuse what a hub or server answered when a
    file name, commit or hash could not be laid out safely in a store."""
    from gpulock.sources import source_for

    kind = source_for(model.source)
    if kind is not None:
        pinned = kind.pin(model, store)
    elif model.source.startswith("hf://"):
        pinned = _pin_hf(model)
    elif model.source.startswith("ms://"):
        pinned = _pin_ms(model)
    else:
        pinned = _pin_url(model)
    problem = pinned.problem()
    if problem:
        where = f"model '{model.name}' ({model.source}@{pinned.revision})" if pinned.revision \
            else f"model '{model.name}' ({model.source})"
        raise GpulockError(f"{where}: refused, as what the server answered {problem}; "
                           "nothing was pinned")
    if model.source.startswith("hf://"):
        pinned = dataclasses.replace(pinned, weights=_weights(pinned))
    return pinned


def modelscope_endpoint() -> str:
    return (os.environ.get("MODELSCOPE_ENDPOINT") or "https://www.modelscope.cn").rstrip("/")


def _pin_ms(model: Model) -> PinnedModel:
    """ModelScope never resolves a branch to a commit: the files' sha256 are the pin."""
    from modelscope_hub.api import HubApi
    from modelscope_hub.errors import HubError

    from gpulock.http import paced

    repo_id = model.source.removeprefix("ms://")
    revision = requested_revision(model) or "master"
    where = f"model '{model.name}' ({model.source}@{revision})"
    api = HubApi(endpoint=modelscope_endpoint(),
                 token=os.environ.get("MODELSCOPE_API_TOKEN") or None)
    try:
        listing = paced(lambda: api.list_repo_files(repo_id, "model", revision=revision,
                                                    recursive=True), where)
    except (HubError, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise GpulockError(f"{where}: ModelScope answered: {reason}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise GpulockError(f"{where}: ModelScope answered something that is not a file "
                           f"listing ({type(exc).__name__})") from None
    _check_listing(where, [(f.path, f.size, f.sha256) for f in listing])
    blobs = [f for f in listing if not f.is_dir and f.path]
    chosen = chosen_files(model, blobs, where)
    missing = [f.path for f in chosen if not f.sha256]
    if missing:
        raise GpulockError(f"{where}: ModelScope gave no sha256 for {missing[0]}, so it cannot "
                           "be pinned")
    files = tuple(ModelFile(path=f.path, size=f.size, sha256=f.sha256) for f in chosen)
    return PinnedModel(name=model.name, source=model.source, revision=revision, commit=None,
                       include=model.include, exclude=model.exclude, files=files)


def _check_listing(where: str, files: list[tuple[object, object, object]]) -> None:
    """Refuse a listing whose paths, sizes or hashes have types no hub sends, or that names
    a path twice (a pagination that loops)."""
    seen: set[object] = set()
    for path, size, digest in files:
        if path in seen:
            raise GpulockError(f"{where}: the hub listed {path!r} twice; nothing was pinned")
        seen.add(path)
        if not (isinstance(path, str) and isinstance(size, int) and not isinstance(size, bool)
                and (digest is None or isinstance(digest, str))):
            raise GpulockError(f"{where}: the hub listed a file as {path!r} of size {size!r}, "
                               "which is not a file listing; nothing was pinned")


def chosen_files(model: Model, files: list[Any], where: str) -> list[Any]:
    """The repository files `include` / `exclude` select, by huggingface_hub's own rules."""
    from huggingface_hub.utils import filter_repo_objects

    chosen = list(filter_repo_objects(files, allow_patterns=list(model.include) or None,
                                      ignore_patterns=list(model.exclude) or None,
                                      key=lambda f: f.path))
    if not chosen:
        raise GpulockError(f"{where}: no file matches include={list(model.include)} "
                           f"exclude={list(model.exclude)}")
    return chosen


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


def _pin_hf(model: Model) -> PinnedModel:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.hf_api import RepoFile

    from gpulock.http import paced

    repo_id = model.source.removeprefix("hf://")
    repo_type = "model"
    if repo_id.startswith("datasets/"):
        repo_id, repo_type = repo_id.removeprefix("datasets/"), "dataset"
    revision = requested_revision(model) or "main"
    where = f"model '{model.name}' ({model.source}@{revision})"
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None,
                token=os.environ.get("HF_TOKEN") or False)
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
        reason = str(exc).splitlines()[0]
        raise GpulockError(f"{where}: the Hub answered: {reason}") from None
    except _transport_errors() as exc:  # huggingface_hub 1.x and 2.x speak httpx
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise GpulockError(f"{where}: the Hub at {api.endpoint} cannot be reached ({reason})"
                           ) from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise GpulockError(f"{where}: the Hub answered something that is not a repository "
                           f"listing ({type(exc).__name__})") from None
    _check_listing(where, [(f.path, f.size, f.lfs.sha256 if f.lfs else f.blob_id)
                           for f in tree])
    chosen = chosen_files(model, tree, where)
    # git-sha1 is the blob id (for LFS files, the pointer's): the Hub cache's tree listing
    # and non-LFS etags use it; sha256 is the content hash of LFS files.
    files = tuple(ModelFile(path=f.path, size=f.size,
                            sha256=f.lfs.sha256 if f.lfs else None,
                            git_sha1=f.blob_id) for f in chosen)
    return PinnedModel(name=model.name, source=model.source, revision=revision, commit=commit,
                       include=model.include, exclude=model.exclude, files=files)


# Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2,
                "BF16": 2, "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1,
                "BOOL": 1}


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
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    repo = model.source.removeprefix("hf://")
    urls = {f.path: f"{endpoint}/{repo}/resolve/{model.commit}/{quote(f.path)}" for f in shards}
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


def _pin_url(model: Model) -> PinnedModel:
    from urllib.parse import unquote, urlsplit

    from gpulock.credentials import redact
    from gpulock.http import Http

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
