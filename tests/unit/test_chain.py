"""ChainVerifier: a good chain passes, every kind of break is caught at its height."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from coalition.errors import VerificationError
from coalition.ledger.blocks import BlockHeader, SignedHeader, make_header, sign_header
from coalition.ledger.chain import ChainVerifier
from coalition.ledger.entries import format_time
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import EMPTY_ROOT, CompactRange, leaf_hash, root

PROGRAM = "brewco"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SIZES = [2, 7, 1, 0, 16, 5]

Block = tuple[SignedHeader, list[bytes]]


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def chain(key: SigningKey) -> list[Block]:
    blocks: list[Block] = []
    log = CompactRange()
    prev: BlockHeader | None = None
    for height, n in enumerate(SIZES):
        leaves = [leaf_hash(f"entry {log.size + j}".encode()) for j in range(n)]
        first = log.size
        log.extend(leaves)
        sealed = format_time(T0 + timedelta(seconds=height))
        header = make_header(PROGRAM, prev, first, leaves, log.size, log.root(), sealed)
        blocks.append((sign_header(header, key), leaves))
        prev = header
    return blocks


def _verifier(key: SigningKey) -> ChainVerifier:
    return ChainVerifier(key.public_key, PROGRAM)


def test_good_chain_passes(key: SigningKey, chain: list[Block]) -> None:
    v = _verifier(key)
    assert v.size == 0
    assert v.last is None
    assert v.root() == EMPTY_ROOT
    all_leaves: list[bytes] = []
    for signed, leaves in chain:
        v.feed(signed, leaves)
        all_leaves += leaves
        assert v.last == signed.header
        assert v.size == len(all_leaves)
        assert v.root() == root(all_leaves)


def _feed_until(v: ChainVerifier, chain: list[Block], height: int) -> None:
    for signed, leaves in chain[:height]:
        v.feed(signed, leaves)


def _resigned(key: SigningKey, signed: SignedHeader, **changes: object) -> SignedHeader:
    return sign_header(dataclasses.replace(signed.header, **changes), key)  # type: ignore[arg-type]


@pytest.mark.parametrize("height", [0, 2, 4])
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("broken link", "prev_hash"),
        ("wrong height", "height"),
        ("changed leaf", "block_root"),
        ("wrong log root", "log_root"),
        ("wrong block root", "block_root"),
        ("wrong first index", "first_index"),
        ("wrong log size", "log_size"),
        ("missing leaf", "entry_count"),
        ("other key", "signature"),
        ("tampered header", "signature"),
        ("other program", "program"),
    ],
)
def test_breaks_are_caught(
    key: SigningKey, chain: list[Block], height: int, case: str, message: str
) -> None:
    v = _verifier(key)
    _feed_until(v, chain, height)
    signed, leaves = chain[height]
    h = signed.header
    if case == "broken link":
        signed = _resigned(key, signed, prev_hash="ab" * 32)
    elif case == "wrong height":
        signed = _resigned(key, signed, height=h.height + 1)
    elif case == "changed leaf":
        leaves = [*leaves]
        leaves[-1] = leaf_hash(b"forged")
    elif case == "wrong log root":
        signed = _resigned(key, signed, log_root="cd" * 32)
    elif case == "wrong block root":
        signed = _resigned(key, signed, block_root="ef" * 32)
    elif case == "wrong first index":
        signed = _resigned(key, signed, first_index=h.first_index + 1, log_size=h.log_size + 1)
    elif case == "wrong log size":
        signed = _resigned(key, signed, log_size=h.log_size + 1)
    elif case == "missing leaf":
        leaves = leaves[:-1]
    elif case == "other key":
        signed = sign_header(h, SigningKey.generate())
    elif case == "tampered header":
        signed = SignedHeader(dataclasses.replace(h, log_size=h.log_size + 1), signed.signature)
    elif case == "other program":
        signed = _resigned(key, signed, program="other")
    with pytest.raises(VerificationError, match=f"height {signed.header.height}") as err:
        v.feed(signed, leaves)
    assert message in str(err.value)
    # A refused block changes nothing: the real one is still accepted.
    assert v.size == (chain[height - 1][0].header.log_size if height else 0)
    v.feed(*chain[height])
    _feed_until_end(v, chain, height + 1)


def _feed_until_end(v: ChainVerifier, chain: list[Block], start: int) -> None:
    for signed, leaves in chain[start:]:
        v.feed(signed, leaves)
    assert v.root() == bytes.fromhex(chain[-1][0].header.log_root)


def test_reordered_headers_are_caught(key: SigningKey, chain: list[Block]) -> None:
    v = _verifier(key)
    _feed_until(v, chain, 2)
    with pytest.raises(VerificationError, match=r"height 3 \(expected height 2\)"):
        v.feed(*chain[3])
    v.feed(*chain[2])
    with pytest.raises(VerificationError, match=r"height 2 \(expected height 3\)"):
        v.feed(*chain[2])  # a replayed block


def test_first_block_must_be_genesis(key: SigningKey, chain: list[Block]) -> None:
    with pytest.raises(VerificationError, match="height 1"):
        _verifier(key).feed(*chain[1])


def test_sealed_at_must_not_go_back(key: SigningKey, chain: list[Block]) -> None:
    v = _verifier(key)
    _feed_until(v, chain, 3)
    signed, leaves = chain[3]
    earlier = _resigned(key, signed, sealed_at=format_time(T0 - timedelta(seconds=1)))
    with pytest.raises(VerificationError, match="height 3: sealed_at"):
        v.feed(earlier, leaves)


def test_equal_seal_times_are_fine(key: SigningKey) -> None:
    v = _verifier(key)
    sealed = format_time(T0)
    prev = None
    log = CompactRange()
    for height in range(3):
        leaves = [leaf_hash(bytes([height]))]
        first = log.size
        log.extend(leaves)
        header = make_header(PROGRAM, prev, first, leaves, log.size, log.root(), sealed)
        v.feed(sign_header(header, key), leaves)
        prev = header
    assert v.size == 3
