"""Audit one program's whole chain from a source, block by block, in constant memory.

For every block: the header's form, program, Ed25519 signature (by the key in force,
``ledger.rotation``: the block's ``key-rotation`` entries apply from the next block),
height and hash link to the previous header, its entry range, the RFC 9162 §2.1.1 root
of the block's entries (recomputed from each entry's canonical RFC 8785 body; a stored
hash is only a hint used to name which entry changed), and the log root after the block
(an incremental compact range, RFC 9162 §2.1). Every entry's envelope and program are
checked and the entries are replayed (``coalition.points.replay.Replay``) into balances,
supply and per-kind totals.
Optionally a trusted header (what the auditor saw last time) must be in the chain, and
the source's RFC 9162 §2.1.4 consistency proof to the newest header must verify.

Speed: a source that streams (``BlockStream``, a bundle) is read front to back, others
page by page. Entries are hashed and checked in bulk (``entry_scan``: the exact checks run
only on an entry the conservative bulk test flags, so faults are named as before), in
worker processes once the chain is long, while this process checks headers, merges log
roots and replays (the workers ship common entries as ``replay_fast.prepare`` tuples; one
that does not fit the state is parsed again and replayed by the reference path). Given
``parallel`` workers, the replay itself moves to them, split by account
(``replay_shards``; see ``audit_chain``).
The garbage collector is paused meanwhile (the audit makes no cycles).

The audit keeps going after a fault where it can, so the report lists them all. A chain
is sound only if ``AuditReport.ok``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from coalition.errors import CoalitionError, VerificationError
from coalition.ledger.blocks import GENESIS_PREV, BlockHeader, SignedHeader
from coalition.ledger.canonical import JsonObject, JsonValue, parse_json
from coalition.ledger.keys import VerifyKey
from coalition.ledger.merkle import CompactRange, root
from coalition.ledger.proofs import verify_consistency_document
from coalition.ledger.rotation import KeySchedule, rotations_in
from coalition.points import kinds
from coalition.points.replay import Replay
from coalition.points.replay_fast import Prepared, apply_run, prepare
from coalition.verify.block_checks import (
    Fault,
    FaultList,
    Item,
    Position,
    check_gaps,
    check_header,
    check_roots,
    entry_id_of,
    exact_item,
    faults_json,
    render_faults,
    replay_fault,
)
from coalition.verify.entry_scan import BlockScan, scan_block, scan_lines
from coalition.verify.replay_shards import merge_states, merged, split_state
from coalition.verify.source import (
    BlockLines,
    BlockStream,
    ChainSource,
    RawEntry,
    RawHeader,
    signed_header,
)
from coalition.verify.workers import AuditWorkers, ScanJob

HEADER_PAGE = 1000
PARALLEL_AFTER = 50_000
"""Entries audited in this process before worker processes start (they cost ~0.1 s)."""
LOOKAHEAD = 6
"""Blocks read and handed to workers ahead of the one being checked."""
_REPLAY_ERRORS = (CoalitionError, KeyError, TypeError, ValueError)
"""What a hostile entry can make the replay raise; the audit reports, never crashes."""


@dataclass(slots=True)
class AuditReport:
    """What ``audit_chain`` found. Counts come from the replay of the entries audited."""

    program: str | None = None
    blocks: int = 0
    entries: int = 0
    last_height: int | None = None
    log_size: int = 0
    log_root: str | None = None
    log_verified_height: int | None = None
    """The last height whose log root was recomputed and matched (None: none)."""
    accounts: int = 0
    supply: int = 0
    points_by_kind: dict[str, int] = field(default_factory=dict)
    trusted_height: int | None = None
    consistency: str = "not offered by the source"
    faults: FaultList = field(default_factory=FaultList)
    timings_ms: dict[str, int] = field(default_factory=dict)
    last_header: SignedHeader | None = None
    """The newest header audited: pin it (``--trusted``) at the next audit."""
    key_schedule: KeySchedule | None = None
    """The program's keys as the audited chain rotated them (``ledger.rotation``): what
    evidence against the program and its checkpoints are checked with."""

    @property
    def ok(self) -> bool:
        return len(self.faults) == 0

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "type": "coalition/audit-report/v1",
            "ok": self.ok,
            "blocks": self.blocks,
            "entries": self.entries,
            "log_size": self.log_size,
            "accounts": self.accounts,
            "supply": self.supply,
            "points_by_kind": dict(sorted(self.points_by_kind.items())),
            "consistency": self.consistency,
            "fault_count": len(self.faults),
            "faults": faults_json(self.faults),
            "timings_ms": dict(self.timings_ms),
        }
        optional: dict[str, JsonValue] = {
            "program": self.program,
            "last_height": self.last_height,
            "log_root": self.log_root,
            "log_verified_height": self.log_verified_height,
            "trusted_height": self.trusted_height,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    def render(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.faults):,} faults)"
        heights = "" if self.last_height is None else f" (heights 0..{self.last_height})"
        h = self.log_verified_height
        verified = "no log root recomputed" if h is None else f"log roots through height {h}"
        lines = [
            f"Audit of program {self.program or '?'}: {verdict}",
            f"  blocks        {self.blocks:,}{heights}",
            f"  entries       {self.entries:,}",
            f"  log           size {self.log_size:,}, root {self.log_root or '-'}",
            f"  log verified  {verified}",
            f"  accounts      {self.accounts:,}",
            f"  supply        {self.supply:,} points outstanding",
            "  by kind       "
            + (", ".join(f"{k} {v:,}" for k, v in sorted(self.points_by_kind.items())) or "-"),
            f"  consistency   {self.consistency}",
        ]
        if self.trusted_height is not None:
            lines.append(f"  trusted       header at height {self.trusted_height} checked")
        t = self.timings_ms
        lines.append(
            f"  time          {t.get('total', 0) / 1000:.2f} s (source {t.get('source', 0)} ms, "
            f"verify {t.get('verify', 0)} ms, replay {t.get('replay', 0)} ms)"
        )
        if not self.ok:
            lines.append("Faults:")
            lines.extend(render_faults(self.faults))
        return "\n".join(lines)


def _object(raw: RawEntry) -> JsonObject:
    """The entry a worker shipped ``Prepared``: it passed ``entry_scan.fast_entry``, so
    ``parse_json`` gives the object the worker parsed."""
    return cast(JsonObject, parse_json(raw.body))


def _objects(
    raws: Sequence[RawEntry], bodies: list[JsonObject | Prepared | None]
) -> list[JsonObject | None]:
    return [
        _object(raw) if isinstance(body, tuple) else body
        for raw, body in zip(raws, bodies, strict=True)
    ]


def _stored(raws: Sequence[RawEntry]) -> list[bytes | None]:
    """The source's stored leaf hashes (None: it has none for the entry)."""
    if isinstance(raws, BlockLines):
        return [None] * len(raws)
    return [raw.stored_leaf_hash for raw in raws]


