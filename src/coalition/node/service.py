"""The node's application service: the one object every transport calls.

Writes are serialized by one writer lock (the node is the single sequencer of its log),
so log indexes are dense and each entry, the state it changes and its idempotency record
commit in one transaction before the call returns: an acknowledged entry is durable.
The sealer then cuts committed entries into signed blocks in the background.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Engine

from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
)
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.entries import format_time
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.ledger.merkle import (
    NodeCoord,
    consistency_coords,
    consistency_from_nodes,
    expand_nodes,
    inclusion_coords,
    inclusion_from_nodes,
    leaf_hash,
    stored_coords,
)
from coalition.ledger.proofs import consistency_document, inclusion_document
from coalition.node.config import SealerConfig
from coalition.node.sealer import Sealer
from coalition.node.views import (
    BalanceView,
    BulkResult,
    EntryView,
    ExpiryResult,
    LotView,
    PurchaseRow,
    RowError,
    WriteResult,
)
from coalition.points import operations
from coalition.points.accounts import account_id, validate_member_id, validate_reference
from coalition.points.operations import EntryContext
from coalition.points.rules import ProgramRules
from coalition.points.state import Account, Lot, apply_entry, lot_ref
from coalition.store import repository
from coalition.store.repository import TREE_STRIDE, signed_header_from_row

_ENTRY_ID = re.compile(r"[0-9a-f]{32}")
Decision = tuple[JsonObject, list[Account], set[str]]


def new_entry_ids(count: int) -> list[str]:
    """Fresh entry ids: 12 hex digits of Unix milliseconds then 20 random ones. Unique, and
    roughly time-ordered, so index inserts append instead of landing on random pages."""
    prefix = f"{time.time_ns() // 1_000_000:012x}"
    noise = os.urandom(10 * count).hex()
    return [prefix + noise[20 * n : 20 * n + 20] for n in range(count)]


def _check_entry_id(entry_id: str) -> None:
    if not isinstance(entry_id, str) or not _ENTRY_ID.fullmatch(entry_id):
        raise InvalidArgument(f"malformed entry id {entry_id!r}: expected 32 hex digits")


_encode_request = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _request_hash(request: JsonObject) -> str:
    """What an idempotency key is bound to (internal: any stable encoding will do)."""
    return hashlib.sha256(_encode_request(request).encode()).hexdigest()


@dataclass(slots=True)
class _Queued:
    """A write waiting for the group commit; ``done`` once committed or refused."""

    key: str | None
    request_hash: str | None
    decide: Callable[[Connection, EntryContext], Decision]
    result: WriteResult | None = None
    error: BaseException | None = None
    done: bool = False


class _NoEntry(Exception):
    """A batch decision chose to write no entry."""


def _conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(f"idempotency key {key} was used for a different request")


def _entry_row(
    index: int, body: JsonObject, key: str | None, req_hash: str | None
) -> dict[str, Any]:
    data = canonical_json(body)
    to_account = body.get("to")
    return {
        "log_index": index,
        "entry_id": body["id"],
        "kind": body["kind"],
        "account": body["account"],
        "to_account": to_account if isinstance(to_account, str) else None,
        "body": data.decode(),
        "leaf_hash": leaf_hash(data),
        "idem_key": key,
        "request_hash": req_hash,
    }


def _lot_view(lot: Lot) -> LotView:
    return LotView(
        id=lot.id,
        amount=lot.amount,
        remaining=lot.remaining,
        qualifying=lot.qualifying,
        earned_at=format_time(lot.earned_at),
        available_at=format_time(lot.available_at),
        expires_at=format_time(lot.expires_at),
        ref=lot.ref,
        reversed=lot.reversed,
    )


class NodeService:
    """One program's node: points operations, queries and the verifiable ledger."""

    def __init__(
        self,
        engine: Engine,
        program: str,
        key: SigningKey,
        account_secret: bytes,
        rules: ProgramRules,
        sealer: SealerConfig,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.program = program
        self.rules = rules
        self.public_key: VerifyKey = key.public_key
        self._key = key
        self.engine = engine
        self._secret = account_secret
        self._clock = clock or (lambda: datetime.now(UTC))
        self._writer = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Queued] = []
        with engine.connect() as conn:
            self._next_index = repository.next_log_index(conn)
        self.sealer = Sealer(engine, program, key, sealer, self._clock)

    @property
    def signing_key(self) -> SigningKey:
        """The node's ledger key: coalition features sign agreements and receipts with it."""
        return self._key

    def now(self) -> datetime:
        """The node's clock (the time its entries carry)."""
        return self._clock()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start sealing in the background."""
        self.sealer.start()

    def close(self) -> None:
        """Seal what is pending, stop the sealer and release the database."""
        self.sealer.stop()
        self.engine.dispose()

    # --- writes -------------------------------------------------------------------------

    def _context(self) -> EntryContext:
        return EntryContext(self.program, new_entry_ids(1)[0], self._clock())

    def member_account(self, conn: Connection, member_id: str) -> str:
        """The ledger account of an enrolled member; NotFound otherwise."""
        validate_member_id(member_id)
        found = repository.accounts_for_members(conn, [member_id])
        if member_id not in found:
            raise NotFound(f"unknown member {member_id}")
        return found[member_id]

    def _write(
        self,
        request: JsonObject,
        idempotency_key: str | None,
        decide: Callable[[Connection, EntryContext], Decision],
    ) -> WriteResult:
        """Run one decision under the writer lock, committed before it returns, or replay it.

        ``decide`` returns the entry body, the accounts it acts on (loaded with the lots it
        needs) and the ids of those lots that already exist in the database. Without an
        idempotency key the request is not recorded (system entries that are idempotent
        by their own ids).

        Group commit: concurrent callers queue; whoever holds the writer lock next commits
        every queued decision in one transaction (one fsync), in queue order. A refusal
        affects only its own caller; a failure after a decision was taken fails the batch,
        which is then retried one decision per transaction.
        """
        if idempotency_key is not None:
            validate_reference(idempotency_key, "idempotency key")
        req_hash = _request_hash(request) if idempotency_key is not None else None
        item = _Queued(idempotency_key, req_hash, decide)
        with self._queue_lock:
            self._queue.append(item)
        with self._writer:
            if not item.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit_queued(batch)
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _commit_queued(self, batch: list[_Queued]) -> None:
        """Commit ``batch`` in one transaction (caller holds the writer lock)."""
        rows: list[dict[str, Any]] = []
        decided: list[_Queued] = []
        try:
            with self.engine.begin() as conn:
                for item in batch:
                    self._decide_queued(conn, item, rows, decided)
        except Exception as exc:
            for item in decided:
                item.result = None
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done = True
                return
            for item in batch:
                if item.result is None and item.error is None:
                    self._commit_queued([item])
                item.done = True
            return
        self._next_index += len(rows)
        self.sealer.added([row["leaf_hash"] for row in rows])
        for item in batch:
            item.done = True

    def _decide_queued(
        self,
        conn: Connection,
        item: _Queued,
        rows: list[dict[str, Any]],
        decided: list[_Queued],
    ) -> None:
        if item.key is not None:
            found = repository.find_idempotent(conn, item.key)
            if found is not None:
                if found[0] != item.request_hash:
                    item.error = _conflict(item.key)
                else:
                    item.result = WriteResult(found[1], replayed=True)
                return
        taken: list[Decision] = []

        def once(c: Connection, ctx: EntryContext) -> Decision:
            taken.append(item.decide(c, ctx))
            return taken[0]

        try:
            row = self._apply(conn, once, item.key, item.request_hash, self._next_index + len(rows))
        except CoalitionError as exc:
            if taken:  # the decided entry did not apply: a bug, and the batch is tainted
                raise
            item.error = exc
            return
        rows.append(row)
        decided.append(item)
        item.result = WriteResult(row["body_object"])

    def _apply(
        self,
        conn: Connection,
        decide: Callable[[Connection, EntryContext], Decision],
        key: str | None,
        req_hash: str | None,
        index: int,
    ) -> dict[str, Any]:
        body, touched, known = decide(conn, self._context())
        by_id = {account.id: account for account in touched}
        apply_entry(body, by_id.__getitem__)
        row = _entry_row(index, body, key, req_hash)
        repository.insert_entries(conn, [row])
        repository.save_lots(conn, touched, known)
        row["body_object"] = body
        return row

    def write(
        self,
        request: JsonObject,
        idempotency_key: str | None,
        decide: Callable[[Connection, EntryContext], Decision],
    ) -> WriteResult:
        """Append one entry decided by ``decide(conn, ctx)`` inside the writer's transaction.

        For the coalition's modules: ``decide`` may read and write its own tables through
        ``conn`` (committed with the entry), but MUST raise before writing anything when
        it refuses, since the whole transaction is its unit.
        """
        return self._write(request, idempotency_key, decide)

    def write_many(
        self, decisions: Sequence[Callable[[Connection, EntryContext], Decision | None]]
    ) -> list[JsonObject | CoalitionError | None]:
        """Append the entries of many decisions in one transaction (one fsync for a batch).

        Per decision the result is the entry body, the CoalitionError it raised (it must
        raise before writing anything) or None when it decided to write no entry.
        """
        results: list[JsonObject | CoalitionError | None] = []
        rows: list[dict[str, Any]] = []
        with self._writer:
            with self.engine.begin() as conn:
                for decide in decisions:
                    decided: list[Decision] = []

                    def once(
                        c: Connection,
                        ctx: EntryContext,
                        decide: Callable[[Connection, EntryContext], Decision | None] = decide,
                        decided: list[Decision] = decided,
                    ) -> Decision:
                        found = decide(c, ctx)
                        if found is None:
                            raise _NoEntry
                        decided.append(found)
                        return found

                    try:
                        row = self._apply(conn, once, None, None, self._next_index + len(rows))
                    except _NoEntry:
                        results.append(None)
                        continue
                    except CoalitionError as exc:
                        if decided:  # the entry itself failed to apply: a bug, not a refusal
                            raise
                        results.append(exc)
                        continue
                    rows.append(row)
                    results.append(row["body_object"])
            self._next_index += len(rows)
            self.sealer.added([row["leaf_hash"] for row in rows])
        return results

    def load_touched(
        self, conn: Connection, account_ids: Sequence[str], **kwargs: Any
    ) -> tuple[list[Account], set[str]]:
        """The accounts a decision will change (``repository.load_accounts``) and the ids of
        the lots they hold, as a ``Decision`` reports them."""
        loaded = repository.load_accounts(conn, account_ids, **kwargs)
        known = {lot_id for account in loaded.values() for lot_id in account.lots}
        return list(loaded.values()), known

    def enroll(self, member_id: str, *, idempotency_key: str) -> WriteResult:
        validate_member_id(member_id)
        account = account_id(self._secret, member_id)

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            if repository.accounts_for_members(conn, [member_id]):
                raise FailedPrecondition(f"member {member_id} is already enrolled")
            repository.insert_account(conn, account, member_id, ctx.at)
            return operations.enroll(ctx, account), [Account(account)], set()

        return self._write({"op": "enroll", "member_id": member_id}, idempotency_key, decide)

    def earn_purchase(
        self,
        member_id: str,
        reference: str,
        spend_minor: int,
        category: str = "",
        *,
        idempotency_key: str,
    ) -> WriteResult:
        request: JsonObject = {
            "op": "earn",
            "member_id": member_id,
            "reference": reference,
            "spend_minor": spend_minor,
            "category": category,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            used = bool(repository.used_refs(conn, [lot_ref("purchase", reference)]))
            since = ctx.at - self.rules.tier_window
            qualifying = repository.qualifying_points(conn, [account], since)[account]
            body = operations.earn_purchase(
                ctx,
                self.rules,
                account,
                qualifying,
                reference,
                spend_minor,
                category,
                reference_used=used,
            )
            return body, [Account(account)], set()

        return self._write(request, idempotency_key, decide)

    def earn_reward(
        self, member_id: str, event: str, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        request: JsonObject = {
            "op": "reward",
            "member_id": member_id,
            "event": event,
            "reference": reference,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            used = bool(repository.used_refs(conn, [lot_ref(event, reference)]))
            touched, known = self.load_touched(conn, [account])
            body = operations.earn_reward(
                ctx, self.rules, touched[0], event, reference, reference_used=used
            )
            return body, touched, known

        return self._write(request, idempotency_key, decide)

    def reverse_purchase(
        self, member_id: str, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        validate_reference(reference, "purchase reference")
        request: JsonObject = {"op": "reverse", "member_id": member_id, "reference": reference}

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            found = repository.lot_by_ref(conn, lot_ref("purchase", reference))
            if found is None or found[1] != account:
                raise NotFound(f"member {member_id} earned nothing for purchase {reference}")
            touched, known = self.load_touched(conn, [account], lot_ids=[found[0]])
            reason: JsonObject = {"rule": "refund", "reference": reference}
            body = operations.clawback(ctx, touched[0], found[0], "reverse", reason)
            return body, touched, known

        return self._write(request, idempotency_key, decide)

    def revoke(
        self, member_id: str, earn_entry_id: str, operator: str, note: str, *, idempotency_key: str
    ) -> WriteResult:
        _check_entry_id(earn_entry_id)
        validate_reference(operator, "operator id")
        operations.validate_note(note)
        request: JsonObject = {
            "op": "revoke",
            "member_id": member_id,
            "earn_entry_id": earn_entry_id,
            "operator": operator,
            "note": note,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            touched, known = self.load_touched(conn, [account], lot_ids=[earn_entry_id])
            reason: JsonObject = {
                "rule": "revocation",
                "operator": operator,
                "note": note,
                "earn": earn_entry_id,
            }
            body = operations.clawback(ctx, touched[0], earn_entry_id, "revoke", reason)
            return body, touched, known

        return self._write(request, idempotency_key, decide)

    def redeem(
        self, member_id: str, amount: int, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        request: JsonObject = {
            "op": "redeem",
            "member_id": member_id,
            "amount": amount,
            "reference": reference,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            touched, known = self.load_touched(conn, [account])
            body = operations.redeem(ctx, self.rules, touched[0], amount, reference)
            return body, touched, known

        return self._write(request, idempotency_key, decide)

    def transfer(
        self, member_id: str, to_member_id: str, amount: int, note: str, *, idempotency_key: str
    ) -> WriteResult:
        request: JsonObject = {
            "op": "transfer",
            "member_id": member_id,
            "to_member_id": to_member_id,
            "amount": amount,
            "note": note,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            source = self.member_account(conn, member_id)
            target = self.member_account(conn, to_member_id)
            if source == target:
                raise InvalidArgument("cannot transfer points to the same member")
            touched, known = self.load_touched(conn, [source, target])
            body = operations.transfer(ctx, self.rules, touched[0], target, amount, note)
            return body, touched, known

        return self._write(request, idempotency_key, decide)

    def adjust(
        self, member_id: str, amount: int, operator: str, note: str, *, idempotency_key: str
    ) -> WriteResult:
        request: JsonObject = {
            "op": "adjust",
            "member_id": member_id,
            "amount": amount,
            "operator": operator,
            "note": note,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            touched, known = self.load_touched(conn, [account])
            body = operations.adjust(ctx, self.rules, touched[0], amount, operator, note)
            return body, touched, known

        return self._write(request, idempotency_key, decide)

    def run_expiry(self, batch: int = 500) -> ExpiryResult:
        """Expire every lot whose time has come (the scheduled job); safe to run any time."""
        count = points = 0
        while True:
            with self._writer:
                with self.engine.begin() as conn:
                    ctx_time = self._clock()
                    due = repository.due_accounts(conn, ctx_time, batch)
                    if not due:
                        return ExpiryResult(count, points)
                    touched, known = self.load_touched(conn, due)
                    rows: list[dict[str, Any]] = []
                    for account, entry_id in zip(touched, new_entry_ids(len(touched)), strict=True):
                        body = operations.expire(
                            EntryContext(self.program, entry_id, ctx_time), account
                        )
                        if body is None:
                            continue
                        apply_entry(body, {account.id: account}.__getitem__)
                        rows.append(_entry_row(self._next_index + len(rows), body, None, None))
                        points += int(body["amount"])  # type: ignore[arg-type]  # the node built body: an int
                    repository.insert_entries(conn, rows)
                    repository.save_lots(conn, touched, known)
                self._next_index += len(rows)
                count += len(rows)
                self.sealer.added([row["leaf_hash"] for row in rows])

    def earn_bulk(
        self,
        rows: Iterable[PurchaseRow],
        *,
        batch_size: int = 2000,
        progress: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Earn for many purchases, a transaction per batch; bad rows are reported, the
        others committed. Rows are numbered from 1 in the order given."""
        if not 1 <= batch_size <= 50_000:
            raise InvalidArgument("batch_size must be 1..50000")
        result = BulkResult()
        accepted = replayed = 0
        numbered: Iterator[tuple[int, PurchaseRow]] = enumerate(rows, start=1)
        while chunk := list(islice(numbered, batch_size)):
            a, r = self._earn_chunk(chunk, result.rejected)
            accepted += a
            replayed += r
            if progress is not None:
                progress(len(chunk))
        return BulkResult(accepted, replayed, result.rejected)

    def _earn_chunk(
        self, chunk: list[tuple[int, PurchaseRow]], rejected: list[RowError]
    ) -> tuple[int, int]:
        requests: dict[int, str] = {}
        valid: list[tuple[int, PurchaseRow]] = []
        for number, row in chunk:
            try:
                validate_reference(row.idempotency_key, "idempotency key")
                validate_member_id(row.member_id)
                validate_reference(row.reference, "purchase reference")
                requests[number] = _request_hash(
                    {
                        "op": "earn",
                        "member_id": row.member_id,
                        "reference": row.reference,
                        "spend_minor": row.spend_minor,
                        "category": row.category,
                    }
                )
                valid.append((number, row))
            except CoalitionError as exc:
                rejected.append(RowError(number, str(row.idempotency_key), str(exc)))
        replayed = 0
        new_rows: list[dict[str, Any]] = []
        with self._writer:
            with self.engine.begin() as conn:
                keys = [row.idempotency_key for _, row in valid]
                seen = repository.request_hashes(conn, keys)
                now = self._clock()
                found = repository.members_with_qualifying(
                    conn, [r.member_id for _, r in valid], now - self.rules.tier_window
                )
                members = {member: account for member, (account, _) in found.items()}
                qualifying = {account: points for account, points in found.values()}
                used = repository.used_refs(
                    conn, [lot_ref("purchase", r.reference) for _, r in valid]
                )
                loaded = {account: Account(account) for account in qualifying}
                ids = iter(new_entry_ids(len(valid)))
                for number, row in valid:
                    key = row.idempotency_key
                    try:
                        if key in seen:
                            if seen[key] != requests[number]:
                                raise _conflict(key)
                            replayed += 1
                            continue
                        if row.member_id not in members:
                            raise NotFound(f"unknown member {row.member_id}")
                        ref = lot_ref("purchase", row.reference)
                        ctx = EntryContext(self.program, next(ids), now)
                        account = members[row.member_id]
                        body = operations.earn_purchase(
                            ctx,
                            self.rules,
                            account,
                            qualifying[account],
                            row.reference,
                            row.spend_minor,
                            row.category,
                            reference_used=ref in used,
                        )
                    except CoalitionError as exc:
                        rejected.append(RowError(number, key, str(exc)))
                        continue
                    apply_entry(body, loaded.__getitem__)
                    qualifying[account] += int(body["amount"])  # type: ignore[arg-type]  # the node built body: an int
                    used.add(ref)
                    seen[key] = requests[number]
                    new_rows.append(
                        _entry_row(self._next_index + len(new_rows), body, key, requests[number])
                    )
                repository.insert_entries(conn, new_rows)
                repository.save_lots(conn, loaded.values(), set())
            self._next_index += len(new_rows)
            self.sealer.added([row["leaf_hash"] for row in new_rows])
        return len(new_rows), replayed

    # --- member reads -------------------------------------------------------------------

    def balance(self, member_id: str) -> BalanceView:
        now = self._clock()
        with self.engine.connect() as conn:
            account_id_ = self.member_account(conn, member_id)
            account = repository.load_accounts(
                conn, [account_id_], earned_since=now - self.rules.tier_window
            )[account_id_]
        qualifying = account.qualifying_since(now - self.rules.tier_window)
        return BalanceView(
            member_id=member_id,
            account=account_id_,
            spendable=account.balance(now),
            pending=account.pending(now),
            held=account.held(),
            tier=self.rules.tier_for(qualifying).name,
            qualifying=qualifying,
        )

    def lots(self, member_id: str) -> list[LotView]:
        with self.engine.connect() as conn:
            account_id_ = self.member_account(conn, member_id)
            account = repository.load_accounts(conn, [account_id_], all_lots=True)[account_id_]
        ordered = sorted(account.lots.values(), key=lambda lot: (lot.earned_at, lot.id))
        return [_lot_view(lot) for lot in ordered]

    def history(self, member_id: str, limit: int = 100) -> list[EntryView]:
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be 1..1000, got {limit!r}")
        with self.engine.connect() as conn:
            account_id_ = self.member_account(conn, member_id)
            rows = repository.history(conn, account_id_, limit)
        size = self.sealer.log_size
        return [EntryView(body, index if index < size else None) for index, body in rows]

    # --- ledger reads -------------------------------------------------------------------

    def latest_header(self) -> SignedHeader | None:
        return self.sealer.last

    def headers(self, start: int, limit: int = 1000) -> list[SignedHeader]:
        if not isinstance(start, int) or start < 0:
            raise InvalidArgument(f"start must be a height >= 0, got {start!r}")
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be 1..10000, got {limit!r}")
        with self.engine.connect() as conn:
            rows = repository.block_rows(conn, start, limit)
        return [signed_header_from_row(header, sig) for _, header, sig in rows]

    def _header_at(self, conn: Connection, height: int) -> SignedHeader:
        if not isinstance(height, int) or height < 0:
            raise InvalidArgument(f"height must be >= 0, got {height!r}")
        rows = repository.block_rows(conn, height, 1)
        if not rows or rows[0][0] != height:
            raise NotFound(f"no block at height {height}")
        return signed_header_from_row(rows[0][1], rows[0][2])

    def block(self, height: int) -> tuple[SignedHeader, list[JsonObject]]:
        with self.engine.connect() as conn:
            signed = self._header_at(conn, height)
            first = signed.header.first_index
            rows = repository.entry_bodies(conn, first, first + signed.header.entry_count)
        return signed, [repository.stored_object(body) for _, body, _ in rows]

    def entry(self, entry_id: str) -> EntryView:
        _check_entry_id(entry_id)
        with self.engine.connect() as conn:
            found = repository.entry_by_id(conn, entry_id)
        if found is None:
            raise NotFound(f"no entry {entry_id}")
        index, body = found
        return EntryView(body, index if index < self.sealer.log_size else None)

    def _nodes(self, conn: Connection, coords: list[NodeCoord]) -> dict[NodeCoord, bytes]:
        stored = repository.read_nodes(
            conn, stored_coords(coords, TREE_STRIDE), self.sealer.node_cache
        )
        return expand_nodes(coords, stored, TREE_STRIDE)

    def inclusion_proof(self, entry_id: str, tree_size: int | None = None) -> JsonObject:
        """The inclusion proof document of an entry in the log at a sealed size (default:
        the newest); FailedPrecondition while the entry is not sealed yet."""
        _check_entry_id(entry_id)
        with self.engine.connect() as conn:
            found = repository.entry_by_id(conn, entry_id)
            if found is None:
                raise NotFound(f"no entry {entry_id}")
            leaf_index, entry = found
            signed = self._signed_at_size(conn, tree_size)
            size = signed.header.log_size
            if leaf_index >= size:
                raise FailedPrecondition(
                    f"entry {entry_id} is not in the log at size {size} yet (not sealed)"
                )
            nodes = self._nodes(conn, inclusion_coords(leaf_index, size))
        path = inclusion_from_nodes(leaf_index, size, nodes)
        return inclusion_document(entry, leaf_index, path, signed)

    def _signed_at_size(self, conn: Connection, tree_size: int | None) -> SignedHeader:
        if tree_size is None:
            if self.sealer.last is None:
                raise FailedPrecondition("no block has been sealed yet")
            return self.sealer.last
        if not isinstance(tree_size, int) or tree_size < 1:
            raise InvalidArgument(f"tree_size must be a positive integer, got {tree_size!r}")
        row = repository.block_with_log_size(conn, tree_size)
        if row is None:
            raise NotFound(f"no signed header has log size {tree_size}")
        return signed_header_from_row(row[1], row[2])

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject:
        """The consistency proof document between two sealed headers (first <= second)."""
        with self.engine.connect() as conn:
            first = self._header_at(conn, first_height)
            second = self._header_at(conn, second_height)
            if first_height > second_height:
                raise InvalidArgument("the first height must not be above the second")
            size1, size2 = first.header.log_size, second.header.log_size
            nodes = self._nodes(conn, consistency_coords(size1, size2))
        path = consistency_from_nodes(size1, size2, nodes)
        return consistency_document(first, second, path)

    def wait_for_header(self, after_height: int, timeout: float) -> SignedHeader | None:
        return self.sealer.wait_for_header(after_height, timeout)

    def flush(self) -> SignedHeader | None:
        return self.sealer.flush()
