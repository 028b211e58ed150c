"""Blocks, signed headers and the public proof documents, end to end on a small log."""

from __future__ import annotations

import copy
import dataclasses
import string
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from coalition.errors import CoalitionError, InvalidArgument, VerificationError
from coalition.ledger.blocks import (
    GENESIS_PREV,
    HEADER_TYPE,
    BlockHeader,
    SignedHeader,
    make_header,
    sign_header,
)
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json, parse_json
from coalition.ledger.entries import ENTRY_TYPE, entry_leaf_hash, format_time
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    root,
)
from coalition.ledger.proofs import (
    consistency_document,
    inclusion_document,
    verify_consistency_document,
    verify_inclusion_document,
)

PROGRAM = "skyair"
T0 = datetime(2026, 11, 24, 16, 20, 3, 123456, tzinfo=UTC)
BLOCK_SIZES = [3, 1, 5, 4, 0, 2]


@dataclasses.dataclass
class Log:
    key: SigningKey
    entries: list[JsonObject]
    leaves: list[bytes]
    headers: list[SignedHeader]


def _entry(i: int) -> JsonObject:
    return {
        "type": ENTRY_TYPE,
        "program": PROGRAM,
        "id": f"e-{i}",
        "kind": "earn",
        "at": format_time(T0 + timedelta(seconds=i)),
        "account": f"acct-{i % 3}",
        "amount": 100 + i,
    }


def build_log(key: SigningKey, sizes: list[int] = BLOCK_SIZES) -> Log:
    entries: list[JsonObject] = []
    leaves: list[bytes] = []
    headers: list[SignedHeader] = []
    log = CompactRange()
    prev: BlockHeader | None = None
    for height, n in enumerate(sizes):
        block = [_entry(len(entries) + j) for j in range(n)]
        block_leaves = [entry_leaf_hash(e) for e in block]
        first = log.size
        log.extend(block_leaves)
        entries += block
        leaves += block_leaves
        sealed = format_time(T0 + timedelta(minutes=height))
        header = make_header(PROGRAM, prev, first, block_leaves, log.size, log.root(), sealed)
        headers.append(sign_header(header, key))
        prev = header
    return Log(key, entries, leaves, headers)


@pytest.fixture(scope="module")
def log() -> Log:
    return build_log(SigningKey.generate())


def test_headers_chain(log: Log) -> None:
    first = log.headers[0].header
    assert first.height == 0
    assert first.prev_hash == GENESIS_PREV
    assert first.block_root == root(log.leaves[:3]).hex()
    for a, b in zip(log.headers, log.headers[1:], strict=False):
        assert b.header.prev_hash == a.header.hash()
        assert b.header.height == a.header.height + 1
        assert b.header.first_index == a.header.log_size
    last = log.headers[-1].header
    assert last.log_size == len(log.leaves)
    assert last.log_root == root(log.leaves).hex()
    assert log.headers[4].header.block_root == EMPTY_ROOT.hex()


def test_header_json_round_trip(log: Log) -> None:
    for signed in log.headers:
        obj = signed.to_json()
        assert obj["header"]["type"] == HEADER_TYPE  # type: ignore[index,call-overload]
        back = SignedHeader.from_json(parse_json(canonical_json(obj)))
        assert back == signed
        back.verify(log.key.public_key)
        assert back.header.hash() == signed.header.hash()


@pytest.mark.parametrize(
    "change",
    [
        {"height": -1},
        {"height": True},
        {"height": 2**53},
        {"prev_hash": "A" * 64},
        {"prev_hash": "0" * 63},
        {"log_root": 5},
        {"sealed_at": "2026-11-24T16:20:03Z"},
        {"sealed_at": "2026-11-24T17:20:03.000000+01:00"},
        {"program": ""},
        {"type": "coalition/block-header/v2"},
        {"extra": 1},
    ],
)
def test_header_from_json_is_strict(log: Log, change: JsonObject) -> None:
    obj = log.headers[1].header.to_json()
    obj.update(change)
    with pytest.raises(InvalidArgument):
        BlockHeader.from_json(obj)
    missing = log.headers[1].header.to_json()
    del missing["block_root"]
    with pytest.raises(InvalidArgument):
        BlockHeader.from_json(missing)


