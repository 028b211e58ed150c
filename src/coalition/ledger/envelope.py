"""Signed partner messages: the envelope every node-to-node call carries (docs/coalition.md).

An envelope is the RFC 8785 canonical JSON of ``{"type", "kind", "from", "to", "id",
"at", "body"}``, signed with the sender's Ed25519 ledger key over exactly those bytes.
Receipts and rejections are embedded verbatim in ledger entries, so auditors re-verify
them years later with ``open_message`` and the manifest's keys; nothing here does I/O.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json, parse_json
from coalition.ledger.entries import PROGRAM_ID, check_time, format_time
from coalition.ledger.keys import SIGNATURE_SIZE, SigningKey, VerifyKey

ENVELOPE_TYPE = "coalition.partner.v1"
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
"""Largest envelope accepted: a batch of conversions fits; a flood does not."""
MAX_CLOCK_SKEW = timedelta(seconds=300)
"""The clock difference the coalition tolerates: a message whose ``at`` is further than
this from the receiver's clock is refused, and an auditor accepts a header sealed at
most this far ahead of its own clock."""

_KEYS = frozenset({"type", "kind", "from", "to", "id", "at", "body"})
_KIND = re.compile(r"[a-z][a-z0-9-]{0,63}", re.ASCII)
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}", re.ASCII)


def new_message_id() -> str:
    """32 random lowercase hex digits: a message id (128 bits, never reused in practice)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The checked content of an envelope (``from`` is ``sender``: a Python keyword)."""

    kind: str
    sender: str
    to: str
    id: str
    at: datetime
    body: JsonObject


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """Envelope bytes and the sender's 64-byte Ed25519 signature over them."""

    envelope: bytes
    signature: bytes

    def to_json(self) -> JsonObject:
        """``{"envelope": <the canonical JSON text>, "signature": <hex>}``, for entries."""
        try:
            text = self.envelope.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("envelope is not UTF-8 text") from None
        return {"envelope": text, "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, obj: JsonValue) -> SignedMessage:
        """The inverse of ``to_json``; InvalidArgument for any other shape."""
        if not isinstance(obj, dict) or set(obj) != {"envelope", "signature"}:
            raise InvalidArgument("a signed message is an object with envelope and signature")
        envelope, signature = obj["envelope"], obj["signature"]
        if not isinstance(envelope, str):
            raise InvalidArgument("signed message envelope must be a string")
        if not isinstance(signature, str) or not _HEX_SIGNATURE.fullmatch(signature):
            raise InvalidArgument("signed message signature must be 128 lowercase hex digits")
        return cls(envelope.encode("utf-8"), bytes.fromhex(signature))


def make_envelope(
    kind: str, sender: str, to: str, body: JsonObject, at: datetime, nonce: str
) -> bytes:
    """The canonical envelope bytes; InvalidArgument if a field is malformed."""
    doc: JsonObject = {
        "type": ENVELOPE_TYPE,
        "kind": kind,
        "from": sender,
        "to": to,
        "id": nonce,
        "at": format_time(at),
        "body": body,
    }
    data = canonical_json(doc)
    _check_fields(doc, len(data))
    return data


def sign_message(
    key: SigningKey,
    kind: str,
    sender: str,
    to: str,
    body: JsonObject,
    at: datetime,
    nonce: str | None = None,
) -> SignedMessage:
    """Make and sign an envelope (a fresh random id unless ``nonce`` is given)."""
    data = make_envelope(kind, sender, to, body, at, nonce or new_message_id())
    return SignedMessage(data, key.sign(data))


def parse_envelope(data: bytes) -> Envelope:
    """Check the envelope's shape (canonical bytes, fields, types); no signature check."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise InvalidArgument(f"envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    doc = parse_json(data)
    if not isinstance(doc, dict):
        raise InvalidArgument("envelope must be a JSON object")
    if canonical_json(doc) != data:
        raise InvalidArgument("envelope is not in RFC 8785 canonical form")
    return _check_fields(doc, len(data))


def open_message(msg: SignedMessage, key_of: Callable[[str], VerifyKey]) -> Envelope:
    """The envelope of ``msg`` once its signature verifies with ``key_of(sender)``.

    InvalidArgument for a malformed envelope; ``key_of``'s own error for an unknown
    sender; VerificationError for a signature that does not verify.
    """
    envelope = parse_envelope(msg.envelope)
    verify_signature(msg, envelope, key_of(envelope.sender))
    return envelope


def verify_signature(msg: SignedMessage, envelope: Envelope, key: VerifyKey) -> None:
    """Check ``msg``'s signature over its envelope bytes with ``key``, for a caller that
    already parsed ``envelope`` from them; VerificationError naming the message."""
    if len(msg.signature) != SIGNATURE_SIZE:
        raise VerificationError(
            f"message {envelope.id} from {envelope.sender}: an Ed25519 signature is 64 "
            f"bytes, not {len(msg.signature)}"
        )
    try:
        key.verify(msg.envelope, msg.signature)
    except VerificationError:
        raise VerificationError(
            f"message {envelope.id} ({envelope.kind}) is not signed by {envelope.sender}'s key"
        ) from None


def _check_fields(doc: JsonObject, size: int) -> Envelope:
    if size > MAX_ENVELOPE_BYTES:
        raise InvalidArgument(f"envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    if set(doc) != _KEYS:
        missing, extra = sorted(_KEYS - set(doc)), sorted(set(doc) - _KEYS)
        raise InvalidArgument(f"envelope fields: missing {missing}, unexpected {extra}")
    if doc["type"] != ENVELOPE_TYPE:
        raise InvalidArgument(f"envelope type must be {ENVELOPE_TYPE!r}, not {doc['type']!r}")
    kind, sender, to, nonce, body = doc["kind"], doc["from"], doc["to"], doc["id"], doc["body"]
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise InvalidArgument(f"bad message kind {kind!r}: use 1-64 of a-z 0-9 -, letter first")
    for what, program in (("from", sender), ("to", to)):
        if not isinstance(program, str) or not PROGRAM_ID.fullmatch(program):
            raise InvalidArgument(f"envelope {what} must be a program id, not {program!r}")
    if not isinstance(nonce, str) or not _MESSAGE_ID.fullmatch(nonce):
        raise InvalidArgument("envelope id must be 32 lowercase hex digits")
    if not isinstance(body, dict):
        raise InvalidArgument("envelope body must be a JSON object")
    assert isinstance(sender, str) and isinstance(to, str)
    return Envelope(kind, sender, to, nonce, check_time(doc["at"], "envelope at"), body)
