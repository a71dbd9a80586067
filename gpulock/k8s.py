"""Kubernetes manifests that sync a project into a cluster's shared volume: `gpulock k8s job`.

`job_manifests` renders, as data, the resources a cluster needs to run `gpulock sync
--frozen` for one project: a ConfigMap holding the project's gpu.toml and lock, a Job that
mounts it read-only beside a ReadWriteMany PersistentVolumeClaim at `/workspace` (the store
is `/workspace/.gpulock`, as on a pod), and, when asked, that claim. `dump` writes them as
one multi-document YAML with PyYAML, so every name and value is quoted by the YAML writer
and never pasted into a template.

Several projects' Jobs may run at once on one claim: their names carry the project, and the
store needs no locks. One project has one Job name, so Kubernetes itself keeps two syncs of
the same project (an old lock and a new one) from racing to switch its environment.

Nothing secret is written: gpu.toml goes into the ConfigMap with any `user:password@` of its
URLs left out (its manifest hash is unchanged, so the lock stays fresh), and credentials
reach the Job only from a Secret it names (every key as an environment variable, its `netrc`
key as the netrc file), which may be absent.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpulock import __version__
from gpulock.credentials import credentials_in, redact
from gpulock.errors import GpulockError, ManifestError
from gpulock.lock import lockfile
from gpulock.manifest import Manifest, parse

WORKSPACE = "/workspace"  # where the claim is mounted, as a pod's volume is
STORE = f"{WORKSPACE}/.gpulock"  # the store, where `gpulock sync` on a pod looks by default
PROJECTS = "/etc/gpulock/projects"  # each project's ConfigMap at PROJECTS/<project>/
CREDENTIALS = "/etc/gpulock/credentials"  # the Secret's netrc key, as CREDENTIALS/netrc
TOOLS = "/opt/gpulock"  # the venv the init container installs gpulock into (an emptyDir)
MANIFEST_KEY = "gpu.toml"
LOCK_KEY = lockfile.DEFAULT_NAME

DEFAULT_IMAGE = "python:3.12-slim"
DEFAULT_INSTALL = f"gpulock=={__version__}"
DEFAULT_PVC = "gpulock-store"
DEFAULT_PVC_SIZE = "500Gi"
DEFAULT_SECRET = "gpulock-credentials"

CONFIGMAP_LIMIT = 2**20  # what the API server accepts in a ConfigMap's data, in bytes
APPLY_ANNOTATION_LIMIT = 256 * 2**10  # client-side `kubectl apply` keeps a copy this small
TTL_SECONDS = 86_400  # a finished Job (and its pod's log) stays a day
BACKOFF_LIMIT = 2
LABELS = {"app.kubernetes.io/name": "gpulock", "app.kubernetes.io/component": "sync"}
DIGEST_ANNOTATION = "gpulock/digest"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
_PYTHON_IMAGE = re.compile(r"(?:docker\.io/)?(?:library/)?python:(3\.\d+)(?:\.\d+)?(?:-|$)")
_INSTALL_SCRIPT = (f'python3 -m venv {TOOLS} && exec {TOOLS}/bin/pip install --no-cache-dir '
                   '--disable-pip-version-check --progress-bar off "$1"')


@dataclass(frozen=True)
class JobOptions:
    """How the Job is made; the defaults are `gpulock k8s job`'s."""

    name: str | None = None  # the Job's and ConfigMap's name; None: gpulock-sync-<project>
    namespace: str | None = None  # None: kubectl's current namespace
    pvc: str = DEFAULT_PVC  # the ReadWriteMany claim mounted at /workspace
    create_pvc: bool = False  # also write that PersistentVolumeClaim
    pvc_size: str = DEFAULT_PVC_SIZE
    storage_class: str | None = None  # None: the cluster's default class
    image: str = DEFAULT_IMAGE
    install_gpulock: str | None = DEFAULT_INSTALL  # pip's requirement; None: in the image
    install_python: bool = True  # sync --install-python: the interpreter on the volume
    secret: str = DEFAULT_SECRET  # credentials: optional, every key an environment variable
    target: str | None = None  # one of gpu.toml's [targets]: the Job's pod has no GPU to tell


