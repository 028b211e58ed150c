"""The points operations of a node: members' writes and reads, bulk earn, expiry.

Every write is a decision of the sequencer (``coalition.node.sequencer``): it is
acknowledged only once committed, and a refusal changes nothing. The loyalty rules
themselves live in ``coalition.points``; this module loads what they need and records
what they decide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from functools import partial
from itertools import islice
from typing import Any

from sqlalchemy import Connection

from coalition.errors import CoalitionError, FailedPrecondition, InvalidArgument, NotFound
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import format_time
from coalition.node.idempotency import OPERATOR, KeyScope
from coalition.node.paging import check_page_size
from coalition.node.sequencer import (
    Decision,
    Sequencer,
    Transaction,
    check_entry_id,
    idempotency_conflict,
    new_entry_ids,
    request_hash,
)
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
from coalition.points.state import Account, Lot, lot_ref
from coalition.store import ledger as ledger_store
from coalition.store import members as members_store


def _amount(entry: JsonObject) -> int:
    amount = entry["amount"]
    assert isinstance(amount, int)  # the operations build every amount as an int
    return amount


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


class PointsService:
    """One program's member operations under its rules, written through its sequencer."""

    def __init__(self, sequencer: Sequencer, rules: ProgramRules, account_secret: bytes) -> None:
        self.program = sequencer.program
        self.rules = rules
        self._sequencer = sequencer
        self._secret = account_secret

    def member_account(self, conn: Connection, member_id: str) -> str:
        """The ledger account of an enrolled member; NotFound otherwise."""
        validate_member_id(member_id)
        found = members_store.account_of_member(conn, member_id)
        if found is None:
            raise NotFound(f"unknown member {member_id}")
        return found

    def load_touched(
        self, conn: Connection, account_ids: Sequence[str], **kwargs: Any
    ) -> tuple[list[Account], set[str]]:
        """The accounts a decision will change (``members_store.load_accounts``) and the ids of
        the lots they hold, as a ``Decision`` reports them."""
        loaded = members_store.load_accounts(conn, account_ids, **kwargs)
        known = {lot_id for account in loaded.values() for lot_id in account.lots}
        return list(loaded.values()), known

    def load_debit(
        self, conn: Connection, account_id: str, amount: object, at: datetime
    ) -> tuple[list[Account], set[str]]:
        """The account a debit of ``amount`` at ``at`` changes, with only the lots that
        debit takes (``members_store.debit_account``), as a ``Decision`` reports them: a
        debit reads and writes the same few rows whether the member holds 1 lot or 500.
        The account MUST then only be debited (``Account.take``) or credited new lots."""
        account = members_store.debit_account(conn, account_id, amount, at)
        return [account], set(account.lots)

    def account_for(self, member_id: str) -> str:
        """The account ``member_id`` has, or gets when enrolled (the HMAC of the id)."""
        return account_id(self._secret, member_id)

    def enrol_on_arrival(
        self, conn: Connection, member_id: str, account: str, at: datetime
    ) -> Decision:
        """Enrol ``member_id``, not enrolled yet, because points arrive for it (a member's
        transfer, a partner's conversion): its member row, and its ``enroll`` entry (an id
        of its own, at ``at``) to append before the entry that credits ``account``, its
        ``account_for``. Points sent to an id nobody enrolled wait in its account for its
        holder, so a sender learns nothing of which ids are enrolled (issue 11, class 9).
        The caller MUST have made every check that may refuse before it calls this, and
        pass the returned account object on to the credit."""
        members_store.insert_account(conn, account, member_id, at)
        ctx = EntryContext(self.program, new_entry_ids(1)[0], at)
        return operations.enroll(ctx, account), [Account(account)], set()

    def _accounts(self, *member_ids: str) -> list[str] | None:
        """The accounts a member write of ``member_ids`` acts on, for the sequencer's
        by-account writes; None (a serial write) when an id is malformed, so the decision
        refuses it exactly as before, after the idempotency lookup."""
        try:
            return [account_id(self._secret, member_id) for member_id in member_ids]
        except InvalidArgument:
            return None

    # --- member writes ------------------------------------------------------------------

    def enroll(
        self, member_id: str, *, idempotency_key: str, scope: KeyScope = OPERATOR
    ) -> WriteResult:
        validate_member_id(member_id)
        account = account_id(self._secret, member_id)

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            if members_store.account_of_member(conn, member_id) is not None:
                raise FailedPrecondition(f"member {member_id} is already enrolled")
            members_store.insert_account(conn, account, member_id, ctx.at)
            return operations.enroll(ctx, account), [Account(account)], set()

        return self._sequencer.append(
            {"op": "enroll", "member_id": member_id},
            idempotency_key,
            decide,
            accounts=[account],
            scope=scope,
        )

    def earn_purchase(
        self,
        member_id: str,
        reference: str,
        spend_minor: int,
        category: str = "",
        *,
        idempotency_key: str,
        scope: KeyScope = OPERATOR,
    ) -> WriteResult:
        validate_reference(reference, "purchase reference")  # before it is looked up
        request: JsonObject = {
            "op": "earn",
            "member_id": member_id,
            "reference": reference,
            "spend_minor": spend_minor,
            "category": category,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            used = members_store.ref_used(conn, lot_ref("purchase", reference))
            qualifying = members_store.qualifying_of(conn, account, ctx.at - self.rules.tier_window)
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

        return self._sequencer.append(
            request,
            idempotency_key,
            decide,
            accounts=self._accounts(member_id),
            scope=scope,
        )

    def earn_reward(
        self,
        member_id: str,
        event: str,
        reference: str,
        *,
        idempotency_key: str,
        scope: KeyScope = OPERATOR,
    ) -> WriteResult:
        validate_reference(reference, "event reference")  # before it is looked up
        self.rules.reward_points(event)  # a known event, before its name is looked up
        request: JsonObject = {
            "op": "reward",
            "member_id": member_id,
            "event": event,
            "reference": reference,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            used = members_store.ref_used(conn, lot_ref(event, reference))
            touched = Account(account)  # an earn opens a lot: it needs none of the others
            body = operations.earn_reward(
                ctx, self.rules, touched, event, reference, reference_used=used
            )
            return body, [touched], set()

        return self._sequencer.append(
            request,
            idempotency_key,
            decide,
            accounts=self._accounts(member_id),
            scope=scope,
        )

    def reverse_purchase(
        self, member_id: str, reference: str, *, idempotency_key: str, scope: KeyScope = OPERATOR
    ) -> WriteResult:
        validate_reference(reference, "purchase reference")
        request: JsonObject = {"op": "reverse", "member_id": member_id, "reference": reference}

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            found = members_store.lot_by_ref(conn, lot_ref("purchase", reference))
            if found is None or found[1] != account:
                raise NotFound(f"member {member_id} earned nothing for purchase {reference}")
            touched, known = self.load_touched(conn, [account], lot_ids=[found[0]])
            reason: JsonObject = {"rule": "refund", "reference": reference}
            body = operations.clawback(ctx, touched[0], found[0], "reverse", reason)
            return body, touched, known

        return self._sequencer.append(
            request,
            idempotency_key,
            decide,
            accounts=self._accounts(member_id),
            scope=scope,
        )

    def revoke(
        self,
        member_id: str,
        earn_entry_id: str,
        operator: str,
        note: str,
        *,
        idempotency_key: str,
        scope: KeyScope = OPERATOR,
    ) -> WriteResult:
        check_entry_id(earn_entry_id)
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

        return self._sequencer.append(
            request,
            idempotency_key,
            decide,
            accounts=self._accounts(member_id),
            scope=scope,
        )

    def redeem(
        self,
        member_id: str,
        amount: int,
        reference: str,
        *,
        idempotency_key: str,
        scope: KeyScope = OPERATOR,
    ) -> WriteResult:
        request: JsonObject = {
            "op": "redeem",
            "member_id": member_id,
            "amount": amount,
            "reference": reference,
        }

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.member_account(conn, member_id)
            touched, known = self.load_debit(conn, account, amount, ctx.at)
            body = operations.redeem(ctx, self.rules, touched[0], amount, reference)
            return body, touched, known

        return self._sequencer.append(
            request,
            idempotency_key,
            decide,
            accounts=self._accounts(member_id),
            scope=scope,
        )

    def transfer(
        self,
        member_id: str,
        to_member_id: str,
        amount: int,
        note: str,
        *,
        idempotency_key: str,
        scope: KeyScope = OPERATOR,
    ) -> WriteResult:
        """Move ``amount`` of the member's spendable points to ``to_member_id``. A member
        id not enrolled yet is enrolled by the transfer (its ``enroll`` entry comes
        first, in the same write), so the answer is the same whether the recipient was
        enrolled or not and a member learns nothing of which ids are (issue 11, class 9);
        the points wait in that id's account for its holder."""
        request: JsonObject = {
            "op": "transfer",
            "member_id": member_id,
            "to_member_id": to_member_id,
            "amount": amount,
            "note": note,
        }

        def decide(conn: Connection, ctx: EntryContext) -> list[Decision]:
            source = self.member_account(conn, member_id)
            validate_member_id(to_member_id)
            enrolled = members_store.account_of_member(conn, to_member_id)
            target = self.account_for(to_member_id) if enrolled is None else enrolled
            if source == target:
                raise InvalidArgument("cannot transfer points to the same member")
            touched, known = self.load_debit(conn, source, amount, ctx.at)
            body = operations.transfer(ctx, self.rules, touched[0], target, amount, note)
            if enrolled is not None:
                # The target only receives new lots: none of its own are read.
                return [(body, [touched[0], Account(target)], known)]
            opened = self.enrol_on_arrival(conn, to_member_id, target, ctx.at)
            return [opened, (body, [touched[0], opened[1][0]], known)]

        return self._sequencer.append(
            request,
            idempotency_key,
            decide,
            accounts=self._accounts(member_id, to_member_id),
            scope=scope,
        )

    def adjust(
        self,
        member_id: str,
        amount: int,
        operator: str,
        note: str,
        *,
        idempotency_key: str,
        scope: KeyScope = OPERATOR,
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
            if isinstance(amount, int) and amount < 0:
                touched, known = self.load_debit(conn, account, -amount, ctx.at)
            else:  # a credit opens a lot; anything else is refused by the rules
                touched, known = [Account(account)], set()
            body = operations.adjust(ctx, self.rules, touched[0], amount, operator, note)
            return body, touched, known

        return self._sequencer.append(
            request,
            idempotency_key,
            decide,
            accounts=self._accounts(member_id),
            scope=scope,
        )

    def run_expiry(self, batch: int = 500) -> ExpiryResult:
        """Expire every lot whose time has come (the scheduled job); safe to run any time.
        A transaction per ``batch`` accounts."""
        count = points = 0
        while True:
            expired = self._sequencer.run(lambda tx: self._expire_due(tx, batch))
            if expired is None:
                return ExpiryResult(count, points)
            count += expired.entries
            points += expired.points

    def _expire_due(self, tx: Transaction, batch: int) -> ExpiryResult | None:
        """One ``expire`` entry per account with lots due (at most ``batch`` accounts);
        None when none is due."""
        at = tx.now()
        due = members_store.due_accounts(tx.conn, at, batch)
        if not due:
            return None
        touched, known = self.load_touched(tx.conn, due)
        count = points = 0
        for account, ctx in zip(touched, tx.contexts(len(touched), at), strict=True):
            body = operations.expire(ctx, account)
            if body is None:
                continue
            tx.append(body, [account], known)
            count += 1
            points += _amount(body)
        return ExpiryResult(count, points)

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
        rejected: list[RowError] = []
        accepted = replayed = 0
        numbered: Iterator[tuple[int, PurchaseRow]] = enumerate(rows, start=1)
        while chunk := list(islice(numbered, batch_size)):
            valid, requests = self._check_rows(chunk, rejected)
            earn = partial(self._earn_chunk, valid=valid, requests=requests)
            a, r, refused = self._sequencer.run(earn)
            accepted += a
            replayed += r
            rejected.extend(refused)
            if progress is not None:
                progress(len(chunk))
        return BulkResult(accepted, replayed, rejected)

    def _check_rows(
        self, chunk: list[tuple[int, PurchaseRow]], rejected: list[RowError]
    ) -> tuple[list[tuple[int, PurchaseRow]], dict[int, str]]:
        """The rows of ``chunk`` that are well formed, and their request hashes; the others
        go to ``rejected``."""
        requests: dict[int, str] = {}
        valid: list[tuple[int, PurchaseRow]] = []
        for number, row in chunk:
            try:
                validate_reference(row.idempotency_key, "idempotency key")
                validate_member_id(row.member_id)
                validate_reference(row.reference, "purchase reference")
                requests[number] = request_hash(
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
        return valid, requests

    def _earn_chunk(
        self, tx: Transaction, valid: list[tuple[int, PurchaseRow]], requests: dict[int, str]
    ) -> tuple[int, int, list[RowError]]:
        """Earn for the rows of one chunk: (accepted, replayed, rows refused)."""
        conn = tx.conn
        accepted = replayed = 0
        refused: list[RowError] = []
        keys = [row.idempotency_key for _, row in valid]
        seen = ledger_store.request_hashes(conn, keys)
        now = tx.now()
        found = members_store.members_with_qualifying(
            conn, [r.member_id for _, r in valid], now - self.rules.tier_window
        )
        members = {member: account for member, (account, _) in found.items()}
        qualifying = {account: points for account, points in found.values()}
        used = members_store.used_refs(conn, [lot_ref("purchase", r.reference) for _, r in valid])
        loaded = {account: Account(account) for account in qualifying}
        contexts = tx.contexts(len(valid), now)
        for number, row in valid:
            key = row.idempotency_key
            try:
                if key in seen:
                    if seen[key] != requests[number]:
                        raise idempotency_conflict(key)
                    replayed += 1
                    continue
                if row.member_id not in members:
                    raise NotFound(f"unknown member {row.member_id}")
                ref = lot_ref("purchase", row.reference)
                account = members[row.member_id]
                body = operations.earn_purchase(
                    next(contexts),
                    self.rules,
                    account,
                    qualifying[account],
                    row.reference,
                    row.spend_minor,
                    row.category,
                    reference_used=ref in used,
                )
            except CoalitionError as exc:
                refused.append(RowError(number, key, str(exc)))
                continue
            tx.append(body, [loaded[account]], idempotency_key=key, request_hash=requests[number])
            qualifying[account] += _amount(body)
            used.add(ref)
            seen[key] = requests[number]
            accepted += 1
        return accepted, replayed, refused

    # --- member reads -------------------------------------------------------------------

    def balance(self, member_id: str) -> BalanceView:
        now = self._sequencer.now()
        with self._sequencer.read() as conn:
            account_id_ = self.member_account(conn, member_id)
            account = members_store.load_accounts(
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
        """Every lot of the member, oldest first (gRPC's ``Lots``; HTTP pages: ``lots_page``)."""
        with self._sequencer.read() as conn:
            account_id_ = self.member_account(conn, member_id)
            account = members_store.load_accounts(conn, [account_id_], all_lots=True)[account_id_]
        ordered = sorted(account.lots.values(), key=lambda lot: (lot.earned_at, lot.id))
        return [_lot_view(lot) for lot in ordered]

    def lots_page(
        self, member_id: str, limit: int = 1000, after: str | None = None
    ) -> list[LotView]:
        """Up to ``limit`` (1..1000) of the member's lots in (earned_at, id) order, from the
        one after the lot ``after`` (an id; NotFound when the member has none so named):
        the order of ``lots``, at the cost of one page."""
        check_page_size(limit)
        if after is not None:
            validate_reference(after, "lot id")  # before it is looked up
        with self._sequencer.read() as conn:
            account_id_ = self.member_account(conn, member_id)
            found = members_store.lots_page(conn, account_id_, limit, after)
        if found is None:
            raise NotFound(f"member {member_id} has no lot {after}")
        return [_lot_view(lot) for lot in found]

    def history(self, member_id: str, limit: int = 100) -> list[EntryView]:
        return self.history_page(member_id, limit)[0]

    def history_page(
        self, member_id: str, limit: int = 100, before: int | None = None
    ) -> tuple[list[EntryView], int | None]:
        """The member's entries newest first, up to ``limit`` (1..1000), those below the log
        index ``before`` (None: the newest); and the ``before`` of the next older page (None
        when this page is not full). Costs one page however long the history is."""
        check_page_size(limit)
        if before is not None and (not isinstance(before, int) or before < 0):
            raise InvalidArgument(f"before must be a log index >= 0, got {before!r}")
        with self._sequencer.read() as conn:
            account_id_ = self.member_account(conn, member_id)
            rows = ledger_store.history(conn, account_id_, limit, before)
            size = ledger_store.sealed_size(conn)  # whichever process sealed them
        views = [EntryView(body, index if index < size else None) for index, body in rows]
        return views, (rows[-1][0] if len(rows) == limit else None)
