"""A binary cache in an S3 bucket (AWS, MinIO, SeaweedFS, R2...), through boto3.

`s3://bucket/prefix?endpoint=https://host:port&region=us-east-1`: credentials come from
boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE and
~/.aws/credentials, instance roles), never from the URL.

A bucket is as untrusted as any server: every object is read the one way `_read_range`
reads, as ranged GETs of the size its record or pin gives (large objects as parallel
16 MiB ranges), stopped at the first byte past that size and on a stall
(GPULOCK_STALL_TIMEOUT, as every download), and listings are paced like the hubs'.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gpulock.credentials import login_problem, redact, shown
from gpulock.errors import FetchError
from gpulock.http import Body, paced, stall_timeout
from gpulock.store.substituters.backend import CacheError, CacheUnreachable, Progress

Sink = Callable[[int, bytes], None]  # (offset in the object, bytes)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_OPTIONS = ("endpoint", "region")
_PART = 16 << 20  # a large object moves as ranges of this size, _STREAMS at once
_STREAMS = 8
_CHUNK = 1 << 20


class S3:
    """Objects under `prefix/` in one bucket."""

    def __init__(self, url: str) -> None:
        self.url = shown(url)
        if problem := login_problem(url):
            raise CacheError(f"substituter {self.url}: {problem}")
        try:
            parts = urlsplit(url)
        except ValueError:  # a '[' that opens no IPv6 address
            raise CacheError(f"substituter {self.url}: cannot be read as a URL") from None
        if not _BUCKET.fullmatch(parts.hostname or ""):
            raise CacheError(f"substituter {self.url}: {parts.hostname!r} is not a bucket name")
        options = parse_qs(parts.query)
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise CacheError(f"substituter {self.url}: unknown option {unknown[0]!r} "
                             f"(known: {', '.join(_OPTIONS)})")
        self.bucket = parts.hostname or ""
        self.prefix = "/".join(p for p in parts.path.split("/") if p)
        self.endpoint = options.get("endpoint", [None])[0]
        self.region = options.get("region", [None])[0]
        self._client: Any = None
        self._making = threading.Lock()  # boto3 sessions are not safe to make concurrently

    def _key(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/") or not name:
            raise CacheError(f"refused the object name {name!r}")
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def client(self) -> Any:
        with self._making:
            return self._client or self._make_client()

    def _make_client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # A stalled answer is given up after GPULOCK_STALL_TIMEOUT, and tried again
            # twice at most: a bucket that stalls costs minutes, not tens of them.
            stall = stall_timeout()
            config = Config(connect_timeout=stall, read_timeout=stall,
                            retries={"max_attempts": 3, "mode": "standard"},
                            max_pool_connections=32)
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint, region_name=self.region,
                config=config)
        return self._client

    def _failed(self, name: str, exc: Exception, verb: str) -> CacheError:
        """A botocore failure in one sentence: a refusal the bucket answered is a
        CacheError, no answer at all (unreachable, timed out) a CacheUnreachable."""
        said = getattr(exc, "response", {}).get("Error", {}).get("Message") or str(exc)
        kind = CacheError if hasattr(exc, "response") else CacheUnreachable
        return kind(f"cannot {verb} {name} {'to' if verb == 'write' else 'from'} "
                    f"{self.url}: {redact(said)}")

    def read(self, name: str, limit: int) -> bytes | None:
        data = bytearray()
        got = self._read_range(name, 0, limit, limit, lambda _, chunk: data.extend(chunk))
        return None if got is None else bytes(data)

    def download(self, name: str, target: Path, limit: int,
                 progress: Progress | None = None) -> bool:
        """Write the object to `target` as `limit` bytes, the size its record or pin gives:
        a larger object is refused at its first byte past it, never read on."""
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            def write(offset: int, chunk: bytes) -> None:
                os.pwrite(fd, chunk, offset)
                if progress:
                    progress(len(chunk))

            def part(start: int) -> bool:
                length = min(_PART, limit - start)
                got = self._read_range(name, start, length, limit, write)
                if got is not None and got < length and start + length < limit:
                    raise CacheError(f"{name} in {self.url} is smaller than the {limit:,} "
                                     "bytes expected of it")
                return got is not None

            # An empty object is one range of no bytes (asked for one, to see there is none).
            found = _each(part, range(0, max(limit, 1), _PART))
        finally:
            os.close(fd)
        if not found:
            target.unlink()
        return found

    def _read_range(self, name: str, start: int, length: int, size: int,
                    sink: Sink) -> int | None:
        """Bytes [start, start + length) of an object of `size` bytes (its record's, its
        pin's) into `sink`, as they arrive: the only way gpulock reads an S3 object. The
        last range asks for one byte more, so that a larger object is refused at that byte;
        a server that ignores the range is refused at the first byte past `length`; one that
        stalls or trickles is given up after GPULOCK_STALL_TIMEOUT. The count of bytes, or
        None when the bucket has no such object."""
        end = start + length if start + length >= size else start + length - 1
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(name),
                                              Range=f"bytes={start}-{end}")
        except Exception as exc:  # botocore raises per-service classes
            if _missing(exc):
                return None
            if _unsatisfiable(exc):  # nothing at `start`: an empty or shorter object
                return 0
            raise self._failed(name, exc, "read") from None
        got = 0
        try:
            # botocore's read(n) waits for all n bytes and restarts its timeout at every byte:
            # its urllib3 response is read as bytes arrive, by the rule of every download.
            body = Body(response["Body"]._raw_stream, self.url, stall_timeout(), name)
            while chunk := body.read(_CHUNK):
                if got + len(chunk) > length:
                    raise CacheError(f"{name} in {self.url} holds more than the {size:,} bytes "
                                     "expected of it; it was not read further")
                sink(start + got, chunk)
                got += len(chunk)
        except FetchError as exc:
            raise CacheUnreachable(str(exc)) from None
        except (CacheError, OSError):
            raise
        except Exception as exc:  # urllib3's broken or cut streams
            raise self._failed(name, exc, "read") from None
        finally:
            response["Body"].close()  # closes the connection unread: no draining a flood
        return got

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if _missing(exc):
                return False
            raise self._failed(name, exc, "read") from None
        return True

    def listing(self) -> list[tuple[str, int]]:
        """Every object under the prefix: (its name relative to the prefix, size); the name
        is "" for an object at the prefix itself (a URL that names one object). Paced as a
        hub's listing is: given up on a stall, past LISTING_LIMIT objects, or at an object
        or a continuation token seen twice (a pagination that loops)."""
        try:
            return paced(self._listed, f"listing {self.url}",
                         distinct=lambda item: repr(item[0]), server="the bucket")
        except FetchError as exc:
            raise CacheUnreachable(str(exc)) from None
        except CacheError:
            raise
        except Exception as exc:
            raise self._failed("objects", exc, "list") from None  # the prefix only in .url

    def _listed(self) -> Iterator[tuple[str, int]]:
        tokens: set[str] = set()
        asked: dict[str, str] = {}
        while True:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix,
                                               **asked)
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if key == self.prefix:
                    yield "", int(item["Size"])
                elif key.startswith(f"{self.prefix}/" if self.prefix else ""):
                    name = key[len(self.prefix) + 1:] if self.prefix else key
                    if name and not name.endswith("/"):  # a folder marker is no file
                        yield name, int(item["Size"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            if token in tokens:
                raise CacheError(f"listing {self.url}: the bucket sent a continuation token "
                                 "it had sent before, a listing that loops; stopped")
            tokens.add(token)
            asked = {"ContinuationToken": str(token)}

    def upload(self, name: str, source: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        try:
            self.client.upload_file(str(source), self.bucket, self._key(name),
                                    Config=_transfer(TransferConfig))
        except Exception as exc:
            raise self._failed(name, exc, "write") from None


def _each(call: Callable[[int], bool], starts: range) -> bool:
    """Whether `call(start)` is true for every start, run _STREAMS at a time: each is taken
    from `starts` only when a stream is free (a size from a listing or a lock may be huge,
    so the ranges are never laid out at once), and the first false or failed one stops it."""
    if starts.stop <= starts.step:
        return call(starts.start)
    with ThreadPoolExecutor(_STREAMS) as pool:
        running: set[Future[bool]] = set()
        for start in starts:
            if len(running) == _STREAMS:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                if not all(future.result() for future in done):
                    return False
            running.add(pool.submit(call, start))
        return all(future.result() for future in running)


def _transfer(config: Any) -> Any:
    # 16 MiB parts, 8 at once: a 1 GB entry moves in 64 parallel parts.
    return config(multipart_threshold=16 << 20, multipart_chunksize=16 << 20,
                  max_concurrency=8)



def _unsatisfiable(exc: Exception) -> bool:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) in (
        "416", "InvalidRange")


def _missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
