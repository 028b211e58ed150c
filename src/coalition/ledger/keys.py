"""Ed25519 signing keys (RFC 8032) through ``cryptography``.

Objects are signed over their RFC 8785 canonical JSON bytes and the signature travels as
standard base64 (RFC 4648 §4). A key is named by its ``key_id``: the hex SHA-256 of the
raw 32-byte public key. PEM files hold PKCS#8 private keys (encrypted with the best
available scheme when a password is given) and SubjectPublicKeyInfo public keys.
"""

from __future__ import annotations

import base64
import binascii
from hashlib import sha256

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.canonical import JsonObject, canonical_json

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32


class VerifyKey:
    """An Ed25519 public key. Equal keys compare equal and hash alike."""

    __slots__ = ("_key", "_raw", "key_id")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id: str = sha256(self._raw).hexdigest()
        """Hex SHA-256 of the raw public key."""

    @classmethod
    def from_raw(cls, data: bytes) -> VerifyKey:
        if len(data) != PUBLIC_KEY_SIZE:
            raise InvalidArgument(f"an Ed25519 public key is 32 bytes, not {len(data)}")
        return cls(Ed25519PublicKey.from_public_bytes(data))

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise InvalidArgument(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidArgument("the PEM public key is not an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def raw(self) -> bytes:
        """The raw 32-byte public key."""
        return self._raw

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raises VerificationError unless ``signature`` signs ``message`` with this key."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise VerificationError(
                f"Ed25519 signature does not verify with key {self.key_id[:16]}"
            ) from None

    def verify_object(self, obj: JsonObject, signature_b64: str) -> None:
        """Raises VerificationError unless ``signature_b64`` signs canonical_json(obj)."""
        self.verify(canonical_json(obj), decode_signature(signature_b64))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey(key_id={self.key_id[:16]}...)"


def decode_signature(signature_b64: str) -> bytes:
    """Canonical standard base64 to a 64-byte signature; VerificationError if malformed."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise VerificationError("signature is not valid base64") from None
    if len(sig) != SIGNATURE_SIZE:
        raise VerificationError(f"an Ed25519 signature is 64 bytes, not {len(sig)}")
    if base64.b64encode(sig).decode("ascii") != signature_b64:
        # Non-zero padding bits: one signature, several spellings. Allow only one.
        raise VerificationError("signature is not canonical base64")
    return sig


class SigningKey:
    """An Ed25519 private key. Never logged: ``repr`` shows only the public key id."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key: VerifyKey = VerifyKey(key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> SigningKey:
        """Load a PKCS#8 PEM private key; InvalidArgument on bad PEM or wrong password."""
        try:
            key = serialization.load_pem_private_key(data, password)
        except TypeError as exc:
            # cryptography raises TypeError for a missing or unexpected password.
            raise InvalidArgument(f"cannot load the private key: {exc}") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidArgument(
                f"not a PEM private key, or the password is wrong: {exc}"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidArgument("the PEM private key is not an Ed25519 key")
        return cls(key)

    def to_pem(self, password: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted with BestAvailableEncryption when ``password`` is given."""
        encryption: serialization.KeySerializationEncryption
        if password:
            encryption = serialization.BestAvailableEncryption(password)
        elif password is None:
            encryption = serialization.NoEncryption()
        else:
            raise InvalidArgument("the password must not be empty")
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def sign_object(self, obj: JsonObject) -> str:
        """Standard base64 of the signature over canonical_json(obj)."""
        return base64.b64encode(self._key.sign(canonical_json(obj))).decode("ascii")

    def __repr__(self) -> str:
        return f"SigningKey(public key_id={self.public_key.key_id[:16]}...)"
