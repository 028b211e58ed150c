"""The quorum check alone: valid cosignatures count once per partner, forged or self
cosignatures are faults, and a node cannot keep headers pending by dating them ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coalition.ledger.blocks import BlockHeader, SignedHeader, sign_header
from coalition.ledger.entries import format_time
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.ledger.merkle import EMPTY_ROOT
from coalition.ledger.note import checkpoint_of, cosign, witness_name
from coalition.verify.witness_quorum import WitnessPolicy, check_quorum

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEYS = {p: SigningKey.generate() for p in ("air", "hotel", "coffee")}


def key_of(program: str) -> VerifyKey:
    return KEYS[program].public_key


def header(sealed: datetime) -> SignedHeader:
    return sign_header(
        BlockHeader(
            program="air",
            height=0,
            prev_hash="0" * 64,
            first_index=0,
            entry_count=0,
            block_root=EMPTY_ROOT.hex(),
            log_size=0,
            log_root=EMPTY_ROOT.hex(),
            sealed_at=format_time(sealed),
        ),
        KEYS["air"],
    )


def cosigned(signed: SignedHeader, *witnesses: str) -> list[str]:
    checkpoint = checkpoint_of(signed)
    return [cosign(checkpoint, KEYS[w], witness_name(w), 1_780_000_000) for w in witnesses]


def policy(quorum: int = 2) -> WitnessPolicy:
    return WitnessPolicy(
        quorum, ("air", "hotel", "coffee"), NOW - timedelta(seconds=60), NOW + timedelta(minutes=5)
    )


def kinds(signed: SignedHeader, lines: list[str], quorum: int = 2) -> list[str]:
    report = check_quorum("air", {0: signed}, {0: lines}, key_of, policy(quorum))
    return [f.kind for f in report.faults]


def test_a_quorum_of_distinct_partners_witnesses_a_header() -> None:
    signed = header(NOW - timedelta(hours=1))
    report = check_quorum(
        "air", {0: signed}, {0: cosigned(signed, "hotel", "coffee")}, key_of, policy()
    )
    assert report.ok and report.witnessed == 1


def test_the_same_witness_twice_or_the_program_itself_does_not_make_a_quorum() -> None:
    signed = header(NOW - timedelta(hours=1))
    assert kinds(signed, cosigned(signed, "hotel", "hotel")) == ["not-witnessed"]
    assert kinds(signed, cosigned(signed, "hotel", "air")) == [
        "cosignature-invalid",
        "not-witnessed",
    ]


def test_a_forged_cosignature_is_a_fault_even_with_a_quorum() -> None:
    signed = header(NOW - timedelta(hours=1))
    hotel, coffee = cosigned(signed, "hotel", "coffee")
    name, _, sig = coffee.rpartition(" ")
    forged = f"{name} {sig[:-8]}AAAAAAA="  # coffee's name and key id, a made-up signature
    assert kinds(signed, [hotel, coffee, forged]) == ["cosignature-invalid"]
    assert kinds(signed, [hotel, forged]) == ["cosignature-invalid", "not-witnessed"]


def test_a_young_header_is_pending_but_one_dated_ahead_is_a_fault() -> None:
    young = header(NOW)
    report = check_quorum("air", {0: young}, {0: []}, key_of, policy())
    assert report.ok and report.pending == [0]
    ahead = header(NOW + timedelta(days=365 * 70))
    assert kinds(ahead, []) == ["sealed-in-future"]
    assert kinds(ahead, cosigned(ahead, "hotel", "coffee")) == ["sealed-in-future"]