@dataclass(slots=True)
class _Fetched:
    """One block as read, before any check; a header that does not parse or entries that
    could not be read are kept to be reported in order."""

    raw: RawHeader
    signed: SignedHeader | None
    header_error: CoalitionError | None
    entries: Sequence[RawEntry]
    entries_error: CoalitionError | None
    program: str | None = None
    scan: Future[BlockScan] | ScanJob | None = None


class _Doubt(Exception):
    """The sharded replay cannot decide this chain: it is to be audited again with the
    replay in the auditing process."""


def _parse_header(raw: RawHeader) -> tuple[SignedHeader | None, CoalitionError | None]:
    try:
        return signed_header(raw), None
    except CoalitionError as exc:
        return None, exc


def _worker_count(workers: int | None) -> int:
    return max(0, os.cpu_count() or 1) if workers is None else max(0, workers)


def _pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for the bulk pass. A single-threaded auditor forks them (no
    re-import of the caller's main module, so a plain script works); one running threads
    (gRPC, a web server), which a fork would copy mid-flight, starts them from a clean
    forkserver instead (or spawn where there is none)."""
    methods = multiprocessing.get_all_start_methods()
    if threading.active_count() == 1 and "fork" in methods:
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in methods else "spawn"
    context = multiprocessing.get_context(method)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=gc.disable)


class _Auditor:
    def __init__(
        self,
        source: ChainSource,
        key: VerifyKey,
        program: str | None,
        trusted: SignedHeader | None,
        progress: Callable[[int], None] | None,
        workers: int,
        parallel: AuditWorkers | None = None,
        shard: bool = False,
    ) -> None:
        self.source = source
        self.schedule = KeySchedule(program or "", key)
        """The keys in force (``ledger.rotation``), from the first key on: each block's
        authentic rotations apply from the next block (its program is set at the first
        header when ``program`` is not given)."""
        self.trusted = trusted
        self.progress = progress
        self.workers = parallel.count if parallel is not None else workers
        self.pool: Executor | None = None
        self.parallel = parallel
        self.shard = shard
        self.started = False
        """Whether blocks go to the workers (after the first ``PARALLEL_AFTER`` entries)."""
        self.shards = 0
        """How many shards the workers' scans split blocks for (0: replay here)."""
        self.sharded = False
        """Whether the replay moved to the shards (then ``self.replay`` holds the state
        until then, and every later block MUST go to the shards)."""
        self.fast_only = True
        """Whether every entry replayed here so far took the fast path (so the state can
        move to the shards)."""
        self.unsharded = False
        """Whether the replay came back from the shards (it does not go there again)."""
        self.submitted = 0
        self.scan_program = program
        self.report = AuditReport(program=program)
        self.replay = Replay()
        self.replay_faults = 0
        self.log: CompactRange | None = CompactRange(stride=None)
        self.next_height = 0
        self.prev_hash: str | None = GENESIS_PREV
        self.prev_sig_bad = False
        """Whether the last header checked (the current one, once checked) is forged."""
        self.prev_time: datetime | None = None
        self.prev_log_size: int | None = 0
        self.hashes: dict[int, str] = {}
        self.last_good: tuple[int, str] | None = None
        self.clock = {"source": 0.0, "verify": 0.0, "replay": 0.0}

    def fault(
        self,
        kind: str,
        message: str,
        height: int | None = None,
        *,
        log_index: int | None = None,
        entry_id: str | None = None,
    ) -> None:
        self.report.faults.add(Fault(kind, message, height, log_index, entry_id))

    # --- iteration --------------------------------------------------------------------

    def _headers(self) -> Iterator[RawHeader]:
        start = 0
        while True:
            t = time.perf_counter()
            page = self.source.headers(start, HEADER_PAGE)
            self.clock["source"] += time.perf_counter() - t
            if not page:
                return
            yield from page
            start = page[-1].height + 1

    def _read(self) -> Iterator[_Fetched | str]:
        """Every block with its entries, in order; a read failure ends it as a message."""
        if isinstance(self.source, BlockStream):
            stream = self.source.blocks()
            while True:
                t = time.perf_counter()
                try:
                    block = next(stream, None)
                except CoalitionError as exc:
                    yield f"reading blocks failed: {exc}"
                    return
                finally:
                    self.clock["source"] += time.perf_counter() - t
                if block is None:
                    return
                yield _Fetched(block[0], *_parse_header(block[0]), block[1], None)
        try:
            for raw in self._headers():
                signed, error = _parse_header(raw)
                entries: list[RawEntry] = []
                failed = None
                if signed is not None:
                    h = signed.header
                    t = time.perf_counter()
                    try:
                        entries = self.source.block_entries(h.height, h.first_index, h.entry_count)
                    except CoalitionError as exc:
                        failed = exc
                    self.clock["source"] += time.perf_counter() - t
                yield _Fetched(raw, signed, error, entries, failed)
        except CoalitionError as exc:
            yield f"reading headers failed: {exc}"

    def _ahead(self) -> Iterator[_Fetched | str]:
        """``_read``, handing each block's entries to the workers ``LOOKAHEAD`` blocks
        before the block is checked."""
        pending: deque[_Fetched | str] = deque()
        for item in self._read():
            if isinstance(item, _Fetched):
                self._submit(item)
            pending.append(item)
            if len(pending) > LOOKAHEAD:
                yield pending.popleft()
        while pending:
            yield pending.popleft()

    def _submit(self, item: _Fetched) -> None:
        if item.signed is None:
            return
        if self.scan_program is None:
            self.scan_program = item.signed.header.program
        item.program = self.scan_program
        self.submitted += len(item.entries)
        if self.parallel is not None:
            self._submit_parallel(item, self.parallel)
            return
        if self.pool is None and self.workers and self.submitted > PARALLEL_AFTER:
            self.pool = _pool(self.workers)
        if self.pool is not None and item.entries:
            first = item.signed.header.first_index
            sealed = item.signed.header.sealed_at
            if isinstance(item.entries, BlockLines):  # one bytes object to ship, not a list
                data, count = item.entries.data, len(item.entries)
                item.scan = self.pool.submit(
                    scan_lines, data, count, item.program, first, sealed_at=sealed
                )
                return
            bodies = [raw.body for raw in item.entries]
            item.scan = self.pool.submit(
                scan_block, bodies, item.program, first, pack=True, sealed_at=sealed
            )

    def _submit_parallel(self, item: _Fetched, parallel: AuditWorkers) -> None:
        assert item.signed is not None and item.program is not None
        if not self.started and self.workers and self.submitted > PARALLEL_AFTER:
            self.started = True
            self.shards = self.workers if self.shard and self.fast_only else 0
        if not self.started or not item.entries:
            return
        h = item.signed.header
        entries = item.entries
        bodies = entries.data if isinstance(entries, BlockLines) else [e.body for e in entries]
        item.scan = parallel.scan(
            bodies, len(entries), item.program, h.first_index, h.sealed_at, self.shards
        )

    def run(self) -> AuditReport | None:
        """The report; None when the sharded replay met a doubt (``_Doubt``)."""
        began = time.perf_counter()
        if self.trusted is not None:
            self.report.trusted_height = self.trusted.header.height
        collecting = gc.isenabled()
        gc.disable()
        try:
            for item in self._ahead():
                if isinstance(item, str):
                    self.fault("source", item, self.next_height)
                else:
                    self._block(item)
            self._finish()
        except _Doubt:
            return None
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            if collecting:
                gc.enable()
        self.report.key_schedule = self.schedule
        self.report.timings_ms = {k: round(v * 1000) for k, v in self.clock.items()}
        self.report.timings_ms["total"] = round((time.perf_counter() - began) * 1000)
        return self.report

    # --- one block --------------------------------------------------------------------

    def _checked_header(self, got: _Fetched) -> SignedHeader | None:
        raw, signed = got.raw, got.signed
        if signed is None:
            self.fault("header-malformed", f"header does not parse: {got.header_error}", raw.height)
            return None
        if signed.header.height != raw.height:
            self.fault(
                "header-height",
                f"stored at height {raw.height} but says height {signed.header.height}",
                raw.height,
            )
        return signed

    def _block(self, got: _Fetched) -> None:
        raw = got.raw
        t = time.perf_counter()
        if raw.height > self.next_height:
            missing = f"{self.next_height}..{raw.height - 1}"
            self.fault("block-missing", f"no block at heights {missing}", self.next_height)
            self.next_height = raw.height
            self.prev_hash = None
            self.prev_log_size = None
            self.log = None
        signed = self._checked_header(got)
        if signed is None:
            self.next_height = raw.height + 1
            self.prev_hash = self.prev_log_size = self.log = None
            self.clock["verify"] += time.perf_counter() - t
            return
        h = signed.header
        if self.report.program is None:
            self.report.program = h.program
        program = self.report.program
        if not self.schedule.program:
            self.schedule.program = program
        raw_entries: Sequence[RawEntry] = got.entries
        if got.entries_error is not None:
            self.fault(
                "source", f"reading the block's entries failed: {got.entries_error}", h.height
            )
            raw_entries = []

        scan = self._scan(got, raw_entries, program)
        leaves, bodies, exact = self._entries(h, raw_entries, program, scan)
        gaps = self._gaps(h, raw_entries)
        self._header_checks(signed, program)
        stored = _stored(raw_entries)
        block_root = root(leaves) if exact else scan.root
        if block_root.hex() == h.block_root and (
            isinstance(raw_entries, BlockLines)  # no stored hashes
            or all(s is None or s == leaf for s, leaf in zip(stored, leaves, strict=True))
        ):
            authentic: list[bytes] | None = leaves
        else:
            items = [
                Item(self._index(h, raw_entries, n), entry_id_of(body), leaf, s, body)
                for n, (leaf, s, body) in enumerate(
                    zip(leaves, stored, _objects(raw_entries, bodies), strict=True)
                )
            ]
            authentic = self._roots(h, items, gaps)
        subtrees = scan.subtrees if authentic is leaves and not exact else None
        self._advance(signed, authentic, subtrees)
        if authentic is not None and not self.prev_sig_bad:
            self._rotations(h, raw_entries)
        self.clock["verify"] += time.perf_counter() - t

        t = time.perf_counter()
        if self.sharded and raw_entries and scan.shard_ops is None:
            self._unshard()  # an entry the shards cannot take: the replay comes back here
        if scan.shard_ops is not None and (self.sharded or self._may_shard()):
            self._replay_in_shards(scan.shard_ops)
        else:
            if scan.shard_ops is not None:  # split for shards no longer replaying
                bodies = list(map(_object, raw_entries))
            self._replay_here(h, raw_entries, bodies)
        self.clock["replay"] += time.perf_counter() - t
        self.report.blocks += 1
        self.report.entries += len(raw_entries)
        if self.progress is not None:
            self.progress(max(len(raw_entries), h.entry_count))

    def _rotations(self, h: BlockHeader, raws: Sequence[RawEntry]) -> None:
        """Put the block's key rotations in force (its entries are the ones its genuine
        header commits to); one that does not follow the key in force is a fault, and
        the headers its key signs then fail as signed by another key."""
        bodies = raws.bodies if isinstance(raws, BlockLines) else [raw.body for raw in raws]
        try:
            found = rotations_in(bodies, h.first_index)
        except CoalitionError as exc:
            self.fault("key-rotation", str(exc), h.height)
            return
        for index, rotation in found:
            try:
                self.schedule.apply(rotation, index)
            except CoalitionError as exc:
                self.fault("key-rotation", str(exc), h.height, log_index=index)

    def _may_shard(self) -> bool:
        """Whether the replay may move to the shards now: it never came back from them,
        and every entry so far took the fast path. Else scans stop splitting blocks."""
        if self.unsharded or not self.fast_only:
            self.shards = 0
            return False
        return True

    def _replay_in_shards(self, ops: list[bytes]) -> None:
        """Hand the block's ops to the shards (the state first, at the first such block);
        a shard's decline is a doubt."""
        parallel = self.parallel
        assert parallel is not None
        if parallel.declined:
            raise _Doubt
        if not self.sharded:
            parallel.load(split_state(self.replay, parallel.count))
            self.sharded = True
        parallel.replay(ops)

    def _unshard(self) -> None:
        """Take the shards' states back into ``self.replay`` (all of it so far: no shard
        declined, so together they are the sequential state after the last block) and
        replay here from now on; a shard that declined is a doubt."""
        assert self.parallel is not None
        states = self.parallel.states()
        if states is None:
            raise _Doubt
        merge_states(self.replay, states)
        self.sharded = False
        self.unsharded = True
        self.shards = 0

    def _replay_here(
        self,
        h: BlockHeader,
        raw_entries: Sequence[RawEntry],
        bodies: list[JsonObject | Prepared | None],
    ) -> None:
        replay, apply = self.replay, self.replay.apply
        if any(type(body) is dict for body in bodies):  # scanned here: reduce as a worker does
            bodies = [prepare(b) or b if type(b) is dict else b for b in bodies]
        n, count = 0, len(bodies)
        while (n := apply_run(replay, bodies, n)) < count:
            self.fast_only = False
            body = bodies[n]  # not a tuple the state took: the reference path decides
            if body is not None:
                if isinstance(body, tuple):
                    body = _object(raw_entries[n])
                try:
                    apply(body)
                except _REPLAY_ERRORS as exc:
                    self._replay_fault(exc, body, self._index(h, raw_entries, n), h.height)
            n += 1

    def _scan(self, got: _Fetched, raws: Sequence[RawEntry], program: str) -> BlockScan:
        """The bulk pass over the block's entries: the workers' result, else done here."""
        if got.scan is not None and got.program == program and raws is got.entries:
            return got.scan.result()
        first = got.signed.header.first_index if got.signed is not None else -1
        sealed = got.signed.header.sealed_at if got.signed is not None else ""
        bodies = raws.bodies if isinstance(raws, BlockLines) else [raw.body for raw in raws]
        return scan_block(bodies, program, first, sealed_at=sealed)

    @staticmethod
    def _index(h: BlockHeader, raws: Sequence[RawEntry], n: int) -> int | None:
        index = raws[n].log_index
        if index is None and len(raws) == h.entry_count:
            index = h.first_index + n
        return index

    def _entries(
        self, h: BlockHeader, raws: Sequence[RawEntry], program: str, scan: BlockScan
    ) -> tuple[list[bytes], list[JsonObject | Prepared | None], bool]:
        """Leaf hashes and parsed (or prepared) entries (None: not to be replayed), and
        whether an exact check changed a leaf (then the bulk root and subtrees are void).
        Entries the bulk pass flagged get the exact checks, which name their faults."""
        leaves, bodies = scan.leaves, scan.parsed()
        exact = False
        for n in scan.flagged:
            item = self._exact_item(h, raws[n], self._index(h, raws, n), program)
            if item.leaf != leaves[n]:
                leaves[n] = item.leaf
                exact = True
            bodies[n] = item.body
        return leaves, bodies, exact

    def _exact_item(self, h: BlockHeader, raw: RawEntry, index: int | None, program: str) -> Item:
        return exact_item(self.fault, h, raw, index, program)

    def _gaps(self, h: BlockHeader, raws: Sequence[RawEntry]) -> bool:
        return check_gaps(self.fault, h, raws)

    def _header_checks(self, signed: SignedHeader, program: str) -> None:
        at = Position(
            self.next_height, self.prev_hash, self.prev_log_size, self.prev_time, self.prev_sig_bad
        )
        key = self.schedule.key_for(signed.header)
        after_rotation = key != self.schedule.first
        check_header(self.fault, signed, key, program, at, after_rotation=after_rotation)
        self.prev_time, self.prev_sig_bad = at.prev_time, at.prev_forged

    def _roots(self, h: BlockHeader, items: list[Item], gaps: bool) -> list[bytes] | None:
        return check_roots(self.fault, h, items, gaps, self.prev_sig_bad)

    def _advance(
        self,
        signed: SignedHeader,
        authentic: list[bytes] | None,
        subtrees: list[tuple[int, bytes]] | None = None,
    ) -> None:
        """Move past the block; ``subtrees`` (the compact range of ``authentic`` at
        ``first_index``) spare hashing the leaves again when the log is there."""
        h = signed.header
        if self.log is not None and authentic is not None:
            if subtrees is not None and self.log.size == h.first_index:
                self.log.extend_subtrees(subtrees)
            else:
                self.log.extend(authentic)
            if self.log.root().hex() == h.log_root and self.log.size == h.log_size:
                self.report.log_verified_height = h.height
            elif not self.prev_sig_bad:  # a forged header is already reported as such
                self.fault("log-root", "log_root is not the root of the log so far", h.height)
        elif self.log is not None:
            self.log = None  # leaves unknown from here: later log roots cannot be recomputed
        self.next_height = h.height + 1
        self.prev_hash = h.hash()
        self.prev_log_size = h.log_size
        self.report.last_height = h.height
        self.report.last_header = signed
        self.report.log_size = h.log_size
        self.report.log_root = h.log_root
        if not self.prev_sig_bad:
            self.last_good = (h.height, self.prev_hash)
            if h.height == 0:
                self.hashes[0] = self.prev_hash
        trusted = self.trusted
        if trusted is not None and h.height == trusted.header.height:
            self.hashes[h.height] = self.prev_hash
            try:
                trusted.verify(self.schedule.key_for(trusted.header))
            except CoalitionError as exc:
                self.fault(
                    "trusted-header",
                    f"the trusted header is not signed by the key in force: {exc}",
                    h.height,
                )
            if h != trusted.header:
                self.fault(
                    "trusted-mismatch",
                    "the chain's header differs from the trusted one: history was rewritten",
                    h.height,
                )

    def _replay_fault(
        self, exc: Exception, body: JsonObject, log_index: int | None, height: int
    ) -> None:
        self.replay_faults += 1
        replay_fault(self.fault, exc, body, log_index, height)

    # --- after the last block ---------------------------------------------------------

    def _finish(self) -> None:
        r = self.report
        if self.sharded:
            assert self.parallel is not None
            t = time.perf_counter()
            summaries = self.parallel.finish()
            self.clock["replay"] += time.perf_counter() - t
            if summaries is None:
                raise _Doubt
            total = merged(self.replay, summaries)
            r.accounts, r.supply, r.points_by_kind = (
                total.accounts,
                total.supply,
                total.points_by_kind,
            )
        else:
            r.accounts = len(self.replay.accounts)
            r.supply = self.replay.supply()
            r.points_by_kind = dict(self.replay.points_by_kind)
        if self.trusted is not None and self.trusted.header.height not in self.hashes:
            self.fault(
                "trusted-missing",
                "the chain ends before the trusted header: history was truncated",
                self.trusted.header.height,
            )
        if self.replay_faults == 0:
            expected = kinds.supply_change(r.points_by_kind)
            if expected != r.supply:
                self.fault("supply", f"members hold {r.supply} points, the entries say {expected}")
        if self.last_good is not None:
            self._consistency(*self.last_good)

    def _consistency(self, last: int, last_hash: str) -> None:
        """The source's proof from header 0 (or the trusted one) to the newest header
        that carries a good signature."""
        first = 0 if self.trusted is None else self.trusted.header.height
        if first not in self.hashes or first > last:
            return
        t = time.perf_counter()
        try:
            doc = self.source.consistency_proof(first, last)
            if doc is None:
                return
            verify_consistency_document(doc, self.schedule)
            if BlockHeader.from_json(doc["first"]).hash() != self.hashes[first]:
                raise VerificationError("the proof's first header is not the audited one")
            if BlockHeader.from_json(doc["second"]).hash() != last_hash:
                raise VerificationError("the proof's second header is not the audited one")
            self.report.consistency = f"proof from height {first} to {last} verified"
        except CoalitionError as exc:
            self.report.consistency = f"proof from height {first} to {last} FAILED"
            self.fault("consistency", f"consistency proof {first} -> {last}: {exc}", last)
        finally:
            self.clock["source"] += time.perf_counter() - t


def audit_chain(
    source: ChainSource,
    key: VerifyKey,
    *,
    program: str | None = None,
    trusted: SignedHeader | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    parallel: AuditWorkers | None = None,
) -> AuditReport:
    """Audit the whole chain ``source`` holds against the program's public ``key``, its
    first key (the manifest's): each header is checked with the key in force for it,
    following the chain's ``key-rotation`` entries (``ledger.rotation``); the report's
    ``key_schedule`` is the result.

    ``program`` pins the program id (default: the one the first header names, which the
    key signs). ``trusted`` is a header seen before: the chain MUST contain it unchanged,
    and the consistency proof starts there. ``progress`` is called with the number of
    entries of each block as it is audited. ``workers`` is how many processes hash and
    check entries once the chain is long (default: one per CPU; 0: none).

    ``parallel`` (instead of ``workers``): worker processes the caller owns
    (``coalition.audit.workers``) that also replay the chain split by account
    (``replay_shards``). The report MUST be the one the audit without them gives: a
    block the shards cannot take (an entry off the fast path) brings the replay back
    here, with the shards' states merged; a shard declining an entry (a fault, a case
    left to the reference path) has the chain audited again with the replay here, so
    such a chain costs up to two passes (``timings_ms`` then says ``sharded_attempt``).
    """
    count = _worker_count(workers)
    if parallel is None:
        report = _Auditor(source, key, program, trusted, progress, count).run()
        assert report is not None  # no shards, no doubt
        return report
    began = time.perf_counter()
    attempt = _Auditor(source, key, program, trusted, progress, count, parallel, shard=True)
    try:
        report = attempt.run()
        if report is not None:
            return report
        parallel.reset()
        resumed = None if progress is None else _Resumed(progress, attempt.report.entries)
        report = _Auditor(source, key, program, trusted, resumed, count, parallel).run()
    except Exception:
        parallel.reset()  # work handed out and not read: the workers are ready again
        raise
    assert report is not None
    report.timings_ms["sharded_attempt"] = (
        round((time.perf_counter() - began) * 1000) - (report.timings_ms["total"])
    )
    return report


class _Resumed:
    """A progress callback told again about a chain's first ``already`` entries: says
    nothing until past them."""

    def __init__(self, progress: Callable[[int], None], already: int) -> None:
        self.progress = progress
        self.left = already

    def __call__(self, n: int) -> None:
        skip = min(n, self.left)
        self.left -= skip
        if n > skip:
            self.progress(n - skip)
