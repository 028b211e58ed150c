"""The replay split by account (``verify.replay_shards``) and the audit that runs it in
worker processes (``audit.workers.ProcessWorkers``) against the sequential replay and the
audit without them: on random chains made by the real operations and on the same chains
made hostile (``test_replay_fast``'s generators), the split replay takes a chain exactly
when the sequential fast path takes every entry, with the same totals; and a whole audit
with the workers gives the very report the audit without them gives, faults included."""

from __future__ import annotations

import copy
import json
import marshal
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kind_samples import AGREEMENT_DOC, two_chains
from test_chain_audit_speedpaths import _chain, _found, _LineStream, _Stream, _tamper
from test_replay_fast import build_chain, mutate, op

from coalition.audit.workers import ProcessWorkers, WorkerDied
from coalition.errors import CoalitionError
from coalition.ledger.blocks import GENESIS_PREV, BlockHeader, sign_header
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.entries import format_time, parse_time
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import CompactRange, leaf_hash, root
from coalition.points import operations
from coalition.points.operations import EntryContext
from coalition.points.replay import Replay
from coalition.points.replay_fast import Prepared, apply_run, prepare
from coalition.verify import chain_audit
from coalition.verify.chain_audit import AuditReport, audit_chain
from coalition.verify.replay_shards import ReplayShard, merged, split, split_state

_WORKERS: ProcessWorkers | None = None


def workers() -> ProcessWorkers:
    """One set of worker processes for the whole module (each audit resets nothing it
    needs: a sharded audit loads its own state)."""
    global _WORKERS
    if _WORKERS is None:
        _WORKERS = ProcessWorkers(2)
    return _WORKERS


@pytest.fixture(scope="module", autouse=True)
def _close_workers() -> Iterator[None]:
    yield
    global _WORKERS
    if _WORKERS is not None:
        _WORKERS.close()
        _WORKERS = None


@contextmanager
def parallel_early() -> Iterator[None]:
    saved = chain_audit.PARALLEL_AFTER
    chain_audit.PARALLEL_AFTER = 10
    try:
        yield
    finally:
        chain_audit.PARALLEL_AFTER = saved


# --- the split replay against the sequential fast path, no processes ---------------------


def _prepared(chain: list[JsonObject]) -> list[Prepared] | None:
    items = [prepare(entry) for entry in chain]
    return None if any(p is None for p in items) else [p for p in items if p is not None]


def _figures(replay: Replay) -> tuple[int, int, dict[str, int], int]:
    return len(replay.accounts), replay.supply(), dict(replay.points_by_kind), replay.entries


def _sharded(items: list[Prepared], shards: int, cut: int, block: int) -> object:
    """Sequential fast path for the first ``cut`` tuples, then the rest split across
    ``shards`` in blocks of ``block``, as ``chain_audit`` does; None when declined."""
    sequential = Replay()
    if apply_run(sequential, items[:cut], 0) < cut:
        return None
    states = [ReplayShard(s) for s in split_state(sequential, shards)]
    for start in range(cut, len(items), block):
        for shard, ops in zip(states, split(items[start : start + block], shards), strict=True):
            shard.apply(marshal.dumps(ops))
    if any(s.declined for s in states):
        return None
    total = merged(sequential, [s.summary() for s in states])
    return total.accounts, total.supply, total.points_by_kind, total.entries


def _same_verdict(chain: list[JsonObject], shards: int, cut: int, block: int) -> None:
    items = _prepared(chain)
    if items is None:
        return  # a block with such an entry never goes to the shards
    replay = Replay()
    taken = apply_run(replay, copy.deepcopy(items), 0) == len(items)
    sharded = _sharded(items, shards, min(cut, len(items)), block)
    assert (sharded is not None) == taken
    if taken:
        assert sharded == _figures(replay)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(op, min_size=1, max_size=60),
    st.integers(1, 4),
    st.integers(0, 30),
    st.integers(1, 9),
)
def test_split_replay_takes_honest_chains_with_the_sequential_totals(
    ops: list[Any], shards: int, cut: int, block: int
) -> None:
    chain = build_chain(ops)
    items = _prepared(chain)
    assert items is not None
    assert _sharded(items, shards, min(cut, len(items)), block) is not None
    _same_verdict(chain, shards, cut, block)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(op, min_size=1, max_size=40),
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 10**6), st.integers()),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 4),
    st.integers(0, 30),
    st.integers(1, 9),
)
def test_split_replay_declines_exactly_what_the_sequential_fast_path_declines(
    ops: list[Any], changes: list[tuple[int, int, int, int]], shards: int, cut: int, block: int
) -> None:
    chain = build_chain(ops)
    for change in changes:
        mutate(chain, change)
    _same_verdict(chain, shards, cut, block)


