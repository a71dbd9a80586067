"""What a lock pins, as plain data: packages (a wheel, an sdist or a git commit each) and
models (exact files by size and hash), with the rules a pin must keep before gpulock turns
any part of it into a path, a URL or a command.

No I/O and nothing above it: `gpulock.lock.lockfile` reads and writes these as TOML, the
store keeps model pins as JSON roots (`model_from_table` reads both), the sources pin
them, sync and the store's upkeep use them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gpulock.credentials import credentials_in, login_problem, shown
from gpulock.errors import LockfileError
from gpulock.names import hex_problem, name_problem, path_problem, segment_problem, url_problem
from gpulock.target import Target

# The largest file a model may pin: 1 TiB, far past any checkpoint shard or dataset file the
# hubs serve (tens of GiB). A size beyond it comes from a hostile listing or a hand-edited
# lock, and a download would plan its ranges (or a disk check its space) for it.
FILE_LIMIT = 1 << 40


@dataclass(frozen=True)
class FileRef:
    """A wheel or sdist: where it is served, and the size and sha256 it must have."""

    name: str
    url: str
    size: int
    sha256: str
    upload_time: datetime | None = None


@dataclass(frozen=True)
class VcsRef:
    """A package built from a git repository at one commit."""

    url: str
    commit_id: str
    requested_revision: str | None = None
    subdirectory: str | None = None


@dataclass(frozen=True)
class LockedPackage:
    """One pinned package of the lock."""

    name: str
    version: str
    index: str | None = None
    wheel: FileRef | None = None
    sdist: FileRef | None = None
    vcs: VcsRef | None = None
    requires_python: str | None = None
    dependencies: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def artifact(self) -> str:
        """What identifies this package's content: the file hash or the git commit."""
        if self.wheel:
            return f"sha256:{self.wheel.sha256}"
        if self.sdist:
            return f"sha256:{self.sdist.sha256}"
        assert self.vcs is not None
        return f"git:{self.vcs.commit_id}"


@dataclass(frozen=True)
class ModelFile:
    """One file of a pinned model, by its path in the model, size and hash."""

    path: str
    size: int
    sha256: str | None = None  # LFS files and https:// downloads: the content's sha256
    git_sha1: str | None = None  # hub files: the git blob id (of the LFS pointer for LFS)

    @property
    def etag(self) -> str | None:
        """The name the Hugging Face cache gives this file's blob."""
        return self.sha256 or self.git_sha1

    def as_dict(self) -> dict[str, Any]:
        """The file as the lock's and the GC roots' tables hold it."""
        return _present({"path": self.path, "size": self.size, "sha256": self.sha256,
                         "git-sha1": self.git_sha1})


