"""``ledger.rotation``: the one rule of which key signs a header, the rotation's checks,
and ``ChainVerifier`` following rotations at any place in any block (a property test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.blocks import BlockHeader, SignedHeader, make_header, sign_header
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.chain import ChainVerifier
from coalition.ledger.entries import entry_leaf_hash, format_time
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import CompactRange
from coalition.ledger.rotation import (
    KeyRotation,
    KeySchedule,
    rotation_of,
    rotations_in,
    sign_rotation,
)
from coalition.points import operations
from coalition.points.operations import EntryContext
from coalition.points.replay import Replay

KEYS = [SigningKey.generate() for _ in range(5)]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def schedule_of(*keys: SigningKey, at: tuple[int, ...] = ()) -> KeySchedule:
    schedule = KeySchedule("skyair", keys[0].public_key)
    for epoch, (index, new) in enumerate(zip(at, keys[1:], strict=True), start=1):
        schedule.apply(sign_rotation("skyair", epoch, keys[epoch - 1], new), index)
    return schedule


def test_a_rotation_is_in_force_from_the_block_after_the_one_that_holds_it() -> None:
    schedule = schedule_of(KEYS[0], KEYS[1], at=(5,))
    assert schedule.key_at(0) == KEYS[0].public_key
    assert schedule.key_at(5) == KEYS[0].public_key  # a block starting at the rotation
    assert schedule.key_at(6) == KEYS[1].public_key
    assert schedule.key == KEYS[1].public_key and schedule.epoch == 1


def test_two_rotations_in_one_block_chain_from_key_to_key() -> None:
    schedule = schedule_of(KEYS[0], KEYS[1], KEYS[2], at=(3, 4))
    assert schedule.key_at(3) == KEYS[0].public_key
    assert schedule.key_at(5) == KEYS[2].public_key
    with pytest.raises(VerificationError, match="names previous key"):
        schedule_of(KEYS[0], KEYS[1], at=(3,)).apply(
            sign_rotation("skyair", 2, KEYS[0], KEYS[2]), 9
        )


@pytest.mark.parametrize(
    ("rotation", "message"),
    [
        (lambda: sign_rotation("skyhotel", 1, KEYS[0], KEYS[1]), "of program 'skyhotel'"),
        (lambda: sign_rotation("skyair", 2, KEYS[0], KEYS[1]), "does not follow epoch 0"),
        (lambda: sign_rotation("skyair", 1, KEYS[3], KEYS[1]), "names previous key"),
        (lambda: sign_rotation("skyair", 1, KEYS[0], KEYS[0]), "already in force"),
    ],
)
def test_a_rotation_that_does_not_follow_the_key_in_force_changes_nothing(
    rotation: object, message: str
) -> None:
    schedule = schedule_of(KEYS[0])
    with pytest.raises(VerificationError, match=message):
        schedule.apply(rotation(), 1)  # type: ignore[operator]
    assert schedule.epoch == 0 and schedule.key == KEYS[0].public_key


def test_rotations_apply_in_log_order_only() -> None:
    schedule = schedule_of(KEYS[0], KEYS[1], at=(7,))
    with pytest.raises(VerificationError, match="out of order"):
        schedule.apply(sign_rotation("skyair", 2, KEYS[1], KEYS[2]), 7)


def test_the_rotation_object_is_parsed_strictly() -> None:
    good = sign_rotation("skyair", 1, KEYS[0], KEYS[1]).to_json()
    assert KeyRotation.from_json("skyair", good).key == KEYS[1].public_key
    for change, message in [
        ({"epoch": 0}, "starts at 1"),
        ({"key_id": "0" * 64}, "not the SHA-256"),
        ({"key": "AAAA"}, "32 bytes"),
        ({"extra": 1}, "unexpected keys"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            KeyRotation.from_json("skyair", {**good, **change})


def test_replay_refuses_a_malformed_rotation_entry() -> None:
    ctx = EntryContext("skyair", "e1", T0)
    body = dict(operations.key_rotation_entry(ctx, sign_rotation("skyair", 1, KEYS[0], KEYS[1])))
    Replay().apply(body)
    assert rotation_of(body) is not None
    bad = {**body, "rotation": {**body["rotation"], "key": "AAAA"}}  # type: ignore[dict-item]
    with pytest.raises(VerificationError, match="32 bytes"):
        Replay().apply(bad)


def _chain(
    sizes: list[int], rotate_at: set[int]
) -> list[tuple[BlockHeader, str, list[JsonObject]]]:
    """Blocks of ``sizes`` entries; the entries at ``rotate_at`` rotate to the next key;
    each header signed by the key the schedule says."""
    schedule = KeySchedule("skyair", KEYS[0].public_key)
    private = {KEYS[0].public_key: KEYS[0]}
    tree, prev, out, index = CompactRange(stride=None), None, [], 0
    for height, size in enumerate(sizes):
        block: list[JsonObject] = []
        signer = private[schedule.key_at(index)]
        rotations = []
        for _ in range(size):
            ctx = EntryContext("skyair", f"{index:032x}", T0 + timedelta(seconds=index))
            if index in rotate_at:
                new = KEYS[schedule.epoch + 1]
                rotation = sign_rotation("skyair", schedule.epoch + 1, private[schedule.key], new)
                private[new.public_key] = new
                rotations.append((index, rotation))
                schedule.apply(rotation, index)
                block.append(dict(operations.key_rotation_entry(ctx, rotation)))
            else:
                block.append(dict(operations.enroll(ctx, f"m{index}")))
            index += 1
        leaves = [entry_leaf_hash(e) for e in block]
        first = tree.size
        tree.extend(leaves)
        sealed = format_time(T0 + timedelta(hours=height))
        header = make_header("skyair", prev, first, leaves, tree.size, tree.root(), sealed)
        out.append((header, sign_header(header, signer).signature, block))
        prev = header
    return out


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=6),
    picks=st.lists(st.integers(0, 23), max_size=4, unique=True),
)
def test_chain_verifier_follows_rotations_anywhere(sizes: list[int], picks: list[int]) -> None:
    total = sum(sizes)
    rotate_at = {p for p in picks if p < total}
    blocks = _chain(sizes, rotate_at)
    verifier = ChainVerifier(KEYS[0].public_key, "skyair")
    for header, signature, entries in blocks:
        found = rotations_in([canonical_json(e) for e in entries], header.first_index)
        verifier.feed(SignedHeader(header, signature), [entry_leaf_hash(e) for e in entries], found)
    assert verifier.schedule.epoch == len(rotate_at)
    # Omitting a block's rotation makes the next header (if any) fail its signature.
    later = [
        n for n, (h, _, _) in enumerate(blocks) if h.first_index > min(rotate_at, default=total)
    ]
    if later:
        verifier = ChainVerifier(KEYS[0].public_key, "skyair")
        with pytest.raises(VerificationError, match="bad signature"):
            _feed_without_rotations(verifier, blocks)


def _feed_without_rotations(
    verifier: ChainVerifier, blocks: list[tuple[BlockHeader, str, list[JsonObject]]]
) -> None:
    for header, signature, entries in blocks:
        verifier.feed(SignedHeader(header, signature), [entry_leaf_hash(e) for e in entries])
