"""The chain audit's fast paths agree with the exact ones: compact-range merging equals
leaf-by-leaf appending, the bulk entry test never passes a body the exact checks would
fault, and an audit run with worker processes names the same faults as one without."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.blocks import GENESIS_PREV, BlockHeader, sign_header
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.ledger.entries import check_envelope, format_time, parse_time
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.ledger.merkle import CompactRange, leaf_hash, root, subtree_roots
from coalition.points import operations
from coalition.points.model import moment
from coalition.points.operations import EntryContext
from coalition.points.replay import Replay
from coalition.points.rules import ProgramRules
from coalition.verify import chain_audit
from coalition.verify.chain_audit import audit_chain
from coalition.verify.entry_scan import fast_entry, scan_block, scan_lines
from coalition.verify.source import BlockLines, RawEntry, RawHeader

PROGRAM = "speedair"
START = datetime(2026, 3, 1, tzinfo=UTC)


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(n.to_bytes(4, "big") + bytes([i % 256])).digest() for i in range(n)]


def test_subtree_roots_merge_like_leaf_by_leaf_appends() -> None:
    leaves = _leaves(70)
    for first in range(0, 40):
        for end in range(first, 70, 7):
            log = CompactRange(stride=None)
            log.extend(leaves[:first])
            log.extend_subtrees(subtree_roots(first, leaves[first:end]))
            assert (log.size, log.root()) == (end, root(leaves[:end]))


def test_extend_subtrees_refuses_a_misaligned_subtree() -> None:
    log = CompactRange(stride=None)
    log.extend(_leaves(3))
    with pytest.raises(InvalidArgument):
        log.extend_subtrees([(1, bytes(32))])


def test_entry_time_equals_parse_time_and_refuses_other_spellings() -> None:
    for text in ("2026-03-01T10:00:00.000001Z", "2024-02-29T23:59:59.999999Z"):
        assert moment(text) == parse_time(text)
    for bad in (
        "2023-02-29T00:00:00.000000Z",
        "2026-03-01T24:00:00.000000Z",
        "x",
        "2026-03-01T11:00:00+01:00",  # an instant parse_time reads, not in the entry spelling
    ):
        with pytest.raises(VerificationError):
            moment(bad)


def _body(**extra: object) -> JsonObject:
    body: JsonObject = {
        "type": "coalition/entry/v1",
        "program": PROGRAM,
        "id": "e1",
        "kind": "earn",
        "at": "2026-03-01T10:00:00.000000Z",
        "account": "a" * 64,
        "amount": 5,
    }
    body.update(extra)  # type: ignore[arg-type]
    return body


def _exact_ok(data: bytes) -> bool:
    try:
        parsed = parse_json(data)
        assert isinstance(parsed, dict)
        check_envelope(parsed)
        return canonical_json(parsed) == data and parsed["program"] == PROGRAM
    except (InvalidArgument, AssertionError):
        return False


NOT_FAST = [
    b'{"amount":5,"amount":5}',
    b'{ "id":"x"}',
    b'{"b":1,"a":2}',
    b'{"a":1.0}',
    b'{"a":-0}',
    b'{"a":1e3}',
    b'{"a":NaN}',
    b'{"a":9007199254740992}',
    b'{"a":"\\u0041"}',
    b'{"a":"\\/"}',
    b'{"a":"\\u001F"}',
    b'{"a":"\\u0008"}',
    b'{"a":"\\ud800"}',
    b'{"a":"\xc3\xa9"}',
    b'{"a":"x"}\n',
    b"[1]",
]


@pytest.mark.parametrize("fragment", NOT_FAST)
def test_fast_entry_flags_what_is_not_canonical(fragment: bytes) -> None:
    good = canonical_json(_body())
    data = good[:-1] + b"," + fragment[1:] if fragment.startswith(b"{") else fragment
    assert fast_entry(data, PROGRAM) is None
    assert fast_entry(fragment, PROGRAM) is None


def test_fast_entry_passes_canonical_entries_exactly() -> None:
    cases = [
        _body(),
        _body(note='for dinner, with "quotes" and \n\t and \x01 and \x0b'),
        _body(note="a \\ before a space may be a false alarm, never a pass of a fault"),
        _body(at="2026-03-01T10:00:00.00000Z"),
        _body(program="otherair"),
        _body(kind=""),
        _body(at="2026-02-30T10:00:00.000000Z"),
        _body(amount=-(2**53 - 1)),
    ]
    for body in cases:
        data = canonical_json(body)
        fast = fast_entry(data, PROGRAM)
        if fast is not None:
            assert _exact_ok(data) and fast == parse_json(data)
    assert fast_entry(canonical_json(cases[0]), PROGRAM) == cases[0]
    assert fast_entry(canonical_json(cases[1]), PROGRAM) == cases[1]


def test_scan_block_hashes_the_exact_bytes() -> None:
    bodies = [canonical_json(_body(id=f"e{i}")) for i in range(5)] + [b"not json"]
    scan = scan_block(bodies, PROGRAM, 3, pack=True)
    assert scan.leaves == [leaf_hash(b) for b in bodies]
    assert scan.root == root(scan.leaves) and scan.flagged == [5]
    assert scan.parsed()[:5] == [parse_json(b) for b in bodies[:5]] and scan.parsed()[5] is None


# --- whole audits, with and without workers ---------------------------------------------


def _chain(
    key: SigningKey, blocks: int, per_block: int, *, early_seal: int | None = None
) -> list[tuple[str, str, list[bytes]]]:
    """A clean chain of enrolls and earns: (header text, signature, entry bodies); the
    block at height ``early_seal`` is dated 3 s before its last entries."""
    rules = ProgramRules()
    state = Replay()
    out = []
    log = CompactRange(stride=None)
    prev, at, n = GENESIS_PREV, START, 0
    members: list[str] = []
    for height in range(blocks):
        bodies = []
        for _ in range(per_block):
            at += timedelta(seconds=1)
            ctx = EntryContext(PROGRAM, f"e{n:06d}", at)
            if n % 4 == 0:
                members.append(f"{n:064x}")
                body = operations.enroll(ctx, members[-1])
            else:
                body = operations.earn_purchase(
                    ctx, rules, members[-1], 0, f"P-{n}", 10_000, "", reference_used=False
                )
            state.apply(body)
            bodies.append(canonical_json(body))
            n += 1
        leaves = [leaf_hash(b) for b in bodies]
        log.extend(leaves)
        header = BlockHeader(
            program=PROGRAM,
            height=height,
            prev_hash=prev,
            first_index=log.size - len(bodies),
            entry_count=len(bodies),
            log_size=log.size,
            block_root=root(leaves).hex(),
            log_root=log.root().hex(),
            sealed_at=format_time(at - timedelta(seconds=3 if height == early_seal else 0)),
        )
        signed = sign_header(header, key)
        prev = header.hash()
        out.append((canonical_json(header.to_json()).decode(), signed.signature, bodies))
    return out


class _Stream:
    """A streaming source over blocks in memory (what a bundle hands the audit)."""

    def __init__(self, blocks: list[tuple[str, str, list[bytes]]], first: int = 0) -> None:
        self._blocks = blocks
        self._first = first

    def blocks(self) -> Iterator[tuple[RawHeader, list[RawEntry]]]:
        index = 0
        for height, (text, signature, bodies) in enumerate(self._blocks):
            yield (
                RawHeader(height, text, signature),
                [RawEntry(index + i, body) for i, body in enumerate(bodies)],
            )
            index += len(bodies)

    def public_key(self) -> VerifyKey | None:
        return None

    def latest_header(self) -> RawHeader | None:
        return None

    def headers(self, start: int, limit: int) -> list[RawHeader]:
        raise AssertionError("a stream is read with blocks()")

    def block_entries(self, height: int, first_index: int, count: int) -> list[RawEntry]:
        raise AssertionError("a stream is read with blocks()")

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject | None:
        return None

    def close(self) -> None:
        return None


class _LineStream(_Stream):
    """The same blocks as a bundle hands them: ``BlockLines``, no ``RawEntry`` made."""

    def blocks(self) -> Iterator[tuple[RawHeader, BlockLines]]:  # type: ignore[override]
        index = 0
        for height, (text, signature, bodies) in enumerate(self._blocks):
            lines = [body + b"\n" for body in bodies]
            yield RawHeader(height, text, signature), BlockLines(index, lines, b"".join(lines))
            index += len(bodies)


@pytest.fixture
def parallel_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_audit, "PARALLEL_AFTER", 10)


def _tamper(blocks: list[tuple[str, str, list[bytes]]]) -> list[tuple[str, str, list[bytes]]]:
    changed = [list(b) for b in blocks]
    bodies = list(blocks[3][2])
    bodies[2] = bodies[2].replace(b'"amount":', b'"amount": ', 1)  # not canonical
    bodies[5] = b"{broken"
    changed[3][2] = bodies
    later = list(blocks[6][2])
    later[1] = later[1].replace(b'"kind":"earn"', b'"kind":"oops"')
    changed[6][2] = later
    return [(t, s, b) for t, s, b in changed]  # type: ignore[misc]


@pytest.mark.usefixtures("parallel_early")
def test_workers_and_no_workers_report_the_same() -> None:
    key = SigningKey.generate()
    blocks = _chain(key, 10, 12)
    clean = [audit_chain(_Stream(blocks), key.public_key, workers=w) for w in (0, 1, 2)]
    for report in clean:
        assert report.ok, report.render()
        assert (report.entries, report.log_verified_height) == (120, 9)
    assert len({(r.supply, r.accounts, r.log_root) for r in clean}) == 1

    bad = _tamper(blocks)
    reports = [audit_chain(_Stream(bad), key.public_key, workers=w) for w in (0, 1)]
    found = [[(f.kind, f.height, f.log_index, f.entry_id) for f in r.faults.items] for r in reports]
    assert found[0] == found[1]
    assert found[0] == [
        ("entry-non-canonical", 3, 38, "e000038"),
        ("entry-malformed", 3, 41, None),
        ("block-root", 3, None, None),
        ("block-root", 6, None, None),
        ("replay", 6, 73, "e000073"),
    ]


@pytest.mark.usefixtures("parallel_early")
def test_an_entry_dated_after_its_block_was_sealed_is_a_fault() -> None:
    key = SigningKey.generate()
    blocks = _chain(key, 6, 12, early_seal=4)
    for workers in (0, 2):
        report = audit_chain(_Stream(blocks), key.public_key, workers=workers)
        found = [(f.kind, f.height, f.log_index) for f in report.faults.items]
        assert found == [("entry-after-seal", 4, i) for i in (57, 58, 59)], workers


def _found(report: chain_audit.AuditReport) -> list[tuple[str, int | None, int | None, str | None]]:
    return [(f.kind, f.height, f.log_index, f.entry_id) for f in report.faults.items]


@pytest.mark.usefixtures("parallel_early")
def test_block_lines_audit_like_raw_entries_with_and_without_workers() -> None:
    """A stream of ``BlockLines`` (shipped to workers as one bytes object, no stored
    hashes) gives the report a stream of ``RawEntry`` lists gives, clean or tampered."""
    key = SigningKey.generate()
    blocks = _chain(key, 10, 12)
    for chain in (blocks, _tamper(blocks)):
        reports = [
            audit_chain(stream(chain), key.public_key, workers=w)
            for stream in (_Stream, _LineStream)
            for w in (0, 2)
        ]
        assert len({(r.ok, r.entries, r.supply, r.accounts, r.log_root) for r in reports}) == 1
        assert all(_found(r) == _found(reports[0]) for r in reports)
    assert reports[0].faults.items  # the tampered chain did fail


def test_block_lines_behave_as_a_list_of_raw_entries() -> None:
    bodies = [b'{"a":1}', b'{"b":"x y"}', b"{}"]
    lines = [body + b"\n" for body in bodies]
    block = BlockLines(7, lines, b"".join(lines))
    expected = [RawEntry(7 + n, body) for n, body in enumerate(bodies)]
    assert len(block) == 3 and list(block) == expected and block == expected
    assert block[-1] == expected[-1] and block[1:] == expected[1:]
    assert block.bodies == bodies and block == BlockLines(7, list(lines), b"".join(lines))
    assert block != BlockLines(8, lines, b"".join(lines))


def test_scan_lines_is_scan_block_of_the_lines() -> None:
    bodies = [canonical_json(_body(id=f"e{i}")) for i in range(4)] + [b"not json"]
    data = b"".join(body + b"\n" for body in bodies)
    assert scan_lines(data, 5, PROGRAM, 3) == scan_block(bodies, PROGRAM, 3, pack=True)
    for count in (4, 6):
        with pytest.raises(ValueError, match="lines"):
            scan_lines(data, count, PROGRAM, 3)
    with pytest.raises(ValueError, match="lines"):
        scan_lines(data[:-1], 5, PROGRAM, 3)
