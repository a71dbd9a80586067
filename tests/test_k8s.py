"""`gpulock k8s job`: Kubernetes manifests that sync a project into a shared claim.

The YAML is checked against the schemas of every Kubernetes version the installed
kubernetes-validate ships (strict: an unknown field is an error), and the Job is run: its
ConfigMap's files are laid out as the kubelet mounts them, in a folder that stands for the
container's root, and its container's command line and environment variables are run
unchanged but for two things: the absolute paths `/etc/gpulock` and `/workspace` are
re-rooted under that folder, and the init container's `pip install gpulock` is skipped
(this test's own gpulock is installed: `Path(sys.executable).parent / "gpulock"` stands for
`/opt/gpulock/bin/gpulock`). When `setpriv` is there, the command runs as the container's
securityContext asks: no capabilities, no new privileges, so the read-only ConfigMap
cannot be written even by root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes_validate import utils as kv_utils

from gpulock import __version__, k8s
from gpulock.cli import main
from tests.conftest import Project
from tests.support.dists import make_wheel
from tests.support.python_mirror import ARCH
from tests.test_install_python import archive, home, mirror  # noqa: F401 (fixtures)

HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# The Job built on its image's CPython, this machine's version (as python:X.Y-slim has it).
IMAGE_PYTHON = ("--no-install-python", "--image", f"python:{HOST_PYTHON}-slim")
GPULOCK = Path(sys.executable).parent / "gpulock"  # stands for the init container's install
SETPRIV = shutil.which("setpriv")
VERSIONS = sorted(set(kv_utils.all_versions()), key=lambda v: tuple(map(int, v.split("."))))
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
HELLO = b"def main():\n    print('hello from the claim')\n"
CACHE = ('[cache]\nsubstituters = ["s3://team-cache/gpulock?endpoint=https://minio.example:9000"]'
         '\ntrusted-keys = ["team-cache-1:Tz0mRHMgMyoUMD8Ic6Ul/1wG0P5Yb4sqsk1Yx8VY6Cw="]\n')


def _project(project: Project, index_url: str, *, name: str = "demo",
             python: str = HOST_PYTHON, extra: str = "") -> None:
    project.write(f'[project]\nname = "{name}"\npython = "{python}"\n'
                  f'platform = "linux_{ARCH}"\nindex = "{index_url}"\n'
                  f'[groups.main]\npackages = ["hello-app"]\n{extra}')


def _index(make_index: Any, **options: Any) -> Any:
    index = make_index(**options)
    make_wheel(index.folder, "hello-app", "1.0", files={"hello_app/__init__.py": HELLO},
               entry_points="[console_scripts]\nhello-app = hello_app:main\n")
    return index


def _k8s(project: Project, *args: str) -> tuple[int, str, str]:
    """`gpulock k8s job --manifest <project's gpu.toml> ARGS`, in-process."""
    project.capsys.readouterr()
    code = main(["k8s", "job", "--manifest", str(project.manifest), *args])
    captured = project.capsys.readouterr()
    return code, captured.out, captured.err


def _render(project: Project, *args: str) -> list[dict[str, Any]]:
    code, out, err = _k8s(project, *args)
    assert code == 0, err
    return list(yaml.safe_load_all(out))


def _kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(doc for doc in documents if doc["kind"] == kind)


def _validate(documents: list[dict[str, Any]]) -> None:
    for version in VERSIONS:
        for doc in documents:
            kubernetes_validate.validate(doc, version, strict=True)


# -- the YAML: valid for every Kubernetes version, as a Kubernetes user expects -------------

VARIANTS = {
    "defaults": (),
    "create-pvc": ("--create-pvc", "--pvc", "shared-store", "--pvc-size", "2Ti",
                   "--storage-class", "efs-sc", "--namespace", "ml-team"),
    "image-with-gpulock": ("--image", "registry.example/team/gpulock:0.1.0",
                           "--no-install-gpulock", "--no-install-python", "--name", "sync-it",
                           "--secret", "team-credentials"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_yaml_validates_for_every_kubernetes_version_kubernetes_validate_ships(
        make_index, project: Project, variant: str):
    assert len(VERSIONS) >= 10 and VERSIONS[0] == "1.25.0", VERSIONS  # 1.25 ... 1.37 today
    _project(project, _index(make_index).url, extra=CACHE)
    project.lock()
    documents = _render(project, *VARIANTS[variant])
    _validate(documents)
    kinds = [doc["kind"] for doc in documents]
    assert kinds == (["PersistentVolumeClaim", "ConfigMap", "Job"] if variant == "create-pvc"
                     else ["ConfigMap", "Job"])
    config, job = _kind(documents, "ConfigMap"), _kind(documents, "Job")
    assert config["data"] == {"gpu.toml": project.manifest.read_text(),
                              "pylock.gpu.toml": project.lock_path.read_text()}
    assert job["metadata"]["name"] == config["metadata"]["name"] == (
        "sync-it" if variant == "image-with-gpulock" else "gpulock-sync-demo")
    labels = {"app.kubernetes.io/name": "gpulock", "app.kubernetes.io/instance": "demo",
              "app.kubernetes.io/component": "sync"}
    assert job["metadata"]["labels"] == config["metadata"]["labels"] == labels
    spec = job["spec"]
    assert spec["backoffLimit"] == 2 and spec["ttlSecondsAfterFinished"] == 86400
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == labels
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        assert container["securityContext"] == {"privileged": False,
                                                "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}}
        assert set(container["resources"]) == {"requests"}
    (sync,) = pod["containers"]
    secret = "team-credentials" if variant == "image-with-gpulock" else "gpulock-credentials"
    assert sync["envFrom"] == [{"secretRef": {"name": secret, "optional": True}}]
    assert sync["env"] == [{"name": "NETRC", "value": "/etc/gpulock/credentials/netrc"}]
    mounts = {m["mountPath"]: m for m in sync["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/etc/gpulock/projects/demo"]["readOnly"] is True
    assert volumes[mounts["/etc/gpulock/projects/demo"]["name"]]["configMap"]["name"] == (
        config["metadata"]["name"])
    claim = volumes[mounts["/workspace"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == ("shared-store" if variant == "create-pvc" else "gpulock-store")
    command = [*sync["command"], *sync["args"]]
    if variant == "image-with-gpulock":
        assert "initContainers" not in pod and "tools" not in volumes
        assert sync["image"] == "registry.example/team/gpulock:0.1.0"
        assert command[:3] == ["gpulock", "sync", "--frozen"] and "--install-python" not in command
    else:
        (install,) = pod["initContainers"]
        assert install["command"][0] == "sh" and install["args"][-1] == f"gpulock=={__version__}"
        assert command[0] == "/opt/gpulock/bin/gpulock" and command[-1] == "--install-python"
        assert sync["image"] == install["image"] == "python:3.12-slim"
    assert command[1:9] == ["sync", "--frozen", "--manifest",
                            "/etc/gpulock/projects/demo/gpu.toml", "--lock",
                            "/etc/gpulock/projects/demo/pylock.gpu.toml", "--store",
                            "/workspace/.gpulock"]
    if variant == "create-pvc":
        pvc = documents[0]
        assert pvc["metadata"] == {"name": "shared-store", "namespace": "ml-team",
                                   "labels": {"app.kubernetes.io/name": "gpulock",
                                              "app.kubernetes.io/component": "store"}}
        assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "efs-sc",
                               "resources": {"requests": {"storage": "2Ti"}}}
        assert {doc["metadata"]["namespace"] for doc in documents} == {"ml-team"}


def test_strict_validation_would_catch_a_mistake(make_index, project: Project):
    """The check above has teeth: a misspelt field or a wrong type is refused."""
    _project(project, _index(make_index).url)
    project.lock()
    job = _kind(_render(project), "Job")
    job["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[0], strict=True)
    del job["spec"]["template"]["spec"]["containers"][0]["volumeMount"]
    job["spec"]["backoffLimit"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_out_writes_the_same_yaml_to_a_file(make_index, project: Project, tmp_path: Path):
    _project(project, _index(make_index).url)
    project.lock()
    code, out, err = _k8s(project, "--out", str(tmp_path / "job.yaml"))
    assert code == 0 and out == "", err
    assert "kubectl apply --server-side -f" in err
    assert (tmp_path / "job.yaml").read_text() == _k8s(project)[1]


# -- the Job, run: its command line and environment sync the project --------------------------

def _reroot(value: str, root: Path) -> str:
    """`value` with a leading /etc/gpulock or /workspace put under `root`: the only change."""
    return re.sub(r"^(/etc/gpulock|/workspace)(?=/|$)", lambda m: f"{root}{m.group(1)}", value)


def _mount_config_map(documents: list[dict[str, Any]], root: Path) -> None:
    """The ConfigMap's files where the Job mounts them, laid out as the kubelet does (files in
    a timestamped folder, `..data` linking to it, each key a link through `..data`), with the
    volume's defaultMode and a folder nobody may write to."""
    job = _kind(documents, "Job")
    pod = job["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    data = next(doc for doc in documents if doc["kind"] == "ConfigMap"
                and doc["metadata"]["name"] == volume["configMap"]["name"])["data"]
    folder = Path(_reroot(mount["mountPath"], root))
    stamped = folder / "..2099_01_01_00_00_00.000000001"
    stamped.mkdir(parents=True)
    for key, text in data.items():
        (stamped / key).write_text(text)
        (stamped / key).chmod(volume["configMap"]["defaultMode"])
        (folder / key).symlink_to(Path("..data") / key)
    (folder / "..data").symlink_to(stamped.name)
    stamped.chmod(0o555)
    folder.chmod(0o555)


