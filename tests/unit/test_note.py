"""C2SP signed notes, checkpoints and cosignatures against the published examples."""

from __future__ import annotations

import base64
import json
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.blocks import SignedHeader, make_header, sign_header
from coalition.ledger.entries import format_time
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import leaf_hash, root
from coalition.ledger.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    assemble_note,
    checkpoint_body,
    checkpoint_of,
    cosign,
    cosignature_timestamp,
    note_verifier,
    parse_checkpoint,
    parse_note,
    parse_signature_line,
    parse_vkey,
    sign_note,
    verify_cosignature,
    verify_note,
    vkey,
)

VECTORS = Path(__file__).parent.parent / "vectors" / "c2sp"
GO = json.loads((VECTORS / "sumdb-note.json").read_text(encoding="utf-8"))
TEXT: str = GO["text"]
PETER_SIG: str = GO["peter_sig"]
ENOCH_SIG: str = GO["enoch_sig"]


def _skey(text: str) -> tuple[str, SigningKey]:
    """A Go-style ``PRIVATE+KEY+<name>+<id>+<base64(type || seed)>`` signer key."""
    private, key, name, _, material = text.split("+", 4)
    assert (private, key) == ("PRIVATE", "KEY")
    raw = base64.b64decode(material)
    assert raw[0] == SIG_ED25519
    return name, SigningKey(Ed25519PrivateKey.from_private_bytes(raw[1:]))


PETER_NAME, PETER_KEY = _skey(GO["peter_skey"])


# --- vkeys --------------------------------------------------------------------------------


def test_published_vkeys_parse_and_round_trip() -> None:
    for text in (GO["peter_vkey"], GO["enoch_vkey"]):
        verifier = parse_vkey(text)
        assert verifier.sig_type == SIG_ED25519
        assert verifier.vkey() == text
        assert vkey(verifier.name, verifier.key, SIG_ED25519) == text
    peter = parse_vkey(GO["peter_vkey"])
    assert peter.name == "PeterNeumann"
    assert peter.key_id == bytes.fromhex("c74f20a3")
    assert peter.key == PETER_KEY.public_key


def test_published_bad_vkeys_are_refused() -> None:
    for text in GO["bad_vkeys"]:
        with pytest.raises(InvalidArgument):
            parse_vkey(text)


def test_every_mangled_vkey_is_refused() -> None:
    good: str = GO["peter_vkey"]
    mangled = {good[i:j] for i in range(len(good)) for j in range(i + 1, len(good) + 1)}
    mangled.discard(good)
    for i in range(len(good)):
        mangled.add(good[:i] + chr(ord(good[i]) + 1) + good[i + 1 :])
    for text in mangled:
        with pytest.raises(InvalidArgument):
            parse_vkey(text)


def test_cosigner_vkeys_use_type_4_and_their_own_key_id() -> None:
    key = SigningKey.generate().public_key
    v1 = parse_vkey(vkey("witness.example/w1", key, SIG_ED25519))
    v4 = parse_vkey(vkey("witness.example/w1", key, SIG_COSIGNATURE_V1))
    assert v4.sig_type == SIG_COSIGNATURE_V1
    assert v4.vkey().split("+")[2].startswith("B")  # base64 of 0x04 || key
    assert v1.key_id != v4.key_id


# --- signed notes -------------------------------------------------------------------------


def test_signing_reproduces_the_published_note_byte_for_byte() -> None:
    assert sign_note(TEXT, PETER_KEY, PETER_NAME) == TEXT + "\n" + PETER_SIG


def test_open_with_one_known_key_ignores_the_unknown_one() -> None:
    peter, enoch = parse_vkey(GO["peter_vkey"]), parse_vkey(GO["enoch_vkey"])
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    opened = verify_note(note, [peter])
    assert opened.text == TEXT
    assert [s.name for s in opened.verified] == ["PeterNeumann"]
    assert [s.name for s in opened.unverified] == ["EnochRoot"]
    both = verify_note(note.encode(), [peter, enoch])
    assert [s.name for s in both.verified] == ["PeterNeumann", "EnochRoot"]
    assert both.unverified == ()


def test_note_without_a_known_signature_is_refused() -> None:
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        verify_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])


def test_a_failing_known_signature_refuses_the_whole_note() -> None:
    peter = parse_vkey(GO["peter_vkey"])
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(VerificationError, match="PeterNeumann\\+c74f20a3"):
        verify_note(TEXT + "\n" + bad, [peter])
    with pytest.raises(VerificationError):
        verify_note(TEXT.replace("cryptography", "cryptographY") + "\n" + PETER_SIG, [peter])


def test_duplicate_signatures_count_once() -> None:
    peter = parse_vkey(GO["peter_vkey"])
    opened = verify_note(TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG, [peter])
    assert len(opened.verified) == 1 and len(opened.unverified) == 1


def test_ambiguous_verifiers_are_refused_only_when_used() -> None:
    peter, enoch = parse_vkey(GO["peter_vkey"]), parse_vkey(GO["enoch_vkey"])
    impostor = type(enoch)(enoch.name, enoch.key_id, enoch.sig_type, peter.key)
    with pytest.raises(InvalidArgument, match="ambiguous key EnochRoot\\+af0cfe78"):
        verify_note(TEXT + "\n" + ENOCH_SIG, [enoch, peter, impostor])
    assert verify_note(TEXT + "\n" + PETER_SIG, [enoch, peter, impostor]).verified


@pytest.mark.parametrize(
    "note",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2p"
        "ZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(InvalidArgument):
        verify_note(note, [parse_vkey(GO["peter_vkey"])])


def test_non_utf8_bytes_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="UTF-8"):
        parse_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode())


