"""What a binary cache holds for one store entry, and when a store may take it.

    entries/<key>.json              the record: key, name, version, the wheel's filename,
                                    sha256 and size, and signatures over all of them
    wheels/<sha256>/<filename>      the packed entry: the wheel it was unpacked from
    blobs/<sha256>                  a model file; the lock pins its sha256, so it needs no
                                    record or signature: its bytes either hash to the pin
                                    or are refused

The packed form is the wheel rather than a tar of the unpacked tree: it is compressed
(torch's 1 GB tree is a 200 MB wheel), its RECORD lists every file's hash and is checked as
it is unpacked, and unpacking it goes through the same checks as a wheel from an index. A
record is taken only when a trusted key signed it, it names the entry sync asked for, and
(for a wheel the lock pins) its sha256 is the lock's; the wheel only when its bytes hash to
the record's sha256. Object names are made here and nowhere else, from checked keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from gpulock.errors import GpulockError
from gpulock.names import entry_key_problem, hex_problem, segment_problem
from gpulock.pins import LockedPackage
from gpulock.signing import PublicKey, SecretKey, signed_by

FORMAT = "gpulock-entry-1"
RECORD_LIMIT = 64 << 10  # a record is a few hundred bytes; a larger one is not a record
WHEEL_LIMIT = 64 << 30


class RecordError(GpulockError):
    """A cache's record that is not one, or is not for the entry it is filed under."""


@dataclass(frozen=True)
class CacheRecord:
    key: str
    name: str
    version: str
    filename: str
    sha256: str
    size: int
    signatures: tuple[str, ...] = ()

    def fingerprint(self) -> bytes:
        """What a signature covers: every field but the signatures."""
        return ";".join([FORMAT, self.key, self.name, self.version, self.filename,
                         self.sha256, str(self.size)]).encode()

    def signed(self, key: SecretKey) -> CacheRecord:
        """This record with `key`'s signature added."""
        signature = key.sign(self.fingerprint())
        return CacheRecord(**{**self.__dict__, "signatures": (*self.signatures, signature)})

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "key": self.key, "name": self.name,
                           "version": self.version, "wheel": {
                               "filename": self.filename, "sha256": self.sha256,
                               "size": self.size},
                           "signatures": list(self.signatures)}, indent=1).encode()


def record_name(key: str) -> str:
    problem = entry_key_problem(key)
    if problem:
        raise RecordError(f"refused {key!r} as a cache record's key: it {problem}")
    return f"entries/{key}.json"


def blob_name(sha256: str) -> str:
    if problem := hex_problem(sha256, 64):
        raise RecordError(f"refused {sha256!r} as a blob's sha256: it {problem}")
    return f"blobs/{sha256}"


def wheel_name(record: CacheRecord) -> str:
    return f"wheels/{record.sha256}/{record.filename}"


def parse(data: bytes, key: str) -> CacheRecord:
    """The record filed under `key`, checked field by field (RecordError says what is
    wrong)."""
    try:
        raw = json.loads(data)
        wheel = raw["wheel"]
        record = CacheRecord(key=raw["key"], name=raw["name"], version=raw["version"],
                             filename=wheel["filename"], sha256=wheel["sha256"],
                             size=wheel["size"], signatures=tuple(raw.get("signatures", ())))
        if not all(isinstance(signature, str) for signature in record.signatures):
            raise RecordError("its signatures are not strings")
        if raw.get("format") != FORMAT:
            raise RecordError(f"its format is {raw.get('format')!r}, not {FORMAT!r}")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise RecordError("it is not a gpulock cache record") from None
    if not all(isinstance(v, str) for v in (record.key, record.name, record.version,
                                            record.filename, record.sha256)):
        raise RecordError("it is not a gpulock cache record")
    if record.key != key:
        raise RecordError(f"it is the record of {record.key!r}, filed under {key!r}")
    if not isinstance(record.size, int) or isinstance(record.size, bool) or not (
            0 < record.size <= WHEEL_LIMIT):
        raise RecordError(f"its wheel size {record.size!r} is not a size")
    if problem := hex_problem(record.sha256, 64):
        raise RecordError(f"its sha256 {record.sha256!r} {problem}")
    if problem := segment_problem(record.filename):
        raise RecordError(f"its wheel filename {record.filename!r} {problem}")
    try:
        named = parse_wheel_filename(record.filename)[0]
    except InvalidWheelFilename:
        raise RecordError(f"{record.filename!r} is not a wheel's filename") from None
    if named != canonicalize_name(record.name):
        raise RecordError(f"its wheel {record.filename!r} is not {record.name}'s")
    return record


def refusal(record: CacheRecord, package: LockedPackage, trusted: Iterable[PublicKey]
            ) -> str | None:
    """Why a store must not take `record` for `package`, or None when it may."""
    if canonicalize_name(record.name) != package.name or record.version != package.version:
        return f"the record is for {record.name} {record.version}"
    if package.wheel and (record.sha256, record.size) != (package.wheel.sha256,
                                                         package.wheel.size):
        return (f"its wheel has sha256 {record.sha256}, but the lock pins "
                f"{package.wheel.sha256}")
    if not record.signatures:
        return "it is not signed"
    trusted = list(trusted)
    if signed_by(record.fingerprint(), record.signatures, trusted) is None:
        names = sorted({s.partition(":")[0] for s in record.signatures})
        known = [n for n in names if n in {key.name for key in trusted}]
        if known:
            return (f"its signature by {known[0]!r} does not verify: the record was changed "
                    "after it was signed")
        return (f"it is signed by {', '.join(repr(n) for n in names)}, not by a trusted key "
                "([cache] trusted-keys)")
    return None
