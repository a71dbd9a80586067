"""An S3 endpoint on 127.0.0.1 that lies: enough of the REST API for boto3 (GetObject with
Range, HeadObject, ListObjectsV2 with continuation tokens, path-style, any signature), with
objects whose GET sends more bytes than HEAD and the listing say, bodies that drip, and
listings whose continuation tokens loop or never end. Every lie is bounded, so a client
that falls for one still returns."""

from __future__ import annotations

import html
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.loopback import Loopback

DRIP_BYTES = 40  # a dripping body ends after this many bytes: the server's loop is bounded
PAGE = 3  # keys per listing page
_CHUNK = 1 << 20


@dataclass
class Lie:
    """How one object is served: HEAD and listings describe `data`; a GET ignores Range and
    sends `padding` zero bytes after it, or sends its bytes one every `drip` seconds."""

    data: bytes
    padding: int = 0
    drip: float = 0.0


@dataclass
class LyingS3(Loopback):
    bucket: str = "lies"
    objects: dict[str, Lie] = field(default_factory=dict)
    listing: str = "honest"  # or "alternate", "endless-same", "endless-fresh"
    sent: Counter[str] = field(default_factory=Counter)  # body bytes sent per key
    gets: list[str] = field(default_factory=list)  # the keys of GETs, in order
    # Called after each MiB of padding is sent: a test looks at what reached the disk.
    on_padding: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        self.serve()

    def s3_url(self, prefix: str) -> str:
        """An s3:// URL of `prefix` in the bucket, at this endpoint."""
        return f"s3://{self.bucket}/{prefix}?endpoint={self.origin}"

    def put(self, key: str, data: bytes, **lie: float) -> None:
        self.objects[key] = Lie(data, **lie)  # type: ignore[arg-type]

    # -- serving --------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        query = parse_qs(parts.query)
        if bucket != self.bucket:
            self._error(handler, 404, "NoSuchBucket")
        elif not key and query.get("list-type") == ["2"]:
            self._list(handler, query.get("prefix", [""])[0],
                       query.get("continuation-token", [""])[0])
        elif key not in self.objects:
            self._error(handler, 404, "NoSuchKey")
        elif handler.command == "HEAD":
            self._head(handler, 200, len(self.objects[key].data))
        else:
            self.gets.append(key)
            self._get(handler, key, self.objects[key])

    def _head(self, handler: BaseHTTPRequestHandler, status: int, length: int,
              extra: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(length))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("ETag", '"0"')
        handler.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        for name, value in (extra or {}).items():
            handler.send_header(name, value)
        handler.end_headers()

    def _get(self, handler: BaseHTTPRequestHandler, key: str, lie: Lie) -> None:
        if lie.padding:
            self._padded(handler, key, lie)
        elif lie.drip:
            self._drip(handler, key, lie)
        else:
            self._ranged(handler, key, lie.data)

    def _ranged(self, handler: BaseHTTPRequestHandler, key: str, data: bytes) -> None:
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range") or "")
        if not asked:
            self._head(handler, 200, len(data))
            body = data
        else:
            start = int(asked.group(1))
            end = min(int(asked.group(2) or len(data) - 1), len(data) - 1)
            if start >= len(data):
                self._error(handler, 416, "InvalidRange")
                return
            body = data[start:end + 1]
            self._head(handler, 206, len(body),
                       {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
        handler.wfile.write(body)
        self.sent[key] += len(body)

    def _padded(self, handler: BaseHTTPRequestHandler, key: str, lie: Lie) -> None:
        """The object as HEAD describes it, then `padding` bytes more, whatever was asked."""
        self._head(handler, 200, len(lie.data) + lie.padding)
        handler.wfile.write(lie.data)
        self.sent[key] += len(lie.data)
        left = lie.padding
        while left > 0:
            chunk = min(left, _CHUNK)
            handler.wfile.write(bytes(chunk))
            self.sent[key] += chunk
            left -= chunk
            self.on_padding()

    def _drip(self, handler: BaseHTTPRequestHandler, key: str, lie: Lie) -> None:
        self._head(handler, 200, len(lie.data))
        for byte in lie.data[:DRIP_BYTES]:
            time.sleep(lie.drip)
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            self.sent[key] += 1
        handler.close_connection = True  # the body stays short of its length: a cut stream

    def _list(self, handler: BaseHTTPRequestHandler, prefix: str, token: str) -> None:
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        page, following = self._page(keys, token)
        contents = "".join(
            f"<Contents><Key>{html.escape(k)}</Key><Size>{size}</Size>"
            "<LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>\"0\"</ETag>"
            "<StorageClass>STANDARD</StorageClass></Contents>" for k, size in page)
        more = (f"<IsTruncated>true</IsTruncated><NextContinuationToken>{following}"
                "</NextContinuationToken>" if following else "<IsTruncated>false</IsTruncated>")
        body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns='
                f'"http://s3.amazonaws.com/doc/2006-03-01/"><Name>{self.bucket}</Name>'
                f"<Prefix>{html.escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>"
                f"<MaxKeys>1000</MaxKeys>{more}{contents}</ListBucketResult>").encode()
        self._head(handler, 200, len(body), {"Content-Type": "application/xml"})
        handler.wfile.write(body)

    def _page(self, keys: list[str], token: str) -> tuple[list[tuple[str, int]], str]:
        """One page of the listing after `token`, and the token of the next ("" at the end)."""
        number = int(token.removeprefix("t") or 0)
        if self.listing == "honest":
            page = keys[number * PAGE:(number + 1) * PAGE]
            more = (number + 1) * PAGE < len(keys)
            return [(k, len(self.objects[k].data)) for k in page], f"t{number + 1}" if more else ""
        if self.listing == "alternate":  # t1, t2, t1, t2...: new keys until the loop is seen
            return [(f"{keys[0]}-{number}", 1)], f"t{1 + number % 2}"
        if self.listing == "endless-same":  # a fresh token each time, the same keys again
            return [(k, len(self.objects[k].data)) for k in keys], f"t{number + 1}"
        return [(f"{keys[0]}-{number}-{i}", 1) for i in range(PAGE)], f"t{number + 1}"

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str) -> None:
        body = b"" if handler.command == "HEAD" else (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{code}</Message></Error>").encode()
        self._head(handler, status, len(body), {"Content-Type": "application/xml"})
        handler.wfile.write(body)