@dataclass(frozen=True)
class Rendered:
    """The resources for one project, in the order to create them, and notes for the user."""

    documents: list[dict[str, Any]]
    name: str
    notes: list[str] = field(default_factory=list)

    def yaml(self) -> str:
        return dump(self.documents)


def dns_label(text: str, limit: int = 63) -> str:
    """`text` as an RFC 1123 label (lowercase letters, digits, inner '-') of at most `limit`
    characters: `text` itself when it is one; else lowercased, every run of other characters
    one '-', cut to fit, with 8 hex digits of `text`'s sha256 after it, so that names which
    differ only in what was changed (`My_App`, `my.app`) stay apart."""
    if len(text) <= limit and _DNS_LABEL.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[: limit - len(digest) - 1]
    base = base.rstrip("-")
    return f"{base}-{digest}" if base else digest


def job_name(project: str) -> str:
    """The default name of a project's Job and ConfigMap: `gpulock-sync-<project>`."""
    prefix = "gpulock-sync-"
    return prefix + dns_label(project, 63 - len(prefix))


def label_value(text: str) -> str:
    """`text` as a label value: itself when it is one (a project name usually is), else its
    `dns_label`."""
    return text if len(text) <= 63 and _LABEL_VALUE.fullmatch(text) else dns_label(text)


def check_options(options: JobOptions) -> None:
    """Raise GpulockError, naming the flag, for a value Kubernetes would refuse."""
    names = [("--name", options.name, _DNS_LABEL, 63, "a DNS label"),
             ("--namespace", options.namespace, _DNS_LABEL, 63, "a DNS label"),
             ("--pvc", options.pvc, _DNS_SUBDOMAIN, 253, "a DNS subdomain"),
             ("--secret", options.secret, _DNS_SUBDOMAIN, 253, "a DNS subdomain"),
             ("--storage-class", options.storage_class, _DNS_SUBDOMAIN, 253,
              "a DNS subdomain")]
    for flag, value, rule, limit, kind in names:
        if value is not None and not (len(value) <= limit and rule.fullmatch(value)):
            raise GpulockError(f"{flag} {redact(value)!r} is not a Kubernetes name: it must be "
                               f"{kind} (lowercase letters, digits and '-', at most {limit} "
                               "characters, starting and ending with a letter or digit)")
    if not _QUANTITY.fullmatch(options.pvc_size):
        raise GpulockError(f"--pvc-size {options.pvc_size!r} is not a storage size like "
                           "500Gi or 2Ti")
    if not options.image or not options.image.isprintable() or " " in options.image:
        raise GpulockError(f"--image {redact(options.image)!r} is not an image reference "
                           "like python:3.12-slim")
    spec = options.install_gpulock
    if spec is not None and (not spec.strip() or not spec.isprintable()):
        raise GpulockError("--install-gpulock needs a pip requirement, like "
                           f"{DEFAULT_INSTALL!r}, or use --no-install-gpulock")
    for flag, value in (("--image", options.image), ("--install-gpulock", spec or "")):
        if credentials_in(value):
            raise GpulockError(f"{flag} holds a URL with credentials, which would be written "
                               "into the Job; put them in the Secret (PIP_INDEX_URL, or its "
                               "netrc key) instead")


def _check_image_python(spec: Manifest, options: JobOptions) -> None:
    """Refuse --no-install-python with an official python image of another minor version
    than the lock's: sync would find no interpreter for it (other images are not known)."""
    found = _PYTHON_IMAGE.match(options.image)
    wanted = ".".join(spec.project.python.split(".")[:2])
    if not options.install_python and found and found.group(1) != wanted:
        raise GpulockError(f"--image {options.image} has CPython {found.group(1)}, but the "
                           f"lock targets CPython {wanted}: use an image with {wanted}, or "
                           "leave out --no-install-python to install it into the store")


