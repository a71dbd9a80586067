"""gpulock vs uv, side by side, in one run, on the same manifests.

    .venv/bin/python bench/bench.py [--runs 3] [--only lock|proxy|sync|models|cache|volume
                                               |coldstart]

Each step runs as a child process; wall time is the median of --runs runs, peak memory
is the child's maximum RSS (wait4), filesystem operations are the syscalls strace counts
in its `%file` class (open, stat, link, symlink, mkdir, rename, unlink...), children
included. Cold steps start from empty caches and stores.

lock: `gpulock lock` vs `uv pip compile` on the requirements of --manifest and of
--big-manifest (the groups uv can express: no_deps groups and non-PyPI group indexes are
left out of both sides), same target (x86_64-manylinux, the manifest's Python), and whether
both pinned the same versions.

proxy: through tinyproxy on 127.0.0.1 (HTTPS_PROXY), a cold lock of --big-manifest and a
cold sync of wheels from PyPI, gpulock vs uv, with the CONNECT tunnels each opened as the
proxy's log counts them; one run.

sync: `gpulock sync` vs `uv pip sync` of the same PEP 751 lock, made from --sync-manifest
(default: the real torch 2.13.0+cpu wheel and transformers from the local mirror, which
needs no network).

cache: `gpulock push` of the synced --sync-manifest store to a SeaweedFS on 127.0.0.1, then
a cold `gpulock sync` of an empty store from that cache alone, against the same cold sync
from the index.

coldstart: a serverless worker's cold start on a FUSE volume with latency (latencyfs), from
a fresh mount with the page cache dropped: `import torch, transformers` and a model's
config and weights read from the HF view; the farm as a worker sees it, its `local-start`
pack unpacked to local disk, a uv venv on the same volume and that venv on local disk.

models: `gpulock sync --models-only` vs `huggingface_hub.snapshot_download` of the same
repository from one fake hub on 127.0.0.1, in two cases: 4 safetensors shards and a config
(--model-mib in all), and one file (--big-mib). The hub (a Python process of its own)
answers the API and redirects each LFS file to nginx, when installed, which sends the bytes;
curl fetching the same URLs and sha256 over the same files are the floor. Benchmarks are
not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from uv import find_uv_bin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

from gpulock.env.interpreter import find_python  # noqa: E402
from gpulock.lock import lockfile  # noqa: E402
from gpulock.manifest import DEFAULT_INDEX, Manifest, load  # noqa: E402


@dataclass
class Sample:
    seconds: float
    peak_mib: float


def measure(command: list[str], env: dict[str, str], cwd: Path) -> Sample:
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(command)}\n{stderr}")
    return Sample(elapsed, usage.ru_maxrss / 1024)


def repeat(runs: int, prepare: Callable[[], None], command: list[str], env: dict[str, str],
           cwd: Path) -> Sample:
    samples = []
    for _ in range(runs):
        prepare()
        samples.append(measure(command, env, cwd))
    return Sample(statistics.median(s.seconds for s in samples),
                  max(s.peak_mib for s in samples))


def fs_operations(command: list[str], env: dict[str, str], cwd: Path) -> int | None:
    """File-class syscalls of the command and its children, or None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        subprocess.run([strace, "-f", "-c", "-e", "trace=%file", "-o", out.name, *command],
                       cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        lines = Path(out.name).read_text().splitlines()
    total = next((line for line in reversed(lines) if line.rstrip().endswith("total")), "")
    return int(total.split()[3]) if total else None  # % time, seconds, usecs/call, calls


def nothing() -> None:
    """A step that needs no preparation."""
    return None


class Preparations(NamedTuple):
    """What the sync steps start from, for gpulock's `store` and uv's `venv` and
    `uv-cache` in one folder (a volume's backing folder: preparing is not measured)."""

    cold_gp: Callable[[], None]     # no store
    cold_uv: Callable[[], None]     # no cache, an empty venv
    fresh_venv: Callable[[], None]  # an empty venv, the cache kept
    drop_envs: Callable[[], None]   # the store's entries kept, no environments


def preparations(folder: Path, python: str, env: dict[str, str]) -> Preparations:
    def fresh_venv() -> None:
        shutil.rmtree(folder / "venv", ignore_errors=True)
        subprocess.run([find_uv_bin(), "venv", "-q", "--python", python, str(folder / "venv")],
                       env=env, check=True)

    def cold_uv() -> None:
        shutil.rmtree(folder / "uv-cache", ignore_errors=True)
        fresh_venv()

    return Preparations(
        cold_gp=lambda: shutil.rmtree(folder / "store", ignore_errors=True),
        cold_uv=cold_uv, fresh_venv=fresh_venv,
        drop_envs=lambda: shutil.rmtree(folder / "store" / "v1" / "envs", ignore_errors=True))


class LockBench(NamedTuple):
    """gpulock and uv set up in `work` to lock the same requirements for the same target:
    gpulock from this checkout, uv with no config and no interpreter downloads."""

    requirements: list[str]
    target: str
    work: Path
    env_gp: dict[str, str]
    env_uv: dict[str, str]
    gpulock: list[str]
    uv: list[str]

    @property
    def lock_file(self) -> Path:
        return self.work / "pylock.gpu.toml"

    @property
    def uv_out(self) -> Path:
        return self.work / "requirements.txt"

    def cold(self) -> tuple[Callable[[], None], Callable[[], None]]:
        """Preparations for gpulock and for uv: no cache, no earlier output."""
        return (removed(self.work / "gpulock-cache", self.lock_file),
                removed(self.work / "uv-cache", self.uv_out))

    def proxied(self, proxy: str) -> LockBench:
        """The same set-up with every request through the forward proxy `proxy`."""
        def through(env: dict[str, str]) -> dict[str, str]:
            names = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
            kept = {k: v for k, v in env.items() if k.lower() not in ("no_proxy", "all_proxy")}
            return {**kept, **dict.fromkeys(names, proxy)}
        return self._replace(env_gp=through(self.env_gp), env_uv=through(self.env_uv))


def removed(*paths: Path) -> Callable[[], None]:
    """A step's preparation: `paths` (folders or files) removed."""
    def remove() -> None:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return remove


def lock_bench(manifest_path: Path) -> LockBench:
    """A new work folder locking the requirements of `manifest_path` that uv can express
    (no_deps groups and non-PyPI group indexes are left out of both sides)."""
    manifest = load(manifest_path)
    groups = [g for g in manifest.groups if not g.no_deps and g.index in (None, DEFAULT_INDEX)]
    requirements = [str(r) for g in groups for r in g.packages]
    work = Path(tempfile.mkdtemp(prefix="gpulock-bench-"))
    project = manifest.project
    toml = (f'[project]\nname = "bench"\npython = "{project.python}"\n'
            f'glibc = "{project.glibc}"\n'
            + (f'cuda = "{project.cuda}"\n' if project.cuda else "")
            + "[groups.all]\npackages = [" + ", ".join(f'"{r}"' for r in requirements) + "]\n")
    (work / "gpu.toml").write_text(toml)
    (work / "requirements.in").write_text("\n".join(requirements) + "\n")
    # Never let uv fetch an interpreter (that measures GitHub, not resolution): hand it the
    # target's CPython when this machine has one, as gpulock finds it.
    env = {**os.environ, "GPULOCK_CACHE": str(work / "gpulock-cache"),
           "UV_CACHE_DIR": str(work / "uv-cache"), "UV_NO_CONFIG": "1",
           "UV_PYTHON_DOWNLOADS": "never"}
    python = find_python(project.python)
    uv = [find_uv_bin(), "pip", "compile", str(work / "requirements.in"), "-o",
          str(work / "requirements.txt"), "--python-platform",
          f"x86_64-manylinux_{project.glibc.replace('.', '_')}", "--python-version",
          project.python, "--index-url", DEFAULT_INDEX, "-q",
          *(["--python", python] if python else [])]
    return LockBench(
        requirements=requirements, work=work, env_uv=env,
        target=f"CPython {project.python} manylinux_{project.glibc} x86_64",
        env_gp={**env, "PYTHONPATH": str(ROOT)},
        gpulock=[sys.executable, "-m", "gpulock", "lock", "--manifest", str(work / "gpu.toml")],
        uv=uv)


def same_pins(bench: LockBench) -> str:
    """✓ when gpulock's lock and uv's compiled requirements pin the same versions, else how
    many packages differ (pinned by one side only, or at another version)."""
    ours = {canonicalize_name(p.name): Version(p.version)
            for p in lockfile.read(bench.lock_file).packages}
    theirs = {canonicalize_name(m[1]): Version(m[2]) for m in re.finditer(
        r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", bench.uv_out.read_text(), re.M)}
    differ = sum(ours.get(name) != theirs.get(name) for name in ours.keys() | theirs.keys())
    return "✓" if not differ else f"{differ} differ"


LockRow = tuple[str, Sample, Sample, str]


def lock_rows(bench: LockBench, runs: int) -> list[LockRow]:
    """Cold cache, warm cache with the manifest unchanged, and a warm re-resolve: gpulock's
    and uv's samples and whether their pins agree after each."""
    cold_gp, cold_uv = bench.cold()
    steps = [("lock, cold cache", cold_gp, cold_uv, []),
             ("lock, warm cache, manifest unchanged", nothing, nothing, []),
             ("lock, warm cache, re-resolve (--upgrade)", nothing, nothing, ["--upgrade"])]
    rows = []
    for label, prepare_gp, prepare_uv, extra in steps:
        ours = repeat(runs, prepare_gp, [*bench.gpulock, *extra], bench.env_gp, bench.work)
        theirs = repeat(runs, prepare_uv, [*bench.uv, *extra], bench.env_uv, bench.work)
        rows.append((label, ours, theirs, same_pins(bench)))
    return rows


def lock_table(args: argparse.Namespace) -> None:
    """gpulock lock vs uv pip compile on --manifest and on --big-manifest."""
    for manifest in (Path(args.manifest), Path(args.big_manifest)):
        bench = lock_bench(manifest)
        rows = lock_rows(bench, args.runs)
        pinned = len(lockfile.read(bench.lock_file).packages)
        print(f"# lock: {len(bench.requirements)} requirements from {manifest.name} "
              f"({pinned} pinned), target {bench.target}")
        print()
        print("| step | gpulock | uv | ratio (time) | same pins | gpulock peak MiB | "
              "uv peak MiB |")
        print("|---|---:|---:|---:|:---:|---:|---:|")
        for name, ours, theirs, pins in rows:
            print(f"| {name} | {ours.seconds:.2f}s | {theirs.seconds:.2f}s | "
                  f"{ours.seconds / theirs.seconds:.2f}x | {pins} | {ours.peak_mib:.0f} | "
                  f"{theirs.peak_mib:.0f} |")
        print()
        shutil.rmtree(bench.work, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int) -> None:
    """Return once something accepts connections on 127.0.0.1:`port` (5 s at most)."""
    for _ in range(100):
        with socket.socket() as client:
            if client.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


class ForwardProxy:
    """tinyproxy on 127.0.0.1, in the foreground, logging each tunnel a client asks for."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.log = folder / "tinyproxy.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ForwardProxy:
        conf = self.folder / "tinyproxy.conf"
        conf.write_text(f"Port {self.port}\nListen 127.0.0.1\nAllow 127.0.0.1\nConnectPort 443\n"
                        f'LogFile "{self.log}"\nLogLevel Connect\nMaxClients 100\n')
        self.server = subprocess.Popen([self.binary, "-d", "-c", str(conf)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait()

    def tunnels(self) -> Counter[str]:
        """The CONNECT tunnels logged so far, by host."""
        text = self.log.read_text() if self.log.exists() else ""
        return Counter(re.findall(r"\): CONNECT ([^:\s]+):\d+ ", text))

    def measure(self, prepare: Callable[[], None], command: list[str], env: dict[str, str],
                cwd: Path) -> tuple[Sample, Counter[str]]:
        """One run of `command` through the proxy, and the tunnels it opened."""
        prepare()
        before = self.tunnels()
        sample = measure(command, env, cwd)
        return sample, self.tunnels() - before


PROXY_SYNC_MANIFEST = ('[project]\nname = "bench-proxy-sync"\npython = "3.11"\n'
                       '[groups.main]\npackages = ["transformers", "numpy"]\n')


def proxy_table(args: argparse.Namespace) -> None:
    """--big-manifest's cold lock, and a cold sync of wheels from PyPI, through tinyproxy
    on 127.0.0.1: time and the tunnels each tool opened."""
    binary = shutil.which("tinyproxy")
    if binary is None:
        print("# proxy: not run, tinyproxy is not installed (apt-get install tinyproxy)")
        return
    bench = lock_bench(Path(args.big_manifest))
    with ForwardProxy(binary, bench.work) as proxy:
        through = bench.proxied(proxy.url)
        cold_gp, cold_uv = through.cold()
        rows = [(f"lock {Path(args.big_manifest).name}, cold cache",
                 proxy.measure(cold_gp, through.gpulock, through.env_gp, bench.work),
                 proxy.measure(cold_uv, through.uv, through.env_uv, bench.work))]
        pins = same_pins(through)
        sync_rows, skipped = proxy_sync_rows(proxy, through.env_uv)
        rows += sync_rows
    shutil.rmtree(bench.work, ignore_errors=True)
    print(f"# proxy: every request through tinyproxy on 127.0.0.1 (HTTPS_PROXY), one run; "
          f"tunnels = CONNECT requests in its log; lock pins {pins} against uv's" + skipped)
    print()
    print("| step | gpulock | uv | ratio (time) | gpulock tunnels | uv tunnels |")
    print("|---|---:|---:|---:|---|---|")

    def tunnels(hosts: Counter[str]) -> str:
        return f"{hosts.total()} (" + ", ".join(f"{h} {n}" for h, n in hosts.items()) + ")"

    for name, (ours, our_hosts), (theirs, their_hosts) in rows:
        print(f"| {name} | {ours.seconds:.2f}s | {theirs.seconds:.2f}s | "
              f"{ours.seconds / theirs.seconds:.2f}x | {tunnels(our_hosts)} | "
              f"{tunnels(their_hosts)} |")


ProxyRow = tuple[str, tuple[Sample, Counter[str]], tuple[Sample, Counter[str]]]


def proxy_sync_rows(proxy: ForwardProxy, env: dict[str, str]) -> tuple[list[ProxyRow], str]:
    """A cold sync through `proxy` of transformers and numpy, wheels from PyPI (the sync
    table's own wheels come from local folders), gpulock vs uv --compile-bytecode; or no
    row and why."""
    python = find_python("3.11")
    if python is None:
        return [], "; no sync row: it needs CPython 3.11 here"
    work = Path(tempfile.mkdtemp(prefix="gpulock-bench-proxy-"))
    (work / "gpu.toml").write_text(PROXY_SYNC_MANIFEST)
    env = {**env, "PYTHONPATH": str(ROOT), "GPULOCK_CACHE": str(work / "gp-cache"),
           "UV_CACHE_DIR": str(work / "uv-cache")}
    subprocess.run([sys.executable, "-m", "gpulock", "lock"], cwd=work, env=env, check=True,
                   stderr=subprocess.DEVNULL)
    packages = len(lockfile.read(work / "pylock.gpu.toml").packages)
    cold_gp, cold_uv, _, _ = preparations(work, python, env)
    gp = [sys.executable, "-m", "gpulock", "sync", "--store", str(work / "store"), "--frozen"]
    uv = [find_uv_bin(), "pip", "sync", "-q", "--compile-bytecode", "--python",
          str(work / "venv" / "bin" / "python"), str(work / "pylock.gpu.toml")]
    row = (f"sync {packages} wheels from PyPI (transformers, numpy), cold, both compile "
           "bytecode",
           proxy.measure(cold_gp, gp, env, work), proxy.measure(cold_uv, uv, env, work))
    shutil.rmtree(work, ignore_errors=True)
    return [row], ""


def sync_project(args: argparse.Namespace, what: str
                 ) -> tuple[Manifest, str, Path, dict[str, str]]:
    """--sync-manifest in a new work folder: its manifest, the target CPython here, the
    folder, and the environment both tools run in (gpulock from this checkout, no uv
    config, no interpreter downloads)."""
    manifest = load(Path(args.sync_manifest))
    python = find_python(manifest.project.python)
    if python is None:
        raise SystemExit(f"the {what} benchmark needs CPython {manifest.project.python}")
    work = Path(tempfile.mkdtemp(prefix=f"gpulock-bench-{what}-"))
    shutil.copy(args.sync_manifest, work / "gpu.toml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPULOCK_CACHE": str(work / "gp-cache"),
           "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never"}
    return manifest, python, work, env


def sync_table(args: argparse.Namespace) -> None:
    manifest, python, work, env = sync_project(args, "sync")
    env["UV_CACHE_DIR"] = str(work / "uv-cache")
    subprocess.run([sys.executable, "-m", "gpulock", "lock"], cwd=work, env=env, check=True,
                   stderr=subprocess.DEVNULL)
    lock_text = (work / "pylock.gpu.toml").read_text()
    store, venv = work / "store", work / "venv"
    gp = [sys.executable, "-m", "gpulock", "sync", "--store", str(store), "--frozen"]
    uv = [find_uv_bin(), "pip", "sync", "-q", "--python", str(venv / "bin" / "python"),
          str(work / "pylock.gpu.toml")]
    uv_compiled = [*uv, "--compile-bytecode"]
    cold_gp, cold_uv, fresh_venv, drop_envs = preparations(work, python, env)

    rows: list[tuple[str, Sample, Sample, int | None, int | None]] = []
    rows.append(("cold sync (gpulock compiles bytecode; uv does not)",
                 repeat(args.runs, cold_gp, gp, env, work),
                 repeat(args.runs, cold_uv, uv, env, work), None, None))
    rows.append(("cold sync, uv --compile-bytecode",
                 repeat(args.runs, cold_gp, gp, env, work),
                 repeat(args.runs, cold_uv, uv_compiled, env, work), None, None))
    # Caches are warm now: a new environment from the store / from uv's cache.
    ops_gp = (drop_envs(), fs_operations(gp, env, work))[1]
    ops_uv = (fresh_venv(), fs_operations(uv, env, work))[1]
    rows.append(("env build, warm store / warm cache, fresh env",
                 repeat(args.runs, drop_envs, gp, env, work),
                 repeat(args.runs, fresh_venv, uv, env, work), ops_gp, ops_uv))
    rows.append(("no-op sync", repeat(args.runs, nothing, gp, env, work),
                 repeat(args.runs, nothing, uv, env, work),
                 fs_operations(gp, env, work), fs_operations(uv, env, work)))

    update = _numpy_update(work, env, lock_text, gp, uv)
    if update is not None:
        rows.append(("one-package update (numpy), warm", repeat(args.runs, update, gp, env, work),
                     repeat(args.runs, update, uv, env, work), None, None))

    verified = verify_row("the store: 34 package entries", args.runs, store, env, work)
    packages = lock_text.count("[[packages]]")
    print(f"# sync: {packages} packages from {Path(args.sync_manifest).name}, CPython "
          f"{manifest.project.python}; fs ops = strace %file syscalls, children included")
    print()
    print("| step | gpulock | uv | ratio (time) | gpulock fs ops | uv fs ops | ratio (ops) "
          "| gpulock peak MiB | uv peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ours, theirs, ops_ours, ops_theirs in rows:
        ops = (f"{ops_ours} | {ops_theirs} | {ops_ours / ops_theirs:.3f}x"
               if ops_ours and ops_theirs else "- | - | -")
        print(f"| {name} | {ours.seconds:.2f}s | {theirs.seconds:.2f}s | "
              f"{ours.seconds / theirs.seconds:.2f}x | {ops} | {ours.peak_mib:.0f} | "
              f"{theirs.peak_mib:.0f} |")
    print()
    print(VERIFY_HEADER)
    print(verified)
    shutil.rmtree(work, ignore_errors=True)


VERIFY_HEADER = ("| gpulock verify (no uv counterpart) | sha256 | xxh3 (--fast) | ratio (time) | "
                 "peak MiB (sha256 / xxh3) |\n|---|---:|---:|---:|---:|")


def verify_row(label: str, runs: int, store: Path, env: dict[str, str], cwd: Path) -> str:
    """Full sha256 against the xxh3 recorded when each file was stored, same store."""
    command = [sys.executable, "-m", "gpulock", "verify", "--store", str(store)]
    full = repeat(runs, lambda: None, command, env, cwd)
    fast = repeat(runs, lambda: None, [*command, "--fast"], env, cwd)
    return (f"| {label} | {full.seconds:.2f}s | {fast.seconds:.2f}s | "
            f"{fast.seconds / full.seconds:.2f}x | {full.peak_mib:.0f} / {fast.peak_mib:.0f} |")


def _serve_hub(repos: dict[str, dict[str, str]], cdn: str, connection: Any) -> None:
    """The fake hub in its own process (API, small files, the redirects to `cdn`): never
    in the measured clients' process, never sharing a GIL with them."""
    import time

    from tests.support.hf_hub import FakeHub

    hub = FakeHub(cdn=cdn)
    for repo_id, files in repos.items():
        hub.repo(repo_id).commit({name: Path(path).read_bytes() for name, path in files.items()})
    connection.send(hub.url)
    while True:
        time.sleep(3600)


def _random_file(folder: Path, size: int) -> Path:
    """`size` random bytes in `folder/<their sha256>`, as a CDN names LFS objects."""
    import hashlib

    digest, path = hashlib.sha256(), folder / "incoming"
    with path.open("wb") as out:
        for start in range(0, size, 2**24):
            chunk = os.urandom(min(2**24, size - start))
            digest.update(chunk)
            out.write(chunk)
    return path.rename(folder / digest.hexdigest())


def _start_cdn(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str, str] | None:
    """nginx (a C server, sendfile) serving `root` on 127.0.0.1, or None without nginx."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if nginx is None:
        return None
    port = free_port()
    prefix = work / "nginx"
    prefix.mkdir()
    temps = "".join(f"  {kind}_temp_path {prefix / kind};\n"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix / 'pid'};\n"
        f"error_log {prefix / 'error.log'};\nevents {{ worker_connections 64; }}\n"
        f"http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n{temps}"
        "  default_type application/octet-stream;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n")
    server = subprocess.Popen([nginx, "-p", str(prefix), "-e", str(prefix / "error.log"),
                               "-c", str(prefix / "nginx.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    return server, f"http://127.0.0.1:{port}", version.rpartition("/")[2] or "?"


def _emptied(folder: Path, keep: bool = False) -> Callable[[], None]:
    """A step's preparation: `folder` removed (and made again, empty, with `keep`), and
    the disk's write-back done, so that no step pays for the one before it."""
    def empty() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if keep:
            folder.mkdir()
        os.sync()
    return empty


def models_table(args: argparse.Namespace) -> None:
    """Model download throughput: gpulock vs huggingface_hub, and curl and sha256 on the
    same files as the floor both stand on."""
    import multiprocessing

    work = Path(tempfile.mkdtemp(prefix="gpulock-bench-models-"))
    objects = work / "cdn"
    objects.mkdir()
    shard = args.model_mib // 4 * 2**20
    config = objects / "config.json"
    config.write_bytes(b'{"hidden_size": 8}')
    cases = {
        f"5 files, {args.model_mib} MiB (4 shards + config)": (
            "bench/model", {**{f"model-0000{i}-of-00004.safetensors":
                               str(_random_file(objects, shard)) for i in range(1, 5)},
                            "config.json": str(config)}),
        f"one file, {args.big_mib} MiB": (
            "bench/big", {"model.safetensors": str(_random_file(objects, args.big_mib * 2**20))}),
    }
    os.sync()  # the files just written are on disk, not being written back while measured
    cdn = _start_cdn(objects, work)
    # The hub holds the files in its own process: children forked from a process holding
    # them would report its memory as their peak, and its GIL is not the clients'.
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(
        target=_serve_hub, args=({repo: files for repo, files in cases.values()},
                                 cdn[1] if cdn else "", child), daemon=True)
    server.start()
    url = parent.recv()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": url,
           "HF_HUB_DISABLE_XET": "1", "GPULOCK_CACHE": str(work / "gp-cache"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_TOKEN", None)
    rows = []
    verified = ""
    try:
        for label, (repo, files) in cases.items():
            case = work / repo.replace("/", "-")
            case.mkdir()
            (case / "gpu.toml").write_text(
                f'[project]\nname = "bench-models"\npython = "{platform.python_version()[:4]}"'
                f'\n[groups.main]\npackages = []\n[models.m]\nsource = "hf://{repo}"\n')
            subprocess.run([sys.executable, "-m", "gpulock", "lock"], cwd=case, env=env,
                           check=True, stderr=subprocess.DEVNULL)
            store, cache, copies = case / "store", case / "hf-cache", case / "curl"
            ours = repeat(args.runs, _emptied(store),
                          [sys.executable, "-m", "gpulock", "sync", "--models-only",
                           "--frozen", "--store", str(store)], env, case)
            theirs = repeat(args.runs, _emptied(cache),
                            [sys.executable, "-c",
                             "from huggingface_hub import snapshot_download; "
                             f"snapshot_download({repo!r}, cache_dir={str(cache)!r})"],
                            env, case)
            # curl: the same resolve URLs, one after another on one connection, to files.
            curl = ["curl", "-sfL"]
            for name in files:
                curl += ["-o", str(copies / name), f"{url}/{repo}/resolve/main/{name}"]
            fetched = repeat(args.runs, _emptied(copies, keep=True), curl, env, case)
            copied = sorted(str(p) for p in copies.iterdir())
            summed = repeat(args.runs, lambda: None, ["sha256sum", *copied], env, case)
            digested = repeat(args.runs, lambda: None, ["openssl", "dgst", "-sha256", *copied],
                              env, case)
            size = sum(Path(p).stat().st_size for p in files.values())
            rows.append((label, size / 2**20, ours, theirs, fetched, summed, digested))
            if not verified:
                verified = verify_row(f"the store: {len(files)} model files, "
                                      f"{size / 2**20:.0f} MiB", args.runs, store, env, case)
    finally:
        server.terminate()
        if cdn:
            cdn[0].terminate()
            cdn[0].wait()
    bodies = (f"file bodies from nginx {cdn[2]} (sendfile) behind the hub's 302, as the Hub "
              "redirects to its CDN" if cdn else
              "file bodies from the same Python process (no nginx here)")
    print(f"# models: a fake hub on 127.0.0.1 in its own Python process (API, config.json), "
          f"{bodies}; gpulock checks each file's sha256, huggingface_hub checks none; curl "
          "fetches the same URLs one after another to files; sha256sum (coreutils) and "
          "openssl dgst -sha256 (the SHA code hashlib uses) read them from the page cache")
    print()
    print("| case | gpulock | huggingface_hub | ratio (throughput) | curl, sequential | "
          "sha256sum | openssl sha256 | gpulock peak MiB | hf peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def rate(mib: float, sample: Sample) -> str:
        return f"{mib / sample.seconds:.0f} MiB/s ({sample.seconds:.2f}s)"

    for label, mib, ours, theirs, fetched, summed, digested in rows:
        print(f"| {label} | {rate(mib, ours)} | {rate(mib, theirs)} | "
              f"{theirs.seconds / ours.seconds:.2f}x | {rate(mib, fetched)} | "
              f"{rate(mib, summed)} | {rate(mib, digested)} | {ours.peak_mib:.0f} | "
              f"{theirs.peak_mib:.0f} |")
    print()
    print(VERIFY_HEADER)
    print(verified)
    shutil.rmtree(work, ignore_errors=True)


def cache_table(args: argparse.Namespace) -> None:
    """Push the synced --sync-manifest store to SeaweedFS, then sync a second, empty store
    from that cache alone, against the same sync from the package index."""
    sys.path.insert(0, str(ROOT / "bench"))
    from s3_clients import KEYS, start_weed

    manifest = load(Path(args.sync_manifest))
    if find_python(manifest.project.python) is None:
        raise SystemExit(f"the cache benchmark needs CPython {manifest.project.python}")
    work = Path(tempfile.mkdtemp(prefix="gpulock-bench-cache-"))
    weed, endpoint = start_weed(work)
    try:
        import boto3

        boto3.session.Session(aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
                              region_name="us-east-1").client(
            "s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        cache = f"s3://bench/gpulock?endpoint={endpoint}"
        env = {**os.environ, **KEYS, "PYTHONPATH": str(ROOT),
               "GPULOCK_CACHE": str(work / "gp-cache"), "UV_NO_CONFIG": "1",
               "UV_PYTHON_DOWNLOADS": "never"}
        shutil.copy(args.sync_manifest, work / "gpu.toml")
        gpulock = [sys.executable, "-m", "gpulock"]
        subprocess.run([*gpulock, "lock"], cwd=work, env=env, check=True,
                       stderr=subprocess.DEVNULL)
        subprocess.run([*gpulock, "keygen", "bench", "--out", str(work / "keys")], cwd=work,
                       env=env, check=True, stderr=subprocess.DEVNULL)
        trusted = (work / "keys" / "bench.public").read_text().strip()
        with (work / "gpu.toml").open("a") as manifest_file:
            manifest_file.write(f'\n[cache]\nsubstituters = ["{cache}"]\n'
                                f'trusted-keys = ["{trusted}"]\n')
        region_a, region_b = work / "region-a", work / "region-b"
        plain = {**env, "GPULOCK_SUBSTITUTERS": ""}  # the index only
        from_index = repeat(args.runs, lambda: shutil.rmtree(region_a, ignore_errors=True),
                            [*gpulock, "sync", "--frozen", "--store", str(region_a)], plain,
                            work)
        pushed = measure([*gpulock, "push", "--store", str(region_a), "--key",
                          str(work / "keys" / "bench.secret"), "--jobs", "8"], env, work)
        wheels = sum(int(o["Size"]) for page in boto3.session.Session(
            aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1").client("s3", endpoint_url=endpoint)
            .get_paginator("list_objects_v2").paginate(Bucket="bench")
            for o in page.get("Contents", []))
        from_cache = repeat(args.runs, lambda: shutil.rmtree(region_b, ignore_errors=True),
                            [*gpulock, "sync", "--frozen", "--store", str(region_b)], env, work)
    finally:
        weed.terminate()
        weed.wait()
        shutil.rmtree(work, ignore_errors=True)
    mb = wheels / 1e6
    print(f"# binary cache: {Path(args.sync_manifest).name}, {mb:.0f} MB of wheels and "
          "records in SeaweedFS on 127.0.0.1 (boto3)")
    print()
    print("| step | time | throughput | vs cold sync from the index |")
    print("|---|---:|---:|---:|")
    print(f"| push every entry (`gpulock push --jobs 8`) | {pushed.seconds:.2f}s | "
          f"{mb / pushed.seconds:.0f} MB/s | |")
    print(f"| cold sync from the cache alone (download, unpack, compile) | "
          f"{from_cache.seconds:.2f}s | | {from_cache.seconds / from_index.seconds:.2f}x |")
    print(f"| cold sync from the index (file://) | {from_index.seconds:.2f}s | | 1.00x |")


def volume_table(args: argparse.Namespace, latency_ms: float) -> None:
    """The sync table's steps and a cold import on a network volume: latencyfs adds
    `latency_ms` to each metadata operation, the kernel caches entries for 1 s, and gpulock's
    store, uv's cache and uv's venv all live on it (so uv can hard-link, as on a pod)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from volume import Volume, unavailable

    if reason := unavailable():
        print(f"# network volume ({latency_ms:g} ms): not run, {reason}")
        return
    manifest, python, work, env = sync_project(args, "volume")
    gpulock = [sys.executable, "-m", "gpulock"]
    subprocess.run([*gpulock, "lock"], cwd=work, env=env, check=True, stderr=subprocess.DEVNULL)
    lock_text = (work / "pylock.gpu.toml").read_text()
    with Volume(work, latency_ms) as volume:
        env["UV_CACHE_DIR"] = str(volume.path / "uv-cache")
        store, venv = volume.path / "store", volume.path / "venv"
        current = store / "v1" / "envs" / manifest.project.name / "current"
        gp = [*gpulock, "sync", "--store", str(store), "--frozen"]
        uv = [find_uv_bin(), "pip", "sync", "-q", "--python", str(venv / "bin" / "python"),
              str(work / "pylock.gpu.toml")]
        uv_compiled = [*uv, "--compile-bytecode"]
        imports = ["-c", "import torch, transformers"]

        def step(prepare: Callable[[], None], command: list[str]) -> tuple[float, int]:
            prepare()  # through the backing folder: preparing is not measured
            volume.cold()
            before = sum(volume.trips().values())
            seconds = measure(command, env, work).seconds
            return seconds, sum(volume.trips().values()) - before

        cold_gp, cold_uv, fresh_venv, drop_envs = preparations(volume.backing, python, env)

        # Both compile bytecode here: a cold import must not compile on the volume (the
        # sync table has uv without it).
        rows = [("cold sync", step(cold_gp, gp), step(cold_uv, uv_compiled))]
        rows.append(("env build, warm store / warm cache, fresh env", step(drop_envs, gp),
                     step(fresh_venv, uv_compiled)))
        rows.append(("no-op sync", step(nothing, gp), step(nothing, uv)))
        update = _numpy_update(work, env, lock_text, gp, uv_compiled)
        if update is not None:
            rows.append(("one-package update (numpy)", step(update, gp),
                         step(update, uv_compiled)))
        rows.append(("cold `import torch, transformers`",
                     step(nothing, [str(current / "bin" / "python"), *imports]),
                     step(nothing, [str(venv / "bin" / "python"), *imports])))
    shutil.rmtree(work, ignore_errors=True)
    print(f"# network volume: latencyfs (FUSE) adding {latency_ms:g} ms to each metadata "
          "operation, entries and attributes cached 1 s, symlinks not cached; gpulock's "
          "store, uv's cache and venv on it (uv with --compile-bytecode); each step starts "
          "from a fresh mount; one run")
    print()
    print("| step | gpulock | uv | ratio (time) | gpulock round trips | uv round trips |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (ours, our_trips), (theirs, their_trips) in rows:
        print(f"| {name} | {ours:.2f}s | {theirs:.2f}s | {ours / theirs:.2f}x | "
              f"{our_trips} | {their_trips} |")


def coldstart_table(args: argparse.Namespace, latency_ms: float) -> None:
    """A serverless worker's cold start from a fresh mount, page cache dropped: `import
    torch, transformers`, then a model's config and weights read from the HF view on the
    volume; the environment as the worker sees the farm (PYTHONPATH, the same CPython), a
    uv venv on the same volume, and the same venv on local disk (the floor)."""
    import multiprocessing

    sys.path.insert(0, str(ROOT / "bench"))
    from volume import Volume, unavailable

    if reason := unavailable():
        print(f"# cold start ({latency_ms:g} ms): not run, {reason}")
        return
    manifest, python, work, env = sync_project(args, "coldstart")
    weights = _random_file(work, args.big_mib * 2**20)
    config = work / "config.json"
    config.write_bytes(b'{"hidden_size": 8}')
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve_hub, daemon=True, args=(
        {"bench/coldstart": {"config.json": str(config), "model.safetensors": str(weights)}},
        "", child))
    server.start()
    env["HF_ENDPOINT"] = parent.recv()
    text = (work / "gpu.toml").read_text().replace("[project]\n", "[project]\nlocal-start = true\n")
    (work / "gpu.toml").write_text(text + '\n[models.weights]\nsource = "hf://bench/coldstart"\n')
    gpulock = [sys.executable, "-m", "gpulock"]
    subprocess.run([*gpulock, "lock"], cwd=work, env=env, check=True, stderr=subprocess.DEVNULL)
    uv = find_uv_bin()
    lock = str(work / "pylock.gpu.toml")
    rows = []
    with Volume(work, latency_ms) as volume:
        # Filled through the backing folder, as a pod fills its volume: not measured. The
        # store is then read at another path (the mount), as a worker sees a pod's store.
        subprocess.run([*gpulock, "sync", "--frozen", "--store", str(volume.backing / "store")],
                       cwd=work, env=env, check=True, stderr=subprocess.DEVNULL)
        for venv in (volume.backing / "venv", work / "local-venv"):
            subprocess.run([uv, "venv", "-q", "--python", python, str(venv)], env=env,
                           check=True)
            subprocess.run([uv, "pip", "sync", "-q", "--compile-bytecode", "--python",
                            str(venv / "bin" / "python"), lock], env=env, check=True)
        store = volume.path / "store"
        exported = json.loads(subprocess.run(
            [*gpulock, "env", "--store", str(store), "--format", "json"], cwd=work, env=env,
            check=True, capture_output=True, text=True).stdout)
        snapshot = next((store / "v1" / "hf" / "models--bench--coldstart" / "snapshots"
                         ).iterdir())
        code = ["-c", "import json, torch, transformers\n"
                f"json.load(open({str(snapshot / 'config.json')!r}))\n"
                f"open({str(snapshot / 'model.safetensors')!r}, 'rb').read()\n"]
        worker = {**env, "PYTHONPATH": exported["PYTHONPATH"],
                  "PATH": f"{exported['PATH']}:{env['PATH']}"}  # json: no `:$PATH`

        def start(command: list[str], environment: dict[str, str],
                  prepare: Callable[[], None] = nothing) -> tuple[float, int]:
            prepare()
            volume.cold()
            before = sum(volume.trips().values())
            seconds = measure(command, environment, work).seconds
            return seconds, sum(volume.trips().values()) - before

        rows.append(("the farm, as a worker sees it (PYTHONPATH)",
                     start([python, *code], worker)))
        unpacked = work / "local-start"
        rows.append(("the farm's pack unpacked to local disk by `local-start`", start(
            [str(store / "v1" / "envs" / manifest.project.name / "current" / "local-start"),
             python, *code], {**worker, "GPULOCK_LOCAL": str(unpacked)}, _emptied(unpacked))))
        rows.append(("a uv venv on the same volume",
                     start([str(volume.path / "venv" / "bin" / "python"), *code], env)))
        rows.append(("the same venv on local disk (the floor)",
                     start([str(work / "local-venv" / "bin" / "python"), *code], env)))
    server.terminate()
    shutil.rmtree(work, ignore_errors=True)
    print(f"# cold start: latencyfs (FUSE) adding {latency_ms:g} ms to each metadata operation; "
          f"each row from a fresh mount with the page cache dropped: `import torch, "
          f"transformers`, then config.json and {args.big_mib} MiB of safetensors read from "
          "the HF view on the volume; one run")
    print()
    print("| start | time | vs uv venv on the volume | vs local disk | round trips |")
    print("|---|---:|---:|---:|---:|")
    uv_seconds, local_seconds = rows[-2][1][0], rows[-1][1][0]
    for name, (seconds, trips) in rows:
        print(f"| {name} | {seconds:.2f}s | {seconds / uv_seconds:.2f}x | "
              f"{seconds / local_seconds:.2f}x | {trips} |")


def _numpy_update(work: Path, env: dict[str, str], lock_text: str, gp: list[str],
                  uv: list[str]) -> Callable[[], None] | None:
    """A `prepare` that syncs both sides to the lock, then moves numpy in gpu.toml and the
    lock, so the measured command is a one-package update; None if numpy is not locked."""
    old = re.search(r'name = "numpy"\nversion = "([^"]+)"', lock_text)
    if old is None:
        return None
    manifest = (work / "gpu.toml").read_text()
    (work / "gpu.toml").write_text(manifest.replace('"numpy"', f'"numpy!={old.group(1)}"'))
    subprocess.run([sys.executable, "-m", "gpulock", "lock"], cwd=work, env=env, check=True,
                   stderr=subprocess.DEVNULL)
    moved = ((work / "gpu.toml").read_text(), (work / "pylock.gpu.toml").read_text())

    def back_to_old() -> None:
        (work / "gpu.toml").write_text(manifest)
        (work / "pylock.gpu.toml").write_text(lock_text)
        subprocess.run(gp, cwd=work, env=env, check=True, stderr=subprocess.DEVNULL)
        subprocess.run(uv, cwd=work, env=env, check=True)
        (work / "gpu.toml").write_text(moved[0])
        (work / "pylock.gpu.toml").write_text(moved[1])
    return back_to_old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", default=str(ROOT / "gpu.toml.example"))
    parser.add_argument("--big-manifest", default=str(ROOT / "bench" / "big-stack.gpu.toml"))
    parser.add_argument("--sync-manifest", default=str(ROOT / "bench" / "torch-cpu.gpu.toml"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["lock", "proxy", "sync", "models", "cache",
                                               "volume", "coldstart"])
    parser.add_argument("--volume-latency", type=float, action="append", metavar="MS",
                        help="also run the network-volume table with this latency per "
                             "metadata operation (repeatable; default with --only volume: "
                             "0.5 and 2)")
    parser.add_argument("--model-mib", type=int, default=512,
                        help="size of the 5-file benchmark model (default 512 MiB)")
    parser.add_argument("--big-mib", type=int, default=256,
                        help="size of the one-file benchmark model (default 256 MiB)")
    args = parser.parse_args()
    # gpulock runs from this checkout: give it the bytecode an installed wheel has, or a
    # machine with PYTHONDONTWRITEBYTECODE=1 (this one) compiles gpulock's source in every
    # measured command (60 ms of a 110 ms no-op sync here).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "gpulock")],
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                   stdout=subprocess.DEVNULL, check=True)
    uv_version = subprocess.run([find_uv_bin(), "--version"], capture_output=True,
                                text=True).stdout.strip()
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{uv_version}, median of {args.runs} runs")
    if args.only in (None, "lock"):
        lock_table(args)
    if args.only in (None, "proxy"):
        proxy_table(args)
        print()
    if args.only in (None, "sync"):
        sync_table(args)
        print()
    if args.only in (None, "models"):
        models_table(args)
        print()
    if args.only in (None, "cache"):
        cache_table(args)
        print()
    latencies = args.volume_latency or ([0.5, 2.0] if args.only in ("volume", "coldstart")
                                        else [])
    if args.only in (None, "volume"):
        for latency in latencies:
            volume_table(args, latency)
            print()
    if args.only in (None, "coldstart"):
        for latency in latencies:
            coldstart_table(args, latency)
            print()


if __name__ == "__main__":
    main()