def test_make_header_refuses_a_broken_chain(log: Log) -> None:
    prev = log.headers[1].header
    leaves = log.leaves[4:6]
    later = format_time(T0 + timedelta(days=1))
    good = make_header(PROGRAM, prev, 4, leaves, 6, root(log.leaves[:6]), later)
    assert good.height == 2
    with pytest.raises(InvalidArgument):
        make_header(PROGRAM, prev, 3, leaves, 5, EMPTY_ROOT, later)
    with pytest.raises(InvalidArgument):
        make_header(PROGRAM, prev, 4, leaves, 7, EMPTY_ROOT, later)
    with pytest.raises(InvalidArgument):
        make_header("other", prev, 4, leaves, 6, EMPTY_ROOT, later)
    with pytest.raises(InvalidArgument):
        make_header(PROGRAM, prev, 4, leaves, 6, EMPTY_ROOT, format_time(T0))


def _inclusion_doc(log: Log, index: int, height: int) -> JsonObject:
    signed = log.headers[height]
    size = signed.header.log_size
    path = inclusion_proof(index, log.leaves[:size])
    return inclusion_document(log.entries[index], index, path, signed)


def _consistency_doc(log: Log, h1: int, h2: int) -> JsonObject:
    first, second = log.headers[h1], log.headers[h2]
    leaves = log.leaves[: second.header.log_size]
    path = consistency_proof(first.header.log_size, leaves)
    return consistency_document(first, second, path)


def test_every_inclusion_document_verifies(log: Log) -> None:
    vk = log.key.public_key
    for height, signed in enumerate(log.headers):
        for index in range(signed.header.log_size):
            doc = _inclusion_doc(log, index, height)
            verify_inclusion_document(doc, vk)
            # The document survives a trip through JSON text.
            verify_inclusion_document(parse_json(canonical_json(doc)), vk)


def test_every_consistency_document_verifies(log: Log) -> None:
    vk = log.key.public_key
    for h1 in range(len(log.headers)):
        for h2 in range(h1, len(log.headers)):
            doc = _consistency_doc(log, h1, h2)
            verify_consistency_document(parse_json(canonical_json(doc)), vk)


def test_consistency_from_an_empty_genesis() -> None:
    log = build_log(SigningKey.generate(), [0, 0, 3, 2])
    vk = log.key.public_key
    for h2 in range(4):
        verify_consistency_document(_consistency_doc(log, 0, h2), vk)
    doc = _consistency_doc(log, 0, 3)
    doc["path"] = [log.leaves[0].hex()]
    with pytest.raises(VerificationError):
        verify_consistency_document(doc, vk)


def _swap_char(s: str, i: int) -> str:
    """``s`` with character i replaced by another character of the same family."""
    c = s[i]
    if c in "0123456789abcdef" and len(s) == 64:
        alphabet = "0123456789abcdef"
    elif c in string.digits:
        alphabet = string.digits
    elif c in string.ascii_letters + "+/":
        alphabet = string.ascii_letters + string.digits + "+/"
    else:
        alphabet = "x-_."
    other = alphabet[(alphabet.index(c) + 1) % len(alphabet)] if c in alphabet else "x"
    return s[:i] + other + s[i + 1 :]


