"""Signed partner envelopes: exact bytes, signatures, and every malformed shape refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coalition.errors import InvalidArgument, NotFound, VerificationError
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.ledger.envelope import (
    ENVELOPE_TYPE,
    MAX_ENVELOPE_BYTES,
    Envelope,
    SignedMessage,
    make_envelope,
    new_message_id,
    open_message,
    parse_envelope,
    sign_message,
)
from coalition.ledger.keys import SigningKey, VerifyKey

AT = datetime(2026, 11, 24, 16, 20, 3, 123456, tzinfo=UTC)
NONCE = "0123456789abcdef0123456789abcdef"
KEY = SigningKey.generate()


def key_of(program: str) -> VerifyKey:
    if program == "skyair":
        return KEY.public_key
    raise NotFound(f"{program} is not a partner")


def doc(**changes: object) -> JsonObject:
    base: JsonObject = {
        "type": ENVELOPE_TYPE,
        "kind": "convert",
        "from": "skyair",
        "to": "staybright",
        "id": NONCE,
        "at": "2026-11-24T16:20:03.123456Z",
        "body": {"conversions": []},
    }
    for name, value in changes.items():
        if value is None:
            del base[name]
        else:
            base[name] = value  # type: ignore[assignment]
    return base


def test_the_envelope_is_the_canonical_json_of_its_fields() -> None:
    data = make_envelope("convert", "skyair", "staybright", {"b": 1, "a": "é"}, AT, NONCE)
    assert (
        data
        == (
            '{"at":"2026-11-24T16:20:03.123456Z","body":{"a":"é","b":1},"from":"skyair",'
            f'"id":"{NONCE}","kind":"convert","to":"staybright","type":"coalition.partner.v1"}}'
        ).encode()
    )


def test_sign_open_and_json_round_trip() -> None:
    msg = sign_message(KEY, "convert", "skyair", "staybright", {"n": 1}, AT, NONCE)
    expected = Envelope("convert", "skyair", "staybright", NONCE, AT, {"n": 1})
    assert open_message(msg, key_of) == expected
    as_json = msg.to_json()
    assert as_json == {"envelope": msg.envelope.decode(), "signature": msg.signature.hex()}
    # Embedded in an entry and read back years later: the same bytes, still verifying.
    again = SignedMessage.from_json(parse_json(canonical_json({"receipt": as_json}))["receipt"])  # type: ignore[index]
    assert again == msg
    assert open_message(again, key_of) == expected


def test_fresh_ids_are_random_hex() -> None:
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100
    first = sign_message(KEY, "ping", "skyair", "staybright", {}, AT)
    second = sign_message(KEY, "ping", "skyair", "staybright", {}, AT)
    assert parse_envelope(first.envelope).id != parse_envelope(second.envelope).id


def test_a_wrong_signature_or_key_is_a_verification_error() -> None:
    msg = sign_message(KEY, "convert", "skyair", "staybright", {"n": 1}, AT, NONCE)
    other = SigningKey.generate()
    with pytest.raises(VerificationError, match="not signed by skyair's key"):
        open_message(msg, lambda _: other.public_key)
    flipped = bytes([msg.signature[0] ^ 0x80]) + msg.signature[1:]
    with pytest.raises(VerificationError, match="not signed by skyair's key"):
        open_message(SignedMessage(msg.envelope, flipped), key_of)
    with pytest.raises(VerificationError, match="64 bytes, not 3"):
        open_message(SignedMessage(msg.envelope, b"abc"), key_of)
    edited = canonical_json(doc(body={"conversions": [1]}))
    with pytest.raises(VerificationError):
        open_message(SignedMessage(edited, msg.signature), key_of)


def test_an_unknown_sender_raises_the_key_lookups_error() -> None:
    msg = sign_message(KEY, "convert", "beanhouse", "staybright", {}, AT, NONCE)
    with pytest.raises(NotFound, match="beanhouse is not a partner"):
        open_message(msg, key_of)


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (doc(type="coalition.partner.v2"), "envelope type"),
        (doc(kind=None), "missing \\['kind'\\]"),
        (doc(extra="x"), "unexpected \\['extra'\\]"),
        (doc(kind="Convert"), "bad message kind"),
        (doc(kind=""), "bad message kind"),
        (doc(kind=7), "bad message kind"),
        (doc(**{"from": "SkyAir"}), "envelope from must be a program id"),
        (doc(to="x"), "envelope to must be a program id"),
        (doc(id="0123"), "32 lowercase hex"),
        (doc(id=NONCE.upper()), "32 lowercase hex"),
        (doc(at="2026-11-24T16:20:03Z"), "six fractional digits"),
        (doc(at="2026-11-24T17:20:03.123456+01:00"), "six fractional digits"),
        (doc(at="yesterday"), "RFC 3339"),
        (doc(at=1), "RFC 3339"),
        (doc(body=[]), "body must be a JSON object"),
    ],
)
def test_malformed_envelopes_are_invalid_arguments(envelope: JsonObject, reason: str) -> None:
    data = canonical_json(envelope)
    with pytest.raises(InvalidArgument, match=reason):
        parse_envelope(data)
    with pytest.raises(InvalidArgument, match=reason):
        open_message(SignedMessage(data, KEY.sign(data)), key_of)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (canonical_json(doc()).replace(b",", b", ", 1), "canonical"),
        (b" " + canonical_json(doc()), "canonical"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"a": 1.5}', "floating-point"),
        (b"{", "invalid JSON"),
    ],
)
def test_non_canonical_or_non_json_bytes_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        parse_envelope(data)


def test_oversized_envelopes_are_refused() -> None:
    big = {"blob": "x" * MAX_ENVELOPE_BYTES}
    with pytest.raises(InvalidArgument, match="larger than"):
        make_envelope("convert", "skyair", "staybright", big, AT, NONCE)
    with pytest.raises(InvalidArgument, match="larger than"):
        parse_envelope(canonical_json(doc(body=big)))


def test_make_envelope_refuses_bad_fields() -> None:
    with pytest.raises(InvalidArgument, match="naive"):
        make_envelope("convert", "skyair", "staybright", {}, datetime(2026, 1, 1), NONCE)
    with pytest.raises(InvalidArgument, match="32 lowercase hex"):
        make_envelope("convert", "skyair", "staybright", {}, AT, "nonce")
    with pytest.raises(InvalidArgument, match="floating-point"):
        make_envelope("convert", "skyair", "staybright", {"x": 0.5}, AT, NONCE)  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument, match="program id"):
        sign_message(KEY, "convert", "skyair", "Nope!", {}, AT)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        "x",
        {"envelope": "{}"},
        {"envelope": "{}", "signature": "00" * 64, "extra": 1},
        {"envelope": 1, "signature": "00" * 64},
        {"envelope": "{}", "signature": "00" * 63},
        {"envelope": "{}", "signature": "AA" * 64},
        {"envelope": "{}", "signature": 7},
    ],
)
def test_signed_message_from_json_refuses_other_shapes(obj: object) -> None:
    with pytest.raises(InvalidArgument):
        SignedMessage.from_json(obj)  # type: ignore[arg-type]