def test_a_transfer_into_another_shard_and_a_reference_earned_twice_across_shards() -> None:
    """Found by construction: the receiver's half and the reference live on other shards
    than the sender's account, so each must be checked there."""
    chain = build_chain([("purchase", 0, 0, 500, 60), ("transfer", 0, 1, 100, 1)])
    items = _prepared(chain)
    assert items is not None
    for shards in (2, 3, 4):
        assert _sharded(items, shards, 0, 1) is not None
    earn = next(e for e in chain if e["kind"] == "earn")
    again = copy.deepcopy(earn)
    again["id"], again["account"] = "again", chain[1]["account"]
    assert isinstance(again["lot"], dict)
    again["lot"]["id"] = "again-lot"
    twice = _prepared([*chain, again])
    assert twice is not None
    for shards in (1, 2, 3, 4):
        assert _sharded(twice, shards, 0, 1) is None
    _same_verdict([*chain, again], 3, 0, 1)


# --- whole audits: with the workers and without -------------------------------------------


def _comparable(report: AuditReport) -> object:
    out = report.to_json()
    del out["timings_ms"]
    return out


def _blocks(
    key: SigningKey, bodies: list[bytes], per_block: int, sealed: list[str], program: str = "p"
) -> list[tuple[str, str, list[bytes]]]:
    log = CompactRange(stride=None)
    prev, out = GENESIS_PREV, []
    for height, start in enumerate(range(0, len(bodies), per_block)):
        part = bodies[start : start + per_block]
        leaves = [leaf_hash(b) for b in part]
        log.extend(leaves)
        header = BlockHeader(
            program=program,
            height=height,
            prev_hash=prev,
            first_index=log.size - len(part),
            entry_count=len(part),
            log_size=log.size,
            block_root=root(leaves).hex(),
            log_root=log.root().hex(),
            sealed_at=sealed[min(start + per_block, len(sealed)) - 1],
        )
        prev = header.hash()
        out.append(
            (canonical_json(header.to_json()).decode(), sign_header(header, key).signature, part)
        )
    return out


def _bytes(entry: JsonObject) -> bytes:
    try:
        return canonical_json(entry)
    except CoalitionError:  # a hostile value canonical JSON refuses (a float): still JSON
        return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def _seal_times(chain: list[JsonObject]) -> list[str]:
    """For each position, a seal time an hour after the latest readable entry time so
    far (a hostile time may still come after its block's seal: a fault either way)."""
    latest, out = datetime(2026, 1, 1, tzinfo=UTC), []
    for entry in chain:
        with suppress(CoalitionError):
            latest = max(latest, parse_time(str(entry.get("at"))))
        out.append(format_time(latest + timedelta(hours=1)))
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(op, min_size=20, max_size=60),
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 10**6), st.integers()),
        max_size=3,
    ),
    st.integers(3, 8),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_the_audit_with_workers_reports_what_the_audit_without_reports(
    ops: list[Any], changes: list[tuple[int, int, int, int]], per_block: int, tamper: int | None
) -> None:
    """Random chains, clean or made hostile (entries changed before signing: replay and
    canonical-form faults; or one entry's bytes after signing: a block-root fault)."""
    key = SigningKey.generate()
    chain = build_chain(ops)
    for change in changes:
        mutate(chain, change)
    bodies = [_bytes(entry) for entry in chain]
    blocks = _blocks(key, bodies, per_block, _seal_times(chain))
    if tamper is not None:
        height = tamper % len(blocks)
        text, signature, part = blocks[height]
        changed = list(part)
        n = tamper % len(changed)
        changed[n] = changed[n].replace(b'"amount":', b'"amount":1', 1)
        blocks[height] = (text, signature, changed)
    with parallel_early():
        for stream in (_Stream, _LineStream):
            alone = audit_chain(stream(blocks), key.public_key, workers=0)
            split_up = audit_chain(stream(blocks), key.public_key, parallel=workers())
            assert _comparable(split_up) == _comparable(alone)


