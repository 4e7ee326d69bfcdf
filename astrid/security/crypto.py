"""Ed25519 keys and signatures with the original's encodings (standard base64 with padding).

``cryptography`` is imported lazily inside the functions that need it, so importing this
module (or anything that imports it) stays cheap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from astrid.errors import CryptoKeyError as CryptoKeyError
from astrid.fsutil import atomic_write, make_private_dirs

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PUBLIC_KEY_LEN = 32
"""Length of a raw ed25519 public key in bytes."""

PRIVATE_KEY_LEN = 32
"""Length of a raw ed25519 private key (seed) in bytes."""

SIGNATURE_LEN = 64
"""Length of a raw ed25519 signature in bytes."""

KEY_ID_LEN = 8
"""Length of a key id: the first bytes of the public key."""


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (the original's encoding for keys and signatures)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict standard base64 with padding; raises ``ValueError`` on malformed input."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"invalid base64: {exc}") from exc


def encode_public_key(key: bytes) -> str:
    """Encode a 32-byte public key as base64 (44 characters)."""
    _check_len(key, PUBLIC_KEY_LEN, "public key")
    return b64encode(key)


def decode_public_key(text: str) -> bytes:
    """Decode a base64 public key; raises ``ValueError`` unless it is 32 bytes."""
    raw = b64decode(text)
    _check_len(raw, PUBLIC_KEY_LEN, "public key")
    return raw


def encode_signature(signature: bytes) -> str:
    """Encode a 64-byte signature as base64 (88 characters)."""
    _check_len(signature, SIGNATURE_LEN, "signature")
    return b64encode(signature)


def decode_signature(text: str) -> bytes:
    """Decode a base64 signature; raises ``ValueError`` unless it is 64 bytes."""
    raw = b64decode(text)
    _check_len(raw, SIGNATURE_LEN, "signature")
    return raw


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _check_len(data: bytes, expected: int, what: str) -> None:
    if len(data) != expected:
        raise ValueError(f"{what} must be {expected} bytes, got {len(data)}")


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid ed25519 signature of ``data`` by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), data)
    except (InvalidSignature, ValueError):
        return False
    return True


class KeyPair:
    """An ed25519 signing key pair (the runtime key that issues capability tokens)."""

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._private = private_key
        self._public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key pair."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        """Rebuild a key pair from its 32 raw private-key (seed) bytes."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        _check_len(data, PRIVATE_KEY_LEN, "private key")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(data)))

    def private_bytes(self) -> bytes:
        """The 32 raw private-key (seed) bytes; keep them secret."""
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public_key_bytes(self) -> bytes:
        """The 32 raw public-key bytes."""
        return self._public

    @property
    def public_key_base64(self) -> str:
        """The public key as standard base64 (44 characters)."""
        return b64encode(self._public)

    @property
    def key_id(self) -> bytes:
        """The first 8 bytes of the public key."""
        return self._public[:KEY_ID_LEN]

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``; returns the 64-byte signature."""
        return self._private.sign(data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True if ``signature`` is this key's valid signature of ``data``."""
        return verify_signature(self._public, data, signature)

    def __repr__(self) -> str:
        return f"KeyPair(public_key={self.public_key_base64!r})"


def load_or_create_keypair(path: Path) -> KeyPair:
    """The key pair stored at ``path`` (32 raw seed bytes), created (0600, dir 0700) if absent.

    A runtime keeps one key across restarts, so capability tokens and allowances it signed stay
    trusted; a file of the wrong size is an error, never silently replaced.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = None
    except OSError as exc:
        raise CryptoKeyError(f"{path}: cannot read the runtime key: {exc}") from exc
    if data is not None:
        if len(data) != PRIVATE_KEY_LEN:
            raise CryptoKeyError(
                f"{path}: a runtime key must be {PRIVATE_KEY_LEN} bytes, found {len(data)}"
            )
        return KeyPair.from_private_bytes(data)
    keypair = KeyPair.generate()
    make_private_dirs(path.parent)
    try:
        # replace=False: never replaces a key another process created meanwhile
        atomic_write(path, keypair.private_bytes(), replace=False)
    except FileExistsError:
        return load_or_create_keypair(path)
    except OSError as exc:
        raise CryptoKeyError(f"{path}: cannot write the runtime key: {exc}") from exc
    return keypair