def test_sign_refuses_text_without_final_newline() -> None:
    with pytest.raises(InvalidArgument):
        sign_note("abc", PETER_KEY, PETER_NAME)
    with pytest.raises(InvalidArgument):
        sign_note(TEXT, PETER_KEY, "a+b")


# --- checkpoints --------------------------------------------------------------------------


def test_published_checkpoint_parses_and_re_encodes() -> None:
    note = parse_note((VECTORS / "checkpoint.txt").read_text(encoding="utf-8"))
    cp = parse_checkpoint(note.text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert base64.b64encode(cp.root).decode() == "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    assert cp.extensions == ()
    assert cp.body() == note.text
    assert [s.name for s in note.signatures] == ["example.com/behind-the-sofa"]


@pytest.mark.parametrize(
    "text",
    [
        "origin\n10\n",
        "\n10\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "origin\n010\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "origin\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "origin\n10\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n",
        "origin\n10\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",
        "origin\n10\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\nextension\n",
        "origin\n10\nAAAA\n",
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_checkpoint(text)


def test_checkpoint_with_extensions_round_trips() -> None:
    body = checkpoint_body("example.org/log", 0, bytes(32), ["ext one", "two"])
    assert parse_checkpoint(body).extensions == ("ext one", "two")


def _signed_header(key: SigningKey, program: str = "skyair") -> tuple[SignedHeader, bytes]:
    leaves = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]
    sealed = format_time(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    header = make_header(program, None, 0, leaves, 3, root(leaves), sealed)
    return sign_header(header, key), root(leaves)


def test_checkpoint_of_a_header_names_the_program_and_its_log() -> None:
    key = SigningKey.generate()
    signed, log_root = _signed_header(key)
    body = checkpoint_of(signed)
    cp = parse_checkpoint(body)
    assert (cp.origin, cp.size, cp.root) == ("coalition/skyair", 3, log_root)
    assert parse_checkpoint(checkpoint_of(signed, "x.example/log")).origin == "x.example/log"
    note = sign_note(body, key, "coalition/skyair")
    assert verify_note(note, [note_verifier("coalition/skyair", key.public_key)]).text == body


# --- cosignatures -------------------------------------------------------------------------


def test_published_cosignature_decodes_to_the_published_time_and_message() -> None:
    note = parse_note((VECTORS / "cosigned-checkpoint.txt").read_text(encoding="utf-8"))
    witness = note.signatures[1]
    assert witness.name == "witness.example.com/w1"
    assert len(witness.signature) == 8 + 64
    assert cosignature_timestamp(witness.line()) == 1679315147
    message = (VECTORS / "cosignature-message.txt").read_text(encoding="utf-8")
    # Our cosigned message for that time over that checkpoint is the published one: a
    # key signing it produces a signature a C2SP verifier checks against that text.
    key = SigningKey.generate()
    line = cosign(note.text, key, "witness.example.com/w1", 1679315147)
    raw = base64.b64decode(line.removesuffix("\n").split(" ")[2])
    key.public_key.verify(message.encode(), raw[12:])
    assert raw[4:12] == struct.pack(">Q", 1679315147)


def test_cosign_round_trip_and_note_verification() -> None:
    log_key, witness_key = SigningKey.generate(), SigningKey.generate()
    signed, _ = _signed_header(log_key)
    body = checkpoint_of(signed)
    line = cosign(body, witness_key, "staybright", 1_790_000_000)
    got = verify_cosignature(body, line, witness_key.public_key, "staybright")
    assert (got.name, got.timestamp, got.line) == ("staybright", 1_790_000_000, line)
    note = assemble_note(body, [sign_note(body, log_key, "coalition/skyair").split("\n\n")[1]])
    note = assemble_note(body, [*note.split("\n\n")[1].splitlines(keepends=True), line])
    opened = verify_note(
        note,
        [
            note_verifier("coalition/skyair", log_key.public_key),
            note_verifier("staybright", witness_key.public_key, SIG_COSIGNATURE_V1),
        ],
    )
    assert [s.name for s in opened.verified] == ["coalition/skyair", "staybright"]


def test_tampered_cosignatures_are_refused() -> None:
    log_key, witness_key = SigningKey.generate(), SigningKey.generate()
    signed, _ = _signed_header(log_key)
    body = checkpoint_of(signed)
    line = cosign(body, witness_key, "staybright", 1_790_000_000)
    sig = parse_signature_line(line)
    later = type(sig)(sig.name, sig.key_id, struct.pack(">Q", 1_790_000_001) + sig.signature[8:])
    flipped = bytearray(sig.signature)
    flipped[-1] ^= 1
    bad_sig = type(sig)(sig.name, sig.key_id, bytes(flipped))
    other_body = checkpoint_body("coalition/skyair", 4, bytes(32))
    for text, candidate, key, name in [
        (body, later.line(), witness_key.public_key, "staybright"),  # time changed
        (body, bad_sig.line(), witness_key.public_key, "staybright"),  # signature changed
        (other_body, line, witness_key.public_key, "staybright"),  # another checkpoint
        (body, line, log_key.public_key, "staybright"),  # another key
        (body, line, witness_key.public_key, "gocoffee"),  # another name
    ]:
        with pytest.raises(VerificationError):
            verify_cosignature(text, candidate, key, name)
    with pytest.raises(InvalidArgument):
        verify_cosignature(body, line.replace("\u2014", "-"), witness_key.public_key, "staybright")


def test_cosign_refuses_bad_input() -> None:
    key = SigningKey.generate()
    body = checkpoint_body("coalition/skyair", 1, bytes(32))
    for timestamp in (-1, 2**63, True):
        with pytest.raises(InvalidArgument):
            cosign(body, key, "w", timestamp)
    with pytest.raises(InvalidArgument):
        cosign("not a checkpoint\n", key, "w", 1)