def test_the_audit_with_workers_names_the_known_tamper_faults() -> None:
    key = SigningKey.generate()
    blocks = _chain(key, 10, 12)
    with parallel_early():
        clean = audit_chain(_LineStream(blocks), key.public_key, parallel=workers())
        assert clean.ok and (clean.entries, clean.log_verified_height) == (120, 9)
        assert "sharded_attempt" not in clean.timings_ms  # one pass: the shards took it
        bad = audit_chain(_LineStream(_tamper(blocks)), key.public_key, parallel=workers())
    assert "sharded_attempt" not in bad.timings_ms  # flagged entries: the replay came back
    assert _found(bad) == [
        ("entry-non-canonical", 3, 38, "e000038"),
        ("entry-malformed", 3, 41, None),
        ("block-root", 3, None, None),
        ("block-root", 6, None, None),
        ("replay", 6, 73, "e000073"),
    ]


def test_the_audit_with_workers_of_chains_with_every_kind() -> None:
    """Coalition kinds go the reference path: the audit is made again without shards,
    with the same report."""
    for chain_blocks, key in _kind_chains():
        with parallel_early():
            alone = audit_chain(_LineStream(chain_blocks), key.public_key, workers=0)
            split_up = audit_chain(_LineStream(chain_blocks), key.public_key, parallel=workers())
        assert _comparable(split_up) == _comparable(alone)


def _kind_chains() -> list[tuple[list[tuple[str, str, list[bytes]]], SigningKey]]:
    out = []
    for chain in two_chains():
        key = SigningKey.generate()
        bodies = [canonical_json(entry) for entry in chain.entries]
        out.append((_blocks(key, bodies, 4, _seal_times(chain.entries), chain.program), key))
    return out


def test_a_worker_killed_mid_audit_is_an_error_naming_it_not_a_hang() -> None:
    key = SigningKey.generate()
    blocks = _chain(key, 10, 12)
    with ProcessWorkers(2) as killed:
        killed.scan([b"{}"], 1, "p", 0, "", 0).result()  # started
        os.kill(killed.pids[0], signal.SIGKILL)
        with parallel_early(), pytest.raises(WorkerDied, match="audit worker 0"):
            audit_chain(_LineStream(blocks), key.public_key, parallel=killed)


def test_an_entry_off_the_fast_path_after_the_split_brings_the_replay_back_in_one_pass() -> None:
    """An agreement recorded in the middle of a chain of member entries: the shards hand
    their states back and the replay goes on here, with no second pass, and the report
    is the one of the audit without workers; then the same with a fault after it."""
    key = SigningKey.generate()
    chain = build_chain([("purchase", n % 4, 0, 300, 5) for n in range(30)])
    middle = chain[20]
    record = operations.agreement_entry(
        EntryContext("p", "agreement-1", parse_time(str(middle["at"]))),
        {"agreement": AGREEMENT_DOC, "signatures": {}},
    )
    mixed = [*chain[:21], record, *chain[21:]]
    faulty = [*mixed, copy.deepcopy(chain[-1])]  # an entry repeated: a replay fault
    for entries in (mixed, faulty):
        bodies = [canonical_json(entry) for entry in entries]
        blocks = _blocks(key, bodies, 3, _seal_times(entries))
        with parallel_early():
            alone = audit_chain(_LineStream(blocks), key.public_key, workers=0)
            split_up = audit_chain(_LineStream(blocks), key.public_key, parallel=workers())
        assert _comparable(split_up) == _comparable(alone)
        assert "sharded_attempt" not in split_up.timings_ms
    assert alone.faults.items and alone.faults.items[0].kind == "replay"


def test_a_fault_a_shard_finds_reruns_the_audit_with_the_same_report() -> None:
    """Also the regression test of the replay that never moved to the shards: blocks of 3
    (the first ones scanned here, not by the workers) must not keep it here."""
    key = SigningKey.generate()
    chain = build_chain([("purchase", n % 4, 0, 300, 5) for n in range(30)])
    faulty = [*chain, copy.deepcopy(chain[-1])]  # the last earn again: its lot opened twice
    blocks = _blocks(key, [canonical_json(e) for e in faulty], 3, _seal_times(faulty))
    with parallel_early():
        alone = audit_chain(_LineStream(blocks), key.public_key, workers=0)
        split_up = audit_chain(_LineStream(blocks), key.public_key, parallel=workers())
    assert "sharded_attempt" in split_up.timings_ms  # declined in a shard: a second pass
    assert _comparable(split_up) == _comparable(alone)
    assert [f.kind for f in alone.faults.items] == ["replay"]