class ModelRequest(Protocol):
    """What gpu.toml asks of a model (gpulock.manifest.Model): a pin answers one."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def include(self) -> tuple[str, ...]: ...
    @property
    def exclude(self) -> tuple[str, ...]: ...
    @property
    def extract(self) -> bool: ...


class SourceRules(Protocol):
    """What the kind of source a pin names requires of it (gpulock.sources has one per
    scheme)."""

    commits: bool  # the pin names a git commit
    git_ids: bool  # a file may be pinned by its git blob id alone
    one_file: bool  # one file, named by the URL: no folders

    def problem(self, source: str) -> str | None:
        """What is wrong with a source string of this kind, or None."""
        ...

    def revision_problem(self, revision: str) -> str | None:
        """What is wrong with a revision a model of this kind names, or None."""
        ...


@dataclass(frozen=True)
class PinnedModel:
    """A model pinned to exact files, as the lock and the store's roots hold it."""

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
        """The bytes of all its files."""
        return sum(f.size for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        """The pin as the lock's and the GC roots' tables hold it."""
        return _present({
            "name": self.name, "source": self.source, "revision": self.revision,
            "commit": self.commit, "include": list(self.include),
            "exclude": list(self.exclude), "weights": dict(self.weights),
            "extract": self.extract,
            "files": [f.as_dict() for f in sorted(self.files, key=lambda f: f.path)]})

    def problem(self, rules: SourceRules) -> str | None:
        """What makes this pin unsafe to lay out in a store (see gpulock.names), by the
        general rules and those of its kind of source, or None."""
        if problem := name_problem(self.name):
            return f"has a name that {problem}"
        if credentials_in(self.source):
            return "has a source URL with credentials (locks keep bare URLs)"
        if problem := login_problem(self.source):
            return f"has a source that {problem}"
        if problem := rules.problem(self.source):
            return f"has a source {shown(self.source)!r} that {problem}"
        if self.revision is not None and (problem := rules.revision_problem(self.revision)):
            return f"has a revision {self.revision!r} that {problem}"
        if rules.commits and hex_problem(self.commit or "", 40):
            return f"has a commit {self.commit!r} that {hex_problem(self.commit or '', 40)}"
        if not self.files:
            return "lists no file"
        return _files_problem(self, rules)

    def matches(self, model: ModelRequest, revision: str | None) -> bool:
        """Whether this pin was made for the same request (source, `revision` as the source
        reads the model's, filters)."""
        return (self.source, self.revision, self.include, self.exclude, self.extract) == (
            model.source, revision, model.include, model.exclude, model.extract)


def _files_problem(model: PinnedModel, rules: SourceRules) -> str | None:
    folders: set[str] = set()
    seen: set[str] = set()
    for file in model.files:
        where = f"lists a file {file.path!r}"
        problem = segment_problem(file.path) if rules.one_file else path_problem(file.path)
        if problem:
            return f"{where} that {problem}"
        if not 0 <= file.size <= FILE_LIMIT:
            return f"{where} of {file.size:,} bytes, not 0 to {FILE_LIMIT:,}"
        if file.sha256 is not None and (problem := hex_problem(file.sha256, 64)):
            return f"{where} whose sha256 {problem}"
        if file.git_sha1 is not None and (problem := hex_problem(file.git_sha1, 40)):
            return f"{where} whose git-sha1 {problem}"
        if not file.sha256 and not (file.git_sha1 and rules.git_ids):
            return f"{where} with no sha256"
        if file.path in seen:
            return f"{where} twice"
        seen.add(file.path)
        parts = file.path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    if clash := sorted(seen & folders):
        return f"lists {clash[0]!r} both as a file and as a folder"
    if rules.one_file and len(model.files) != 1:
        return "has a URL source but not exactly one file"
    return None


def _present(entry: dict[str, Any]) -> dict[str, Any]:
    """The lock leaves out what is empty, false or unknown (TOML has no null)."""
    return {key: value for key, value in entry.items()
            if key == "files" or not (value is None or value is False or value in ([], {}, ""))}


def model_from_table(entry: object, where: str) -> PinnedModel:
    """A pinned model from its lock (or GC root) table, refused in one sentence when any
    field has the wrong type; its rules are checked by whoever knows its source
    (gpulock.sources.checked)."""
    if not isinstance(entry, dict):
        raise LockfileError(f"{where} is not a table; run 'gpulock lock' to rewrite the lock")

    def value(table: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
        got = table.get(key, default)
        if got is default and key not in table:
            if default is _REQUIRED:
                raise LockfileError(f"{where} has no '{key}'; run 'gpulock lock' to rewrite "
                                    "the lock")
            return default
        if not isinstance(got, kind) or (kind is int and isinstance(got, bool)) or (
                isinstance(got, list) and not all(isinstance(v, (str, dict)) for v in got)):
            raise LockfileError(f"{where}: '{key}' has the wrong type; run 'gpulock lock' "
                                "to rewrite the lock")
        return got

    files = []
    for raw in value(entry, "files", list, _REQUIRED):
        if not isinstance(raw, dict):
            raise LockfileError(f"{where}: a file entry is not a table")
        files.append(ModelFile(value(raw, "path", str, _REQUIRED), value(raw, "size", int,
                                                                         _REQUIRED),
                               value(raw, "sha256", str), value(raw, "git-sha1", str)))
    return PinnedModel(
        name=value(entry, "name", str, _REQUIRED), source=value(entry, "source", str, _REQUIRED),
        revision=value(entry, "revision", str), commit=value(entry, "commit", str),
        include=tuple(_strings(value(entry, "include", list, []), where)),
        exclude=tuple(_strings(value(entry, "exclude", list, []), where)),
        files=tuple(files), weights=tuple(sorted(value(entry, "weights", dict, {}).items())),
        extract=value(entry, "extract", bool, False))


_REQUIRED = object()


def _strings(values: list[Any], where: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise LockfileError(f"{where}: include and exclude must be lists of strings")
    return values


@dataclass(frozen=True)
class Lock:
    """A whole lock: the target it was resolved for, the manifest it was made from, and
    every pin."""

    target: Target
    manifest_hash: str
    packages: tuple[LockedPackage, ...]
    models: tuple[PinnedModel, ...] = field(default=())  # parsed and checked once, at read

    def package(self, name: str) -> LockedPackage | None:
        """The pinned package of this (normalized) name, or None."""
        return next((p for p in self.packages if p.name == name), None)


def file_problem(ref: FileRef) -> str | None:
    """What makes a wheel or sdist reference unsafe to fetch or name a file by, or None: the
    lock's rules, also for a reference kept outside a lock (a store entry's origin, whose
    fields may be of any JSON type)."""
    for name, kind, said in (("name", str, "a string"), ("url", str, "a string"),
                             ("size", int, "a whole number"), ("sha256", str, "a string")):
        value = getattr(ref, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"has a {name} that is not {said}"
    if problem := segment_problem(ref.name):
        return f"is named {ref.name!r}, which {problem}"
    if problem := hex_problem(ref.sha256, 64):
        return f"has a sha256 that {problem}"
    if ref.size < 0:
        return "has a negative size"
    if credentials_in(ref.url):
        return "has a URL with credentials (locks keep bare URLs)"
    if not ref.url.startswith(("https://", "http://", "file://")):
        return "has a URL that is not https://, http:// or file://"
    if problem := url_problem(ref.url):
        return f"has a URL that {problem}"
    return None