def config_files(spec: Manifest, lock_path: Path, target: str | None = None
                 ) -> tuple[dict[str, str], list[str]]:
    """The ConfigMap's data (gpu.toml and the lock) and notes for the user.

    The lock must exist and be fresh (a stale one is an error now, not a failed Job later);
    gpu.toml's URLs lose any user:password, checked to leave the manifest, and so its hash,
    unchanged; the two must fit in a ConfigMap."""
    lockfile.check(spec, lock_path)
    lock_text = lock_path.read_text(encoding="utf-8")
    if credentials_in(lock_text):  # lockfile.read refuses such URLs: never write one anyway
        raise GpulockError(f"{lock_path} holds a URL with credentials; it cannot go into a "
                           "ConfigMap")
    text = spec.path.read_text(encoding="utf-8")
    notes = []
    if credentials_in(text):
        bare = redact(text)
        try:
            same = parse(bare, spec.path)
        except ManifestError:
            same = None
        if same is not None and target:
            same = same.for_target(target)  # `spec` is gpu.toml as that target sees it
        if same is None or same != spec or same.content_hash != spec.content_hash:
            raise GpulockError(f"{spec.path} holds user:password in a URL that cannot be taken "
                               "out of its text safely; move the credentials to a netrc file "
                               "and leave the URLs bare")
        text = bare
        notes.append(f"{spec.path} holds user:password in a URL; the ConfigMap has the URL "
                     "without them: give the Job a netrc with them in its Secret (key "
                     "'netrc')")
    files = {MANIFEST_KEY: text, LOCK_KEY: lock_text}
    size = sum(len(value.encode()) for value in files.values())
    if size > CONFIGMAP_LIMIT:
        raise GpulockError(f"{spec.path} and {lock_path} are {size:,} bytes together, more "
                           f"than the {CONFIGMAP_LIMIT:,} bytes (1 MiB) a Kubernetes "
                           "ConfigMap holds")
    if size > APPLY_ANNOTATION_LIMIT:
        notes.append(f"the ConfigMap holds {size:,} bytes: apply it with 'kubectl apply "
                     "--server-side' or 'kubectl create' (client-side apply keeps a copy in "
                     "an annotation limited to 256 KiB)")
    return files, notes


def sync_command(project: str, options: JobOptions) -> list[str]:
    """The Job's container command line: `gpulock sync --frozen` on the mounted files."""
    folder = f"{PROJECTS}/{project}"
    gpulock = f"{TOOLS}/bin/gpulock" if options.install_gpulock is not None else "gpulock"
    return [gpulock, "sync", "--frozen", "--manifest", f"{folder}/{MANIFEST_KEY}",
            "--lock", f"{folder}/{LOCK_KEY}", "--store", STORE,
            *(["--target", options.target] if options.target else []),
            *(["--install-python"] if options.install_python else [])]