def _mutations(value: JsonValue) -> Iterator[JsonValue]:
    """Every single-character or ±1 change of every scalar inside ``value``."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        yield value + 1
        if value > 0:
            yield value - 1
    elif isinstance(value, str):
        for i in range(len(value)):
            yield _swap_char(value, i)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for m in _mutations(item):
                items = list(value)
                items[i] = m
                yield items
    elif isinstance(value, dict):
        for k, item in value.items():
            for m in _mutations(item):
                obj = dict(value)
                obj[k] = m
                yield obj


def _all_mutations_fail(
    doc: JsonObject, verify: Callable[[JsonValue, VerifyKey], None], log: Log
) -> int:
    count = 0
    for mutated in _mutations(doc):
        assert mutated != doc
        with pytest.raises((InvalidArgument, VerificationError)):
            verify(mutated, log.key.public_key)
        count += 1
    return count


def test_any_changed_character_fails_inclusion(log: Log) -> None:
    doc = _inclusion_doc(log, 6, 3)
    original = copy.deepcopy(doc)
    n = _all_mutations_fail(doc, verify_inclusion_document, log)
    assert n > 500
    assert doc == original
    verify_inclusion_document(doc, log.key.public_key)


def test_any_changed_character_fails_consistency(log: Log) -> None:
    doc = _consistency_doc(log, 2, 5)
    n = _all_mutations_fail(doc, verify_consistency_document, log)
    assert n > 500
    verify_consistency_document(doc, log.key.public_key)


def test_structural_changes_fail(log: Log) -> None:
    vk = log.key.public_key
    doc = _inclusion_doc(log, 6, 3)
    for key in doc:
        broken = dict(doc)
        del broken[key]
        with pytest.raises(InvalidArgument):
            verify_inclusion_document(broken, vk)
    with pytest.raises(InvalidArgument):
        verify_inclusion_document({**doc, "extra": 1}, vk)
    path = doc["path"]
    assert isinstance(path, list)
    with pytest.raises(VerificationError):
        verify_inclusion_document({**doc, "path": path[:-1]}, vk)
    with pytest.raises(VerificationError):
        verify_inclusion_document({**doc, "path": [*path, path[0]]}, vk)
    # The entry of another index, or a header of another size, does not verify.
    with pytest.raises(VerificationError):
        verify_inclusion_document({**doc, "entry": log.entries[5]}, vk)
    other = log.headers[5]
    with pytest.raises(VerificationError):
        verify_inclusion_document(
            {**doc, "header": other.header.to_json(), "signature": other.signature}, vk
        )
    # Header 4 seals an empty block: same log as header 3, so the proof holds under it too.
    empty = log.headers[4]
    verify_inclusion_document(
        {**doc, "header": empty.header.to_json(), "signature": empty.signature}, vk
    )


def test_wrong_key_fails(log: Log) -> None:
    other = SigningKey.generate().public_key
    with pytest.raises(VerificationError):
        verify_inclusion_document(_inclusion_doc(log, 0, 0), other)
    with pytest.raises(VerificationError):
        verify_consistency_document(_consistency_doc(log, 0, 3), other)
    with pytest.raises(VerificationError):
        log.headers[0].verify(other)


def test_consistency_rejects_equivocation_and_rollback(log: Log) -> None:
    vk = log.key.public_key
    h2 = log.headers[2].header
    fork = dataclasses.replace(h2, sealed_at=format_time(T0 + timedelta(hours=5)))
    forked = sign_header(fork, log.key)
    doc = consistency_document(log.headers[2], forked, [])
    with pytest.raises(VerificationError, match="equivocation"):
        verify_consistency_document(doc, vk)
    backwards = _consistency_doc(log, 2, 3)
    backwards["first"], backwards["second"] = backwards["second"], backwards["first"]
    backwards["first_signature"], backwards["second_signature"] = (
        backwards["second_signature"],
        backwards["first_signature"],
    )
    with pytest.raises(VerificationError):
        verify_consistency_document(backwards, vk)
    other_program = build_log(log.key)
    mixed = consistency_document(log.headers[0], other_program.headers[0], [])
    verify_consistency_document(mixed, vk)  # the same program and data: the same header


def test_builders_check_their_input(log: Log) -> None:
    signed = log.headers[1]
    with pytest.raises(InvalidArgument):
        inclusion_document(log.entries[0], signed.header.log_size, [], signed)
    with pytest.raises(InvalidArgument):
        inclusion_document({**log.entries[0], "program": "x"}, 0, [], signed)
    with pytest.raises(InvalidArgument):
        consistency_document(log.headers[3], log.headers[1], [])


def test_errors_are_coalition_errors() -> None:
    assert issubclass(VerificationError, CoalitionError)
