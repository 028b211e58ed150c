"""Equivocation and fork evidence verified from the two signed headers alone: proven
pieces name the accused program and height; forged, identical, mismatched or merely
compatible headers are bogus evidence of the node holding them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coalition.errors import NotFound, VerificationError
from coalition.ledger.blocks import BlockHeader, SignedHeader, make_header, sign_header
from coalition.ledger.canonical import canonical_json
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.ledger.merkle import leaf_hash, root
from coalition.verify.evidence import (
    BOGUS,
    EQUIVOCATION,
    FORK,
    RawEvidence,
    check_evidence,
    evidence_heights,
    verify_evidence,
)

A, B = "skyair", "staybright"
KEYS = {A: SigningKey.generate(), B: SigningKey.generate()}


def key_of(program: str) -> VerifyKey:
    if program not in KEYS:
        raise NotFound(f"no partner {program!r}")
    return KEYS[program].public_key


def chain(program: str, blocks: int, tag: str = "real") -> list[SignedHeader]:
    """A valid signed chain of ``blocks`` headers, two leaves a block."""
    headers: list[SignedHeader] = []
    leaves: list[bytes] = []
    prev: BlockHeader | None = None
    for n in range(blocks):
        block = [leaf_hash(f"{tag}-{n}-{m}".encode()) for m in range(2)]
        leaves.extend(block)
        at = f"2026-11-24T12:00:0{n}.000000Z"
        prev = make_header(program, prev, len(leaves) - 2, block, len(leaves), root(leaves), at)
        headers.append(sign_header(prev, KEYS[program]))
    return headers


def text(signed: SignedHeader) -> str:
    return canonical_json(signed.to_json()).decode()


def piece(
    first: SignedHeader,
    second: SignedHeader,
    kind: str = EQUIVOCATION,
    *,
    program: str | None = None,
    height: int | None = None,
    evidence_id: int = 1,
) -> RawEvidence:
    return RawEvidence(
        id=evidence_id,
        program=program or second.header.program,
        height=second.header.height if height is None else height,
        kind=kind,
        reason="test",
        first=text(first),
        second=text(second),
    )


def resign(signed: SignedHeader, key: SigningKey | None = None, **changes: object) -> SignedHeader:
    """The header with ``changes``, signed by ``key`` (default: its program's key)."""
    header = replace(signed.header, **changes)  # type: ignore[arg-type]
    return sign_header(header, key or KEYS[header.program])


def test_two_signed_headers_at_one_height_prove_an_equivocation() -> None:
    h1 = chain(A, 2)[1]
    other = resign(h1, sealed_at="2030-01-01T00:00:00.000000Z")
    proof = verify_evidence(piece(h1, other), key_of)
    assert (proof.program, proof.height, proof.kind) == (A, 1, EQUIVOCATION)
    assert proof.first == h1 and proof.second == other
    assert "height 1" in proof.why
    # A rebuilt chain: same height, other entries, still both signed by skyair.
    rebuilt = chain(A, 2, tag="rewritten")[1]
    assert verify_evidence(piece(h1, rebuilt), key_of).kind == EQUIVOCATION


def test_headers_that_do_not_form_one_chain_prove_a_fork() -> None:
    h0, h1 = chain(A, 2)
    for changes in (
        {"prev_hash": "1" * 64},
        {"first_index": 1, "log_size": 3},
        {"sealed_at": "2026-11-24T11:00:00.000000Z"},
    ):
        bad = resign(h1, **changes)
        proof = verify_evidence(piece(h0, bad, FORK), key_of)
        assert (proof.program, proof.height, proof.kind) == (A, 1, FORK)
    # A header that is impossible on its own (the witness stores it twice).
    fake_genesis = resign(h0, prev_hash="2" * 64)
    proof = verify_evidence(piece(fake_genesis, fake_genesis, FORK), key_of)
    assert (proof.kind, proof.height) == (FORK, 0)
    assert "genesis" in proof.why
    sizes = resign(h1, log_size=9)
    assert verify_evidence(piece(h0, sizes, FORK), key_of).kind == FORK


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        # The second header signed by staybright's key, not skyair's.
        (lambda h0, h1: piece(h1, resign(h1, KEYS[B])), "second header is not signed by skyair"),
        # A signature over other bytes (a header altered after signing).
        (
            lambda h0, h1: piece(
                h1,
                SignedHeader(replace(h1.header, log_root="3" * 64), h1.signature),
            ),
            "not signed by skyair",
        ),
        # The same header twice is no equivocation.
        (lambda h0, h1: piece(h1, h1), "same header"),
        # Two honest headers at different heights.
        (lambda h0, h1: piece(h0, h1), "compatible"),
        (lambda h0, h1: piece(h0, h1, FORK), "compatible"),
        # Headers of another program than the one accused.
        (
            lambda h0, h1: piece(
                h1, resign(h1, sealed_at="2031-01-01T00:00:00.000000Z"), program=B
            ),
            "not 'staybright'",
        ),
        # The row names another height than its headers'.
        (
            lambda h0, h1: piece(h1, resign(h1, sealed_at="2031-01-01T00:00:00.000000Z"), height=7),
            "names height 7",
        ),
        (
            lambda h0, h1: piece(
                h1, resign(h1, sealed_at="2031-01-01T00:00:00.000000Z"), "collusion"
            ),
            "unknown evidence kind",
        ),
    ],
)
def test_evidence_that_proves_nothing_is_refused(make: object, reason: str) -> None:
    h0, h1 = chain(A, 2)
    with pytest.raises(VerificationError, match=reason):
        verify_evidence(make(h0, h1), key_of)  # type: ignore[operator]


