"""A binary cache in an S3 bucket (AWS, MinIO, SeaweedFS, R2...), through boto3.

`s3://bucket/prefix?endpoint=https://host:port&region=us-east-1`: credentials come from
boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE and
~/.aws/credentials, instance roles), never from the URL. Large objects move as parallel
multipart transfers.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gpulock.credentials import redact, shown
from gpulock.store.substituters import CacheError, Progress

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_OPTIONS = ("endpoint", "region")


class S3:
    """Objects under `prefix/` in one bucket."""

    def __init__(self, url: str) -> None:
        self.url = shown(url)
        parts = urlsplit(url)
        if parts.username or parts.password:
            raise CacheError(f"substituter {self.url}: put S3 credentials in AWS_* variables "
                             "or a profile, not in the URL")
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

            config = Config(retries={"max_attempts": 5, "mode": "standard"},
                            max_pool_connections=32)
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint, region_name=self.region,
                config=config)
        return self._client

    def _failed(self, name: str, exc: Exception, verb: str) -> CacheError:
        said = getattr(exc, "response", {}).get("Error", {}).get("Message") or str(exc)
        return CacheError(f"cannot {verb} {name} {'to' if verb == 'write' else 'from'} "
                          f"{self.url}: {redact(said)}")

    def read(self, name: str, limit: int) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(name),
                                              Range=f"bytes=0-{limit}")
            data: bytes = response["Body"].read(limit + 1)
        except Exception as exc:  # botocore raises per-service classes
            if _missing(exc):
                return None
            raise self._failed(name, exc, "read") from None
        if len(data) > limit:
            raise CacheError(f"{name} in {self.url} is larger than the {limit} bytes it may be")
        return data

    def download(self, name: str, target: Path, limit: int,
                 progress: Progress | None = None) -> bool:
        from boto3.s3.transfer import TransferConfig

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
            if int(head["ContentLength"]) > limit:
                raise CacheError(f"{name} in {self.url} is larger than its record says")
            self.client.download_file(self.bucket, self._key(name), str(target),
                                      Callback=progress, Config=_transfer(TransferConfig))
        except CacheError:
            raise
        except Exception as exc:
            if _missing(exc):
                return False
            raise self._failed(name, exc, "read") from None
        return True

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
        is "" for an object at the prefix itself (a URL that names one object)."""
        found = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    if key == self.prefix:
                        found.append(("", int(item["Size"])))
                    elif key.startswith(f"{self.prefix}/" if self.prefix else ""):
                        name = key[len(self.prefix) + 1:] if self.prefix else key
                        if name and not name.endswith("/"):  # a folder marker is no file
                            found.append((name, int(item["Size"])))
        except Exception as exc:
            raise self._failed(self.prefix or "/", exc, "list") from None
        return found

    def upload(self, name: str, source: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        try:
            self.client.upload_file(str(source), self.bucket, self._key(name),
                                    Config=_transfer(TransferConfig))
        except Exception as exc:
            raise self._failed(name, exc, "write") from None


def _transfer(config: Any) -> Any:
    # 16 MiB parts, 8 at once: a 1 GB entry moves in 64 parallel parts.
    return config(multipart_threshold=16 << 20, multipart_chunksize=16 << 20,
                  max_concurrency=8)


def _missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
