"""The node's checks of its own ledger: before it serves, in the background, per answer.

A database the node can open may still hold rows changed behind its back (an entry's
body, a stored tree node, a header's signature): SQLite and PostgreSQL read them fine,
so only the node's own verification can notice. Three lines of defence, each with the
one set of block checks (``verify.stored_chain`` on ``verify.block_checks``):

- **At start** (``check_newest``, called by the composition root before the service is
  built, so nothing is sealed on a damaged frontier): the newest
  ``verify_at_start_blocks`` blocks, their headers, entries and tree nodes, and the
  stored frontier before them against the log root the previous header signs. Damage
  MUST stop the start (``LedgerDamaged`` naming every fault, no traceback).
- **The scrub** (``Scrub``): a background walk of the whole log from height 0 at a
  bounded rate (entries per second), repeated after a pause; what it finds is logged,
  counted and kept in ``IntegrityState``, which ``/healthz`` shows and which refuses the
  damaged blocks' proofs from then on.
- **Per answer** (``node.ledger_service``): every proof and header is verified before it
  is returned, against the node's own key, with the verifier an auditor runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from coalition.errors import CoalitionError, LedgerDamaged
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.keys import VerifyKey
from coalition.ledger.merkle import NodeCoord
from coalition.ledger.rotation import HeaderKeys
from coalition.node.ledger_keys import stored_schedule
from coalition.store import ledger as ledger_store
from coalition.store.ledger import TREE_STRIDE
from coalition.verify.block_checks import Fault, FaultList
from coalition.verify.source import RawEntry, RawHeader, signed_header
from coalition.verify.stored_chain import (
    DamagedBlock,
    StoredBlock,
    StoredChainCheck,
    completed_coords,
    frontier_coords,
)

log = logging.getLogger("coalition.integrity")

Reads = Callable[[], AbstractContextManager[Connection]]
"""A read session on the node's database (``Sequencer.read``, or ``engine.connect``)."""

FAULTS_SHOWN = 10
"""Most faults a refusal to start lists (``coalition check`` lists them all)."""
FAULTS_KEPT = 100
"""Most faults ``IntegrityState`` keeps to show (the rest are counted)."""


def read_block(conn: Connection, row: tuple[int, str, str]) -> StoredBlock:
    """A stored block's header row, entry rows and the tree nodes it completed, read
    from the database itself (never from a cache)."""
    raw = RawHeader(*row)
    try:
        h = signed_header(raw).header
    except CoalitionError:
        return StoredBlock(raw, [], {})  # the walk reports the header; nothing to read
    first, count = h.first_index, h.entry_count
    entries = [
        RawEntry(index, body.encode(), leaf)
        for index, body, leaf in ledger_store.entry_bodies(conn, first, first + count)
    ]
    nodes = ledger_store.read_nodes(conn, completed_coords(first, count, TREE_STRIDE))
    return StoredBlock(raw, entries, nodes)


def _previous(conn: Connection, height: int) -> tuple[RawHeader | None, dict[NodeCoord, bytes]]:
    """The header row below ``height`` and the stored frontier at its log size."""
    if height == 0:
        return None, {}
    rows = ledger_store.block_rows(conn, height - 1, 1)
    if not rows:
        return None, {}
    prev = RawHeader(*rows[0])
    try:
        size = signed_header(prev).header.log_size
    except CoalitionError:
        return prev, {}
    return prev, ledger_store.read_nodes(conn, frontier_coords(size, TREE_STRIDE))


def key_schedule(reads: Reads, key: VerifyKey, program: str) -> HeaderKeys:
    """The keys the stored headers must be signed with: ``key`` (the first) and the stored
    rotations (``node.ledger_keys``); a stored rotation that does not verify leaves
    ``key`` alone, so the headers after it are reported as signed by another key."""
    try:
        with reads() as conn:
            return stored_schedule(conn, program, key)
    except CoalitionError as exc:
        log.error("the stored key rotations do not verify: %s", exc)
        return key


def check_newest(reads: Reads, key: VerifyKey, program: str, blocks: int) -> StoredChainCheck:
    """Check the newest ``blocks`` stored blocks (0: none) in one read session; the walk
    holds what was found."""
    walk = StoredChainCheck(
        key_schedule(reads, key, program), program, TREE_STRIDE, FaultList(limit=FAULTS_KEPT)
    )
    with reads() as conn:
        last = ledger_store.last_height(conn)
        if last is None or blocks <= 0:
            return walk
        start = max(0, last - blocks + 1)
        walk.start_after(*_previous(conn, start))
        for row in ledger_store.block_rows(conn, start, blocks):
            walk.check(read_block(conn, row))
    return walk