def test_unparsable_or_unknown_program_evidence_is_refused() -> None:
    h1 = chain(A, 2)[1]
    other = resign(h1, sealed_at="2031-01-01T00:00:00.000000Z")
    broken = replace(piece(h1, other), second='{"header": 1}')
    with pytest.raises(VerificationError, match="second signed header does not parse"):
        verify_evidence(broken, key_of)
    stranger = SigningKey.generate()
    c0 = sign_header(replace(h1.header, program="mallory"), stranger)
    c1 = sign_header(replace(other.header, program="mallory"), stranger)
    with pytest.raises(VerificationError, match="not a partner"):
        verify_evidence(piece(c0, c1), key_of)


def test_check_evidence_reports_proven_once_and_bogus_against_the_holder() -> None:
    h1 = chain(A, 2)[1]
    other = resign(h1, sealed_at="2030-01-01T00:00:00.000000Z")
    forged = SignedHeader(other.header, h1.signature)  # skyair never signed this one
    report = check_evidence(
        {
            B: [piece(h1, other, evidence_id=3), piece(h1, forged, evidence_id=4)],
            "beanhouse": [piece(other, h1, evidence_id=9)],  # the same proof, other order
            A: [],
            "coffee": None,  # no witness
        },
        key_of,
    )
    assert not report.ok
    assert report.held == {B: 2, "beanhouse": 1, A: 0, "coffee": None}
    (proven,) = report.proven
    assert (proven.kind, proven.program, proven.height) == (EQUIVOCATION, A, 1)
    assert proven.holders == (B, "beanhouse") and proven.evidence_ids == (3, 9)
    assert set(proven.headers) == {h1.header.hash(), other.header.hash()}
    (bogus,) = report.bogus
    assert (bogus.kind, bogus.program, bogus.accused, bogus.height) == (BOGUS, B, A, 1)
    assert bogus.evidence_ids == (4,)
    doc = report.to_json()
    assert doc["ok"] is False and doc["fault_count"] == 2
    assert doc["faults"][0] == {  # type: ignore[index]
        "kind": EQUIVOCATION,
        "program": A,
        "message": proven.message,
        "height": 1,
        "accused": A,
        "holders": [B, "beanhouse"],
        "evidence_ids": [3, 9],
        "headers": list(proven.headers),
    }
    rendered = report.render()
    assert "FAILED (2 faults)" in rendered
    assert "[equivocation] (skyair, height 1, held by staybright #3, beanhouse #9)" in rendered
    assert "[bogus-evidence] (staybright, height 1, held by staybright #4)" in rendered
    assert "offers no evidence" in rendered


def test_no_evidence_is_sound() -> None:
    report = check_evidence({A: [], B: []}, key_of)
    assert report.ok and report.faults == []
    assert report.to_json()["fault_count"] == 0
    assert "OK" in report.render().splitlines()[0]


def test_a_fork_seen_only_by_a_consistency_proof_is_proven_by_the_accused_chain() -> None:
    h0, h1 = chain(A, 2)
    # Links to header 0, but its log is another one: only a consistency proof shows it.
    rewritten = resign(h1, log_root="4" * 64)
    claim = piece(h0, rewritten, FORK)
    with pytest.raises(VerificationError, match="compatible"):
        verify_evidence(claim, key_of)
    # skyair's own chain, as the audit read it, holds another signed header 1.
    proof = verify_evidence(claim, key_of, {0: h0, 1: h1})
    assert (proof.program, proof.height, proof.kind) == (A, 1, EQUIVOCATION)
    assert proof.pair == tuple(sorted([h1.header.hash(), rewritten.header.hash()]))
    assert "in its own chain" in proof.why
    # The chain agrees with the evidence (or its header there is not signed): unproven.
    with pytest.raises(VerificationError, match="neither differs"):
        verify_evidence(claim, key_of, {0: h0, 1: rewritten})
    unsigned = SignedHeader(h1.header, KEYS[B].sign_object(h1.header.to_json()))
    with pytest.raises(VerificationError):
        verify_evidence(claim, key_of, {1: unsigned})
    report = check_evidence({B: [claim]}, key_of, {A: {0: h0, 1: h1}})
    assert [(f.kind, f.program, f.height) for f in report.faults] == [(EQUIVOCATION, A, 1)]
    assert evidence_heights(claim) == {0, 1}
