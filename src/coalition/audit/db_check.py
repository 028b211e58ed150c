"""``coalition check``: a node's database MUST equal the replay of its own entries, and
its stored ledger MUST verify with its key.

Replays every entry the node stored (sealed or not, in log order) with the same
``Replay`` an auditor uses, then compares the result with the ``accounts`` and ``lots``
tables field by field, and the explorer's running flow totals with the fold of the flow
entries, and lists each difference. Given the program's public key, it also walks every
stored block with the checks the node runs at start and in its scrub
(``node.integrity.check_all``): headers, entries and the stored tree nodes. Those faults
are the audit's own (``verify.block_checks``, the same kinds and words), plus the tree
nodes an auditor never reads; ``coalition check --audit`` runs the audit too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from coalition.audit.sources import existing_database
from coalition.errors import CoalitionError, InvalidArgument
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.ledger.keys import VerifyKey
from coalition.node.integrity import check_all, stored_program
from coalition.points.replay import Replay
from coalition.points.state import Lot
from coalition.store import flows as flows_store
from coalition.store import ledger as ledger_store
from coalition.store import members as members_store
from coalition.verify.block_checks import (
    Fault,
    FaultList,
    FaultSink,
    faults_json,
    render_faults,
    replay_fault,
)

CHUNK = 5000
_LOT_FIELDS = ("account", "amount", "remaining", "qualifying", "ref", "reversed")
_LOT_TIMES = ("earned_at", "available_at", "expires_at")


@dataclass(slots=True)
class CheckReport:
    """Differences between the database's state and the replay of its entries. A lot's
    difference carries the lot id as ``entry_id`` (lots are named after the entry that
    opened them)."""

    entries: int = 0
    accounts: int = 0
    lots: int = 0
    supply: int = 0
    differences: FaultList = field(default_factory=FaultList)
    ledger_checked: bool = False
    """Whether the stored ledger was walked (it needs the program's public key)."""
    blocks: int = 0
    ledger_faults: FaultList = field(default_factory=FaultList)
    """What the walk of the stored blocks found (the audit's kinds, and ``tree-node``)."""
    elapsed_ms: int = 0

    @property
    def ok(self) -> bool:
        return len(self.differences) == 0 and len(self.ledger_faults) == 0

    def to_json(self) -> JsonObject:
        return {
            "type": "coalition/check-report/v1",
            "ok": self.ok,
            "entries": self.entries,
            "accounts": self.accounts,
            "lots": self.lots,
            "supply": self.supply,
            "difference_count": len(self.differences),
            "differences": faults_json(self.differences),
            "ledger_checked": self.ledger_checked,
            "blocks": self.blocks,
            "ledger_fault_count": len(self.ledger_faults),
            "ledger_faults": faults_json(self.ledger_faults),
            "elapsed_ms": self.elapsed_ms,
        }

    def render(self) -> str:
        found = len(self.differences) + len(self.ledger_faults)
        verdict = "OK" if self.ok else f"FAILED ({found:,} differences and faults)"
        if not self.ledger_checked:
            ledger = "not verified (no public key: pass --public-key)"
        elif self.ledger_faults:
            ledger = f"{self.blocks:,} blocks, FAILED ({len(self.ledger_faults):,} faults)"
        else:
            ledger = f"{self.blocks:,} blocks verified (headers, entries, tree nodes)"
        lines = [
            f"Database check (state == replay of the node's own entries): {verdict}",
            f"  ledger        {ledger}",
            f"  entries       {self.entries:,} replayed",
            f"  accounts      {self.accounts:,}",
            f"  lots          {self.lots:,}",
            f"  supply        {self.supply:,} points outstanding",
            f"  time          {self.elapsed_ms / 1000:.2f} s",
        ]
        if self.ledger_faults:
            lines.append("Ledger faults:")
            lines.extend(render_faults(self.ledger_faults))
        if self.differences:
            lines.append("Differences:")
            lines.extend(render_faults(self.differences))
        return "\n".join(lines)


def _replay(
    conn: Connection, report: CheckReport, progress: Callable[[int], None] | None
) -> Replay:
    replay = Replay()
    end = ledger_store.next_log_index(conn)
    for start in range(0, end, CHUNK):
        rows = ledger_store.entry_bodies(conn, start, min(start + CHUNK, end))
        expected = start
        for index, text, _ in rows:
            for gap in range(expected, index):
                report.differences.add(
                    Fault("entry-missing", f"no entry row at log index {gap}", log_index=gap)
                )
            expected = index + 1
            body = None
            try:
                parsed = parse_json(text)
                if not isinstance(parsed, dict):
                    raise InvalidArgument("an entry must be a JSON object")
                body = parsed
                replay.apply(body)
            except (CoalitionError, KeyError, TypeError, ValueError) as exc:
                replay_fault(_sink(report.differences), exc, body or {}, index, None)
        for gap in range(expected, min(start + CHUNK, end)):
            report.differences.add(
                Fault("entry-missing", f"no entry row at log index {gap}", log_index=gap)
            )
        report.entries += len(rows)
        if progress is not None:
            progress(len(rows))
    return replay


def _sink(faults: FaultList) -> FaultSink:
    def add(
        kind: str,
        message: str,
        height: int | None = None,
        *,
        log_index: int | None = None,
        entry_id: str | None = None,
    ) -> None:
        faults.add(Fault(kind, message, height, log_index, entry_id))

    return add


def _named_once(report: CheckReport) -> None:
    """Drop the replay's gap faults the ledger walk named already (with their block)."""
    named = {f.log_index for f in report.ledger_faults.items if f.kind == "entry-missing"}
    if not named:
        return
    kept = [
        f
        for f in report.differences.items
        if not (f.kind == "entry-missing" and f.log_index in named)
    ]
    report.differences.items = kept


def _compare_lot(stored: Lot, replayed: Lot, report: CheckReport) -> None:
    for name in (*_LOT_FIELDS, *_LOT_TIMES):
        have, want = getattr(stored, name), getattr(replayed, name)
        if have != want:
            report.differences.add(
                Fault(
                    "lot",
                    f"lot {stored.id}: {name} is {have} in the database, {want} in the replay",
                    entry_id=stored.id,
                )
            )


def _compare_flows(conn: Connection, report: CheckReport) -> None:
    """The explorer's running flow totals (``store.flows``) against the fold of the
    chain's flow entries."""
    stored = flows_store.stored_totals(conn)
    folded = flows_store.fold(flows_store.flow_entry_bodies(conn))
    for key in sorted(stored.keys() | folded.keys()):
        have, want = stored.get(key), folded.get(key)
        if have != want:
            level, bucket, kind, source, target, currency = key
            report.differences.add(
                Fault(
                    "flow-total",
                    f"flow {kind} {source}->{target} {currency} in the {level} s bucket at "
                    f"{bucket}: {have} in the database, {want} from the entries "
                    "(count, points out, points in, value, refunded)",
                )
            )


def check_database(
    url: str,
    *,
    key: VerifyKey | None = None,
    program: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Replay the node's entries and compare with its ``accounts`` and ``lots`` tables;
    with ``key`` (the program's public key) also walk the stored ledger (``program``
    pins the program id, default: the one the first header names).

    ``progress`` is called with the number of entries of each chunk replayed (and of each
    block walked). Read-only.
    """
    began = time.perf_counter()
    report = CheckReport()
    engine = existing_database(url)
    try:
        if key is not None:
            named = program or stored_program(engine.connect)
            if named is not None:
                walk = check_all(engine.connect, key, named, progress)
                report.ledger_faults, report.blocks = walk.faults, walk.blocks
            report.ledger_checked = True
        with engine.connect() as conn:
            replay = _replay(conn, report, progress)
            stored_accounts = set(members_store.all_accounts(conn))
            stored_lots = {lot.id: lot for lot in members_store.all_lots(conn)}
            _compare_flows(conn, report)
    finally:
        engine.dispose()
    replayed_lots = {
        lot.id: lot for account in replay.accounts.values() for lot in account.lots.values()
    }
    for account in sorted(stored_accounts - replay.accounts.keys()):
        report.differences.add(
            Fault("account", f"account {account} is in the database but never enrolled")
        )
    for account in sorted(replay.accounts.keys() - stored_accounts):
        report.differences.add(
            Fault("account", f"account {account} is enrolled on the ledger but not in the table")
        )
    for lot_id in sorted(stored_lots.keys() - replayed_lots.keys()):
        report.differences.add(
            Fault("lot", f"lot {lot_id} is in the database but no entry opened it", entry_id=lot_id)
        )
    for lot_id in sorted(replayed_lots.keys() - stored_lots.keys()):
        report.differences.add(
            Fault("lot", f"lot {lot_id} was opened on the ledger but is missing", entry_id=lot_id)
        )
    for lot_id in sorted(stored_lots.keys() & replayed_lots.keys()):
        _compare_lot(stored_lots[lot_id], replayed_lots[lot_id], report)
    _named_once(report)
    report.accounts = len(stored_accounts)
    report.lots = len(stored_lots)
    report.supply = sum(lot.remaining for lot in stored_lots.values())
    report.elapsed_ms = round((time.perf_counter() - began) * 1000)
    return report
