"""Ed25519 keys for the binary cache, in Nix's text form.

A secret key is one line `NAME:base64(seed + public key)` (64 bytes, libsodium's and Nix's
layout), a public key `NAME:base64(32 bytes)`, a signature `NAME:base64(64 bytes)`. A key's
name says which trusted key a signature claims; only a signature that verifies under the
trusted key of that name counts. Secrets are read from a file or the environment, never
written anywhere but `keygen`'s own 0600 file, and never printed: no error about a key's
text quotes any of it (a key pasted the wrong way round, or into the wrong place, puts the
secret where its name or a file name belongs).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpulock.errors import GpulockError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NAME_RULE = ("must be letters, digits, '.', '_' or '-' (at most 100), starting with a letter "
              "or digit")


@dataclass(frozen=True)
class PublicKey:
    name: str
    raw: bytes  # 32 bytes

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.raw).decode()}"

    def verifies(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class SecretKey:
    name: str
    seed: bytes  # 32 bytes

    def __repr__(self) -> str:  # a secret never reaches a log through repr()
        return f"SecretKey({self.name!r}, <secret>)"

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.name, self._key().public_key().public_bytes_raw())

    def sign(self, message: bytes) -> str:
        """`NAME:base64(signature)` of `message`."""
        return f"{self.name}:{base64.b64encode(self._key().sign(message)).decode()}"

    def text(self) -> str:
        return f"{self.name}:{base64.b64encode(self.seed + self.public.raw).decode()}"

    def _key(self):  # type: ignore[no-untyped-def]
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed)


def generate(name: str) -> SecretKey:
    """A new secret key named `name`."""
    _check_name(name, "a key name")
    return SecretKey(name, os.urandom(32))


def keygen(name: str, folder: Path) -> tuple[Path, Path]:
    """Write `folder/NAME.secret` (mode 0600, never overwritten) and `folder/NAME.public`."""
    key = generate(name)
    folder.mkdir(parents=True, exist_ok=True)
    secret, public = folder / f"{name}.secret", folder / f"{name}.public"
    for path in (secret, public):
        if os.path.lexists(path):
            raise GpulockError(f"{path} exists; keygen never overwrites a key")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with open(os.open(secret, flags, 0o600), "w") as handle:
        handle.write(key.text() + "\n")
    with open(os.open(public, flags, 0o644), "w") as handle:
        handle.write(str(key.public) + "\n")
    return secret, public


def parse_public(text: str, where: str) -> PublicKey:
    """A `NAME:base64` public key; `where` names its place in an error."""
    name, raw = _split(text.strip(), where, "public key")
    if len(raw) != 32:
        raise GpulockError(f"{where}: a public key is 32 bytes of base64, not {len(raw)}")
    return PublicKey(name, raw)


def parse_secret(text: str, where: str) -> SecretKey:
    """A `NAME:base64` secret key (64 bytes as Nix writes it, or a bare 32-byte seed)."""
    name, raw = _split(text.strip(), where, "secret key")
    if len(raw) not in (32, 64):
        raise GpulockError(f"{where}: a secret key is 64 bytes of base64, not {len(raw)}")
    key = SecretKey(name, raw[:32])
    if len(raw) == 64 and key.public.raw != raw[32:]:
        raise GpulockError(f"{where}: the secret key's public half does not match its seed")
    return key


def load_secret(path: str | None) -> SecretKey:
    """The signing key from `--key FILE`, else `$GPULOCK_SIGNING_KEY` (the key itself, or
    the path of its file)."""
    if path is None:
        value = os.environ.get("GPULOCK_SIGNING_KEY", "").strip()
        if not value:
            raise GpulockError("push needs a signing key: --key FILE or $GPULOCK_SIGNING_KEY "
                               "(make one with 'gpulock keygen NAME --out DIR')")
        if not os.path.exists(value):  # the key itself: never echoed, whatever it holds
            return parse_secret(value, "$GPULOCK_SIGNING_KEY (neither a key file nor "
                                "NAME:base64)")
        path = value
        given = "the file $GPULOCK_SIGNING_KEY names"
    else:
        given = "the --key file"  # not its name: the key itself may have been given there
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise GpulockError(f"cannot read {given}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise GpulockError(f"{given} is not text: a key is one line NAME:base64") from None
    return parse_secret(text, str(path))


def signed_by(message: bytes, signatures: Iterable[object], trusted: Iterable[PublicKey]
              ) -> str | None:
    """The name of a trusted key that signed `message`, or None."""
    keys = {key.name: key for key in trusted}
    for signature in signatures:
        if not isinstance(signature, str) or ":" not in signature:
            continue
        name, _, encoded = signature.partition(":")
        key = keys.get(name)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if key is not None and key.verifies(message, raw):
            return name
    return None


def _split(text: str, where: str, what: str) -> tuple[str, bytes]:
    name, sep, encoded = text.partition(":")
    if not sep or not name:
        raise GpulockError(f"{where}: a {what} is NAME:base64")
    if not _NAME.fullmatch(name):  # never quoted: it may be the secret, put first
        raise GpulockError(f"{where}: the {what}'s name, before its ':', {_NAME_RULE}")
    try:
        return name, base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise GpulockError(f"{where}: the {what} is not valid base64") from None


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise GpulockError(f"{what} {name!r} {_NAME_RULE}")
