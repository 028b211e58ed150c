"""Ed25519 keys, PEM round trips and object signatures."""

from __future__ import annotations

import base64
from hashlib import sha256

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.keys import SigningKey, VerifyKey


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def test_sign_and_verify(key: SigningKey) -> None:
    sig = key.sign(b"hello")
    key.public_key.verify(b"hello", sig)
    with pytest.raises(VerificationError):
        key.public_key.verify(b"hellp", sig)
    with pytest.raises(VerificationError):
        SigningKey.generate().public_key.verify(b"hello", sig)


def test_sign_object_is_over_canonical_bytes(key: SigningKey) -> None:
    obj: JsonObject = {"b": 1, "a": ["x", None]}
    sig_b64 = key.sign_object(obj)
    sig = base64.b64decode(sig_b64, validate=True)
    key.public_key.verify(canonical_json(obj), sig)
    key.public_key.verify_object({"a": ["x", None], "b": 1}, sig_b64)  # key order is moot
    with pytest.raises(VerificationError):
        key.public_key.verify_object({"b": 2, "a": ["x", None]}, sig_b64)


@pytest.mark.parametrize("bad", ["", "not base64!", "AAAA", "=" * 88])
def test_malformed_signature(key: SigningKey, bad: str) -> None:
    with pytest.raises(VerificationError):
        key.public_key.verify_object({"a": 1}, bad)


def test_public_key_forms(key: SigningKey) -> None:
    vk = key.public_key
    assert len(vk.raw) == 32
    assert vk.key_id == sha256(vk.raw).hexdigest()
    assert VerifyKey.from_raw(vk.raw) == vk
    assert VerifyKey.from_pem(vk.to_pem()) == vk
    assert hash(VerifyKey.from_raw(vk.raw)) == hash(vk)
    assert vk != SigningKey.generate().public_key
    with pytest.raises(InvalidArgument):
        VerifyKey.from_raw(b"\x00" * 31)
    with pytest.raises(InvalidArgument):
        VerifyKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_private_pem_round_trips(key: SigningKey) -> None:
    plain = key.to_pem()
    assert b"BEGIN PRIVATE KEY" in plain
    assert SigningKey.from_pem(plain).public_key == key.public_key
    locked = key.to_pem(b"s3cret")
    assert b"ENCRYPTED PRIVATE KEY" in locked
    assert SigningKey.from_pem(locked, b"s3cret").public_key == key.public_key
    with pytest.raises(InvalidArgument):
        SigningKey.from_pem(locked, b"wrong")
    with pytest.raises(InvalidArgument):
        SigningKey.from_pem(locked)
    with pytest.raises(InvalidArgument):
        SigningKey.from_pem(plain, b"unexpected")
    with pytest.raises(InvalidArgument):
        SigningKey.from_pem(b"garbage")
    assert "PRIVATE" not in repr(key)


def test_other_algorithms_refused() -> None:
    ec = generate_private_key(SECP256R1())
    pem = ec.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidArgument, match="Ed25519"):
        SigningKey.from_pem(pem)
    pub = ec.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidArgument, match="Ed25519"):
        VerifyKey.from_pem(pub)