def job_manifests(spec: Manifest, lock_path: Path, options: JobOptions) -> Rendered:
    """The PersistentVolumeClaim (with `create_pvc`), ConfigMap and Job that sync `spec`'s
    project from its lock into the claim's store."""
    check_options(options)
    _check_image_python(spec, options)
    files, notes = config_files(spec, lock_path, options.target)
    project = spec.project.name
    name = options.name or job_name(project)
    labels = {**LABELS, "app.kubernetes.io/instance": label_value(project)}
    digest = hashlib.sha256(json.dumps([files, asdict(options)], sort_keys=True).encode())

    def metadata(resource: str, labelled: dict[str, str]) -> dict[str, Any]:
        found: dict[str, Any] = {"name": resource}
        if options.namespace:
            found["namespace"] = options.namespace
        found["labels"] = labelled
        return found

    documents: list[dict[str, Any]] = []
    if options.create_pvc:
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": options.pvc_size}},
        }
        if options.storage_class:
            claim["storageClassName"] = options.storage_class
        documents.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                          # Shared by every project's Job: no instance label.
                          "metadata": metadata(options.pvc, {
                              **LABELS, "app.kubernetes.io/component": "store"}),
                          "spec": claim})
    documents.append({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": metadata(name, labels), "data": files})
    documents.append({"apiVersion": "batch/v1", "kind": "Job",
                      "metadata": metadata(name, labels),
                      "spec": {
                          "backoffLimit": BACKOFF_LIMIT,
                          "ttlSecondsAfterFinished": TTL_SECONDS,
                          "template": {
                              "metadata": {"labels": labels,
                                           "annotations": {
                                               DIGEST_ANNOTATION: f"sha256:{digest.hexdigest()}"}},
                              "spec": _pod(project, name, options)}}})
    text = dump(documents)
    if redact(text) != text:  # every value was checked above: this is the last guard
        raise GpulockError("the manifests would hold a URL with credentials; nothing was "
                           "written")
    return Rendered(documents=documents, name=name, notes=notes)


def _pod(project: str, config_map: str, options: JobOptions) -> dict[str, Any]:
    """The Job's pod: an optional init container installing gpulock into an emptyDir venv,
    then `gpulock sync --frozen` as a container with no privileges it does not need."""
    credentials: dict[str, Any] = {"name": "credentials", "mountPath": CREDENTIALS,
                                   "readOnly": True}
    mounts: list[dict[str, Any]] = [
        {"name": "project", "mountPath": f"{PROJECTS}/{project}", "readOnly": True},
        credentials]
    volumes: list[dict[str, Any]] = [
        {"name": "project", "configMap": {"name": config_map, "defaultMode": 0o444}},
        {"name": "credentials", "secret": {"secretName": options.secret, "optional": True,
                                           "defaultMode": 0o400,
                                           "items": [{"key": "netrc", "path": "netrc"}]}},
        {"name": "store", "persistentVolumeClaim": {"claimName": options.pvc}},
    ]

    def container(name: str, command: list[str], mounted: list[dict[str, Any]],
                  cpu: str, memory: str) -> dict[str, Any]:
        return {"name": name, "image": options.image, "command": command[:1],
                "args": command[1:],
                "env": [{"name": "NETRC", "value": f"{CREDENTIALS}/netrc"}],
                "envFrom": [{"secretRef": {"name": options.secret, "optional": True}}],
                "volumeMounts": mounted,
                "resources": {"requests": {"cpu": cpu, "memory": memory}},
                "securityContext": {"privileged": False, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}}}

    init: list[dict[str, Any]] = []
    if options.install_gpulock is not None:
        volumes.append({"name": "tools", "emptyDir": {}})
        tools: dict[str, Any] = {"name": "tools", "mountPath": TOOLS}
        init.append(container("install-gpulock", ["sh", "-c", _INSTALL_SCRIPT,
                                                  "install-gpulock", options.install_gpulock],
                              [credentials, tools], "250m", "256Mi"))
        mounts = [*mounts, tools]
    sync = container("sync", sync_command(project, options),
                     [*mounts, {"name": "store", "mountPath": WORKSPACE}], "500m", "1Gi")
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # sync never talks to the API server
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if init:
        pod["initContainers"] = init
    pod["containers"] = [sync]
    pod["volumes"] = volumes
    return pod


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe writer; text of several lines (gpu.toml, the lock) as a literal block
    when YAML can hold it as one, else quoted by PyYAML's own rules; no anchors or aliases
    for values used twice (a reader, and kubectl, sees each spelled out)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# YAML 1.1 (PyYAML, and the libyaml ports) reads NEL, LS and PS as line breaks: in a literal
# block or a plain or single-quoted scalar, NEL (valid in a gpu.toml comment) would read back as
# "\n". A double-quoted scalar writes the three as the escapes \N, \L and \P instead.
_OTHER_BREAKS = frozenset("\x85\u2028\u2029")


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = None
    if not _OTHER_BREAKS.isdisjoint(value):
        style = '"'
    elif "\n" in value:
        style = "|"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def dump(documents: list[dict[str, Any]]) -> str:
    """`documents` as one multi-document YAML stream, keys in the order given; read back,
    it is `documents` again (checked)."""
    text = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, explicit_start=True,
                         allow_unicode=True, width=2**16)
    if list(yaml.safe_load_all(text)) != documents:
        raise AssertionError("gpulock.k8s: the YAML written does not read back the same")
    return str(text)