def _job_process(documents: list[dict[str, Any]], root: Path) -> tuple[list[str], dict[str, str]]:
    """The sync container's command line and environment, re-rooted under `root`."""
    (sync,) = _kind(documents, "Job")["spec"]["template"]["spec"]["containers"]
    command = [_reroot(part, root) for part in [*sync["command"], *sync["args"]]]
    assert command[0] in ("/opt/gpulock/bin/gpulock", "gpulock")
    command[0] = str(GPULOCK)  # the init container's pip install, already done here
    environ = {**os.environ, **{e["name"]: _reroot(e["value"], root) for e in sync["env"]}}
    if SETPRIV:  # the securityContext: capabilities dropped, no privilege escalation
        command = [SETPRIV, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
                   "--", *command]
    return command, environ


def _run_job(documents: list[dict[str, Any]], root: Path) -> subprocess.CompletedProcess[str]:
    _mount_config_map(documents, root)
    command, environ = _job_process(documents, root)
    (root / "workspace").mkdir(parents=True, exist_ok=True)  # the claim, mounted
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=600,
                          cwd=root)


def _run_in_environment(root: Path, project: str, *command: str) -> str:
    """`gpulock run` on the synced environment, as a pod mounting the claim would."""
    manifest = root / "etc" / "gpulock" / "projects" / project / "gpu.toml"
    ran = subprocess.run([str(GPULOCK), "run", "--manifest", str(manifest), "--store",
                          str(root / "workspace" / ".gpulock"), "--", *command],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def _python(request: pytest.FixtureRequest, python: str) -> tuple[str, tuple[str, ...]]:
    """The lock's CPython and the flags for it: by default installed into the store by uv
    (from a mirror on 127.0.0.1), else the image's, this machine's."""
    if python == "install-python":
        target = request.getfixturevalue("archive").minor
        request.getfixturevalue("mirror")
        return target, ()
    return HOST_PYTHON, IMAGE_PYTHON


@pytest.mark.parametrize("python", ["install-python", "image-python"])
def test_the_jobs_command_in_a_container_like_folder_syncs_the_project(
        make_index, project: Project, tmp_path: Path, request: pytest.FixtureRequest,
        python: str):
    target, args = _python(request, python)
    _project(project, _index(make_index).url, python=target)
    project.lock()
    documents = _render(project, *args)
    root = tmp_path / "root"
    ran = _run_job(documents, root)
    assert ran.returncode == 0, ran.stderr
    assert "generation 1 of 'demo' is current" in ran.stderr
    store = root / "workspace" / ".gpulock" / "v1"
    current = store / "envs" / "demo" / "current"
    assert current.is_symlink() and (current / "gpulock-generation.json").is_file()
    python_on_volume = sorted((store / "python").glob("cpython-*/bin/python3.*"))
    assert bool(python_on_volume) is (python == "install-python")
    assert _run_in_environment(root, "demo", "python", "-c",
                               "import hello_app; print(hello_app.__name__)") == "hello_app\n"
    assert _run_in_environment(root, "demo", "hello-app") == "hello from the claim\n"
    command, environ = _job_process(documents, root)
    again = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "'demo' is up to date" in again.stderr, again.stderr


@pytest.mark.parametrize("python", ["install-python", "image-python"])
def test_two_projects_jobs_run_at_once_on_one_claim(make_index, project: Project,
                                                    tmp_path: Path, capsys,
                                                    request: pytest.FixtureRequest,
                                                    python: str):
    target, args = _python(request, python)
    index = _index(make_index)
    make_wheel(index.folder, "other-app", "2.0")
    other = Project(tmp_path / "other", capsys)
    other.root.mkdir()
    _project(project, index.url, name="demo", python=target)
    other.write(f'[project]\nname = "Other_App"\npython = "{target}"\n'
                f'platform = "linux_{ARCH}"\nindex = "{index.url}"\n'
                '[groups.main]\npackages = ["hello-app", "other-app"]\n')
    rendered = []
    for each in (project, other):
        each.lock()
        rendered.append(_render(each, *args))
    names = [_kind(docs, "Job")["metadata"]["name"] for docs in rendered]
    assert names[0] == "gpulock-sync-demo" and names[1].startswith("gpulock-sync-other-app-")
    root = tmp_path / "root"
    (root / "workspace").mkdir(parents=True)
    running = []
    for docs in rendered:
        _mount_config_map(docs, root)
        command, environ = _job_process(docs, root)
        running.append(subprocess.Popen(command, env=environ, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    for process in running:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    assert _run_in_environment(root, "demo", "hello-app") == "hello from the claim\n"
    assert _run_in_environment(root, "Other_App", "python", "-c",
                               "import hello_app, other_app; print(other_app.VERSION)") == "2.0\n"
    store = root / "workspace" / ".gpulock" / "v1"
    assert len([p for p in (store / "pkgs").iterdir() if "hello" in p.name]) == 1
    installed = sorted(p.name for p in (store / "python").glob("cpython-3.*.*-linux-*-gnu")
                       if not p.is_symlink())  # uv's cpython-3.X-... links name the same one
    assert len(installed) == (1 if python == "install-python" else 0), installed


def test_a_private_index_reaches_the_job_through_the_secrets_netrc_never_the_yaml(
        make_index, project: Project, tmp_path: Path):
    index = _index(make_index, auth=("deploy", "s3cret-Pa55"))
    _project(project, index.url.replace("://", "://deploy:s3cret-Pa55@"))
    project.lock()
    code, out, err = _k8s(project, *IMAGE_PYTHON)
    assert code == 0, err
    assert "s3cret-Pa55" not in out and "deploy" not in out
    assert "note:" in err and "'netrc'" in err and "s3cret" not in err
    documents = list(yaml.safe_load_all(out))
    _validate(documents)
    assert _kind(documents, "ConfigMap")["data"]["gpu.toml"] == (
        project.manifest.read_text().replace("deploy:s3cret-Pa55@", ""))
    root = tmp_path / "root"
    # The Secret's netrc key, where the Job mounts it (NETRC names it).
    secret = root / "etc" / "gpulock" / "credentials"
    secret.mkdir(parents=True)
    (secret / "netrc").write_text("machine 127.0.0.1 login deploy password s3cret-Pa55\n")
    index.authorizations.clear()
    ran = _run_job(documents, root)
    assert ran.returncode == 0, ran.stderr
    assert index.authorizations and all(a.startswith("Basic ") for a in index.authorizations)
    assert _run_in_environment(root, "demo", "hello-app") == "hello from the claim\n"


# -- what is refused, and names Kubernetes accepts ----------------------------------------

def test_a_stale_lock_is_refused_not_a_job_that_fails_later(make_index, project: Project):
    _project(project, _index(make_index).url)
    project.lock()
    project.write(project.manifest.read_text().replace('["hello-app"]', '["hello-app", "x"]'))
    code, out, err = _k8s(project)
    assert code == 1 and out == ""
    assert "is stale" in err and "gpulock lock" in err


def test_a_missing_lock_is_refused(make_index, project: Project):
    _project(project, _index(make_index).url)
    code, out, err = _k8s(project)
    assert code == 1 and out == "" and "Traceback" not in err


def test_a_configmap_over_1_mib_is_refused_and_over_256_kib_gets_a_note(make_index,
                                                                        project: Project):
    _project(project, _index(make_index).url)
    project.lock()
    text = project.manifest.read_text()
    lock_size = project.lock_path.stat().st_size
    # Comments leave the manifest hash, and so the lock, as they were.
    pad = k8s.CONFIGMAP_LIMIT - lock_size - len(text.encode())
    project.write(text + "#" * (pad - 1) + "\n")
    code, out, err = _k8s(project)
    assert code == 0, err
    assert "kubectl apply --server-side" in err
    _validate(list(yaml.safe_load_all(out)))
    project.write(text + "#" * pad + "\n")
    code, out, err = _k8s(project)
    assert code == 1 and out == ""
    assert err == (f"error: {project.manifest} and {project.lock_path} are "
                   f"{k8s.CONFIGMAP_LIMIT + 1:,} bytes together, more than the "
                   f"{k8s.CONFIGMAP_LIMIT:,} bytes (1 MiB) a Kubernetes ConfigMap holds\n")


@pytest.mark.parametrize("name", ["My_Project", "torch.cu121", "UPPER", "9lives", "a_",
                                  "x" * 128, "a" + ".b" * 60, "ok-already"])
def test_project_names_that_are_not_dns_labels_give_valid_names(make_index, project: Project,
                                                               name: str):
    _project(project, _index(make_index).url, name=name)
    project.lock()
    documents = _render(project)
    _validate(documents)
    job = _kind(documents, "Job")
    job_name = job["metadata"]["name"]
    assert DNS_LABEL.fullmatch(job_name) and len(job_name) <= 63
    instance = job["metadata"]["labels"]["app.kubernetes.io/instance"]
    assert LABEL_VALUE.fullmatch(instance) and len(instance) <= 63
    if name == "ok-already":
        assert job_name == "gpulock-sync-ok-already" and instance == "ok-already"
    if name == "My_Project":
        assert instance == "My_Project" and job_name.startswith("gpulock-sync-my-project-")


def test_names_that_differ_only_in_what_was_changed_stay_apart():
    names = ["My_App", "my-app", "my.app", "MY_APP", "my__app"]
    assert len({k8s.job_name(n) for n in names}) == len(names)
    assert len({k8s.label_value(n) for n in names}) == len(names)
    long = ["x" * 127 + "a", "x" * 127 + "b"]
    assert len({k8s.job_name(n) for n in long}) == 2


@settings(max_examples=300, deadline=None)
@given(name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True))
def test_every_project_name_gives_a_dns_label_job_name(name: str):
    job_name = k8s.job_name(name)
    assert DNS_LABEL.fullmatch(job_name) and len(job_name) <= 63
    value = k8s.label_value(name)
    assert LABEL_VALUE.fullmatch(value) and len(value) <= 63


@pytest.mark.parametrize(("args", "says"), [
    (("--name", "Sync_Demo"), "--name 'Sync_Demo' is not a Kubernetes name"),
    (("--namespace", "a" * 64), "--namespace"),
    (("--pvc", "Store"), "--pvc 'Store' is not a Kubernetes name"),
    (("--pvc-size", "1Ti"), "--pvc-size describes a claim to create: add --create-pvc"),
    (("--storage-class", "efs"), "--storage-class describes a claim to create"),
    (("--create-pvc", "--pvc-size", "lots"), "--pvc-size 'lots' is not a storage size"),
    (("--image", "two words"), "--image 'two words' is not an image reference"),
    (("--install-gpulock", " "), "--install-gpulock needs a pip requirement"),
    (("--install-gpulock", "gpulock @ https://u:hunter2@files.example/gpulock.whl"),
     "--install-gpulock holds a URL with credentials"),
])
def test_bad_options_are_one_sentence_naming_the_flag(make_index, project: Project,
                                                      args: tuple[str, ...], says: str):
    _project(project, _index(make_index).url)
    project.lock()
    code, out, err = _k8s(project, *args)
    assert code == 1 and out == "", err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1
    assert "hunter2" not in err


def test_the_image_python_must_be_the_locks_when_it_is_not_installed(make_index,
                                                                    project: Project):
    _project(project, _index(make_index).url, python="3.10")
    project.lock()
    code, out, err = _k8s(project, "--no-install-python", "--image", "python:3.12-slim")
    assert code == 1 and out == ""
    assert err == ("error: --image python:3.12-slim has CPython 3.12, but the lock targets "
                   "CPython 3.10: use an image with 3.10, or leave out --no-install-python to "
                   "install it into the store\n")
    for fine in (("--no-install-python", "--image", "python:3.10.14-bookworm"),
                 ("--no-install-python", "--image", "registry.example/cuda-py:3.12"),
                 ("--image", "python:3.12-slim")):
        assert _k8s(project, *fine)[0] == 0, fine


def test_no_credential_from_a_url_appears_in_the_output(make_index, project: Project):
    index = _index(make_index, auth=("ci", "tok3n-pw"))
    private = index.url.replace("://", "://ci:tok3n-pw@")
    _project(project, private, extra=CACHE + "[groups.extra]\n"
             f'index = "{private}"\npackages = []\n')
    project.lock()
    code, out, err = _k8s(project, "--create-pvc")
    assert code == 0, err
    assert "tok3n" not in out and "tok3n" not in err
    assert f'index = "{index.url}"' in out  # the bare URL, in gpu.toml
    _validate(list(yaml.safe_load_all(out)))


def test_credentials_that_cannot_be_taken_out_cleanly_are_refused(make_index, project: Project):
    """A '://' and an '@' in one inline table look like a URL's login to the redactor; taking
    it out would change the manifest, so nothing is written."""
    _project(project, _index(make_index).url)
    project.write(project.manifest.read_text().replace(
        'packages = ["hello-app"]', 'packages = ["hello-app"]\n'
        'env = {A="x://h",B="mail@example.com"}'))
    project.lock()
    code, out, err = _k8s(project)
    assert code == 1 and out == ""
    assert "cannot be taken out of its text safely" in err


def test_k8s_without_a_kind_shows_its_help(capsys):
    assert main(["k8s"]) == 2
    assert "job" in capsys.readouterr().err