def refuse_start(walk: StoredChainCheck, program: str) -> None:
    """LedgerDamaged naming what the start check found (nothing when it found nothing)."""
    found = len(walk.faults)
    if found == 0:
        return
    shown = "\n".join(f"  {fault}" for fault in walk.faults.items[:FAULTS_SHOWN])
    more = f"\n  ... and {found - FAULTS_SHOWN} more" if found > FAULTS_SHOWN else ""
    raise LedgerDamaged(
        f"{program}'s stored ledger fails its own verification, so the node does not start "
        f"({found} fault{'s' if found != 1 else ''} in the newest {walk.blocks} blocks):\n"
        f"{shown}{more}\n"
        "The rows named were changed outside the node. Restore the database from a backup "
        "(or rebuild it from a partner's replica); 'coalition check --config NODE.toml "
        "--audit' lists every fault in the whole log."
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class ScrubProgress:
    """Where the scrub stands (shown by ``/healthz``)."""

    passes_completed: int = 0
    height: int | None = None
    """The last height the running pass checked (None: no block yet)."""
    blocks_checked: int = 0
    entries_checked: int = 0
    """In the running pass."""
    last_pass_completed_at: str | None = None


class IntegrityState:
    """What this process knows about its ledger's integrity: the start check, the scrub's
    progress, the faults found and the blocks they are in, and counters. Thread-safe;
    one per node process (``NodeService.integrity``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults = FaultList(limit=FAULTS_KEPT)
        self._seen: set[Fault] = set()
        self._damaged: dict[int, DamagedBlock] = {}
        self.start_check: JsonObject = {"status": "not run"}
        self.scrub = ScrubProgress()
        self.scrub_enabled = False
        self.faults_found_total = 0
        self.answers_refused_total = 0
        """Proofs, headers and blocks not served: damaged, or failing the self-check."""

    def started(self, walk: StoredChainCheck, elapsed_s: float) -> None:
        self.start_check = {
            "status": "ok" if len(walk.faults) == 0 else "damaged",
            "blocks": walk.blocks,
            "entries": walk.entries,
            "elapsed_ms": round(elapsed_s * 1000),
        }
        self.found(walk.faults.items, walk.damaged)

    def found(self, faults: list[Fault], damaged: list[DamagedBlock]) -> list[Fault]:
        """Record faults and the blocks they are in; the faults not known before."""
        with self._lock:
            fresh = [fault for fault in faults if fault not in self._seen]
            for fault in fresh:
                self._seen.add(fault)
                self._faults.add(fault)
            self.faults_found_total += len(fresh)
            for block in damaged:
                self._damaged[block.height] = block
        return fresh

    @property
    def damaged(self) -> bool:
        with self._lock:
            return bool(self._damaged)

    def refuse_damaged(self, *, height: int | None = None, log_index: int | None = None) -> None:
        """LedgerDamaged when ``height`` is a damaged block or ``log_index`` in one."""
        with self._lock:
            hit = self._damaged.get(height) if height is not None else None
            if hit is None and log_index is not None:
                hit = next(
                    (
                        b
                        for b in self._damaged.values()
                        if b.first_index <= log_index < b.first_index + b.entry_count
                    ),
                    None,
                )
            if hit is None:
                return
            self.answers_refused_total += 1
        raise LedgerDamaged(
            f"block {hit.height} of this node's ledger is damaged (the integrity scrub found "
            "its stored rows changed): its proofs are not served; see /healthz"
        )

    def self_check_failed(self, what: str, exc: CoalitionError) -> LedgerDamaged:
        """Count and log an answer that failed its own verification; the error to raise."""
        with self._lock:
            self.answers_refused_total += 1
        log.error("not serving %s: it fails this node's own verification: %s", what, exc)
        return LedgerDamaged(
            f"{what} fails this node's own verification ({exc}): the stored ledger is "
            "damaged, so it is not served"
        )

    def to_json(self) -> JsonObject:
        with self._lock:
            scrub: JsonObject = {
                "enabled": self.scrub_enabled,
                "passes_completed": self.scrub.passes_completed,
                "height": self.scrub.height,
                "blocks_checked": self.scrub.blocks_checked,
                "entries_checked": self.scrub.entries_checked,
                "last_pass_completed_at": self.scrub.last_pass_completed_at,
            }
            faults: list[JsonValue] = [fault.to_json() for fault in self._faults.items]
            return {
                "status": "damaged" if self._damaged else "ok",
                "start_check": dict(self.start_check),
                "scrub": scrub,
                "damaged_heights": list(sorted(self._damaged)),
                "faults": faults,
                "faults_found_total": self.faults_found_total,
                "answers_refused_total": self.answers_refused_total,
            }


def stored_blocks(reads: Reads, stop: threading.Event | None = None) -> Iterator[StoredBlock]:
    """Every stored block from height 0 in height order, each read in its own short read
    session (a long walk holds no snapshot and never blocks the writer); ends early when
    ``stop`` is set."""
    height = 0
    while stop is None or not stop.is_set():
        with reads() as conn:
            rows = ledger_store.block_rows(conn, height, 1)
            if not rows:
                return
            block = read_block(conn, rows[0])
        yield block
        height = rows[0][0] + 1


def stored_program(reads: Reads) -> str | None:
    """The program the first stored header names (None: no block, or it does not parse)."""
    with reads() as conn:
        rows = ledger_store.block_rows(conn, 0, 1)
    if not rows:
        return None
    try:
        return signed_header(RawHeader(*rows[0])).header.program
    except CoalitionError:
        return None


def check_all(
    reads: Reads, key: VerifyKey, program: str, progress: Callable[[int], None] | None = None
) -> StoredChainCheck:
    """Check every stored block from height 0 (``coalition check``); ``progress`` gets
    each block's entry count."""
    walk = StoredChainCheck(key_schedule(reads, key, program), program, TREE_STRIDE, FaultList())
    for block in stored_blocks(reads):
        walk.check(block)
        if progress is not None:
            progress(len(block.entries))
    return walk


class Scrub:
    """The background walk of the whole log, block by block from height 0, at most
    ``entries_per_second`` entries a second (each block read in its own short read
    session), then again after ``pause_s``. What it finds goes to ``state`` and the log.
    ``start()`` / ``stop()``; ``run_pass()`` is one pass, for tests and tools."""

    def __init__(
        self,
        reads: Reads,
        key: VerifyKey,
        program: str,
        state: IntegrityState,
        *,
        entries_per_second: float,
        pause_s: float,
    ) -> None:
        self._reads = reads
        self._key = key
        self._program = program
        self._state = state
        self._rate = entries_per_second
        self._pause_s = pause_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._state.scrub_enabled = True
        self._thread = threading.Thread(target=self._run, name="integrity-scrub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception:
                log.exception("the integrity scrub failed; again in %.0f s", self._pause_s)
            if self._stop.wait(self._pause_s):
                return

    def run_pass(self) -> StoredChainCheck:
        """One walk of the log as stored now; faults found are recorded and logged."""
        keys = key_schedule(self._reads, self._key, self._program)
        walk = StoredChainCheck(keys, self._program, TREE_STRIDE, FaultList(limit=FAULTS_KEPT))
        progress = self._state.scrub
        progress.height, progress.blocks_checked, progress.entries_checked = None, 0, 0
        began = time.monotonic()
        for block in stored_blocks(self._reads, self._stop):
            known = len(walk.faults.items)
            walk.check(block)
            for fault in self._state.found(walk.faults.items[known:], walk.damaged[-1:]):
                log.error("integrity scrub: %s: its proofs are no longer served", fault)
            progress.height = block.header.height
            progress.blocks_checked = walk.blocks
            progress.entries_checked = walk.entries
            if self._rate > 0 and block.entries:
                due = began + walk.entries / self._rate
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return walk
        if self._stop.is_set():
            return walk  # stopped mid-pass: not a completed pass
        progress.passes_completed += 1
        progress.last_pass_completed_at = _now()
        log.info(
            "integrity scrub pass %d: %d blocks, %d entries checked in %.1f s, %d faults",
            progress.passes_completed,
            walk.blocks,
            walk.entries,
            time.monotonic() - began,
            len(walk.faults),
        )
        return walk
