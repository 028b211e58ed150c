"""Accounts, lots and the one function that applies an entry to them.

Points live in lots: each earn (or positive adjustment, or transfer-in) opens a lot with
an amount, the time it becomes spendable (after the holding period) and the time it
expires. Debits take from lots soonest-to-expire first, which for one expiry period is
oldest first. ``apply_entry`` is the only place where state changes; the node runs it on
the accounts it loaded from its database, the auditor runs it to replay a whole chain, so
the two always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from coalition.errors import InsufficientPoints, VerificationError
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import parse_time


@dataclass(slots=True)
class Lot:
    """Points that arrived together and share one spendable time and one expiry time."""

    id: str
    account: str
    amount: int
    remaining: int
    qualifying: int
    earned_at: datetime
    available_at: datetime
    expires_at: datetime
    ref: str | None = None
    reversed: bool = False

    def spendable(self, at: datetime) -> bool:
        return self.remaining > 0 and self.available_at <= at < self.expires_at

    def pending(self, at: datetime) -> bool:
        return self.remaining > 0 and at < self.available_at


def debit_order(lot: Lot) -> tuple[datetime, datetime, str]:
    """The order debits and expiry take lots in: soonest to expire, then oldest."""
    return (lot.expires_at, lot.earned_at, lot.id)


@dataclass(slots=True)
class Account:
    """One member's account in one program, with the lots the caller loaded for it.

    ``changed`` names lots created or modified by ``apply_entry`` so a store writes back
    only those.
    """

    id: str
    lots: dict[str, Lot] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)

    def balance(self, at: datetime) -> int:
        """Spendable points at ``at``: available, unexpired, not pending."""
        return sum(lot.remaining for lot in self.lots.values() if lot.spendable(at))

    def pending(self, at: datetime) -> int:
        """Points still inside their holding period at ``at``."""
        return sum(lot.remaining for lot in self.lots.values() if lot.pending(at))

    def held(self) -> int:
        """Every point the account holds, spendable, pending or awaiting expiry."""
        return sum(lot.remaining for lot in self.lots.values())

    def take(self, amount: int, at: datetime, *, include_pending: bool = False) -> list[Lot]:
        """Lots to debit ``amount`` from, soonest-to-expire first, or InsufficientPoints."""
        usable = (
            lot
            for lot in self.lots.values()
            if lot.spendable(at) or (include_pending and lot.pending(at))
        )
        chosen: list[Lot] = []
        total = 0
        for lot in sorted(usable, key=debit_order):
            if total >= amount:
                break
            chosen.append(lot)
            total += lot.remaining
        if total < amount:
            raise InsufficientPoints(
                f"account {self.id[:12]}... has {self.balance(at)} spendable points, {amount} asked"
            )
        return chosen

    def expired_lots(self, at: datetime) -> list[Lot]:
        """Lots with points left whose expiry time has come, oldest first."""
        due = [lot for lot in self.lots.values() if lot.remaining > 0 and lot.expires_at <= at]
        return sorted(due, key=debit_order)

    def qualifying_since(self, start: datetime) -> int:
        """Tier-qualifying points earned after ``start`` (reversed earns count zero)."""
        return sum(lot.qualifying for lot in self.lots.values() if lot.earned_at > start)


def split_debit(lots: Iterable[Lot], amount: int) -> list[JsonObject]:
    """The ``taken`` list of an entry: how much of ``amount`` comes from each lot, in order."""
    taken: list[JsonObject] = []
    left = amount
    for lot in lots:
        if left == 0:
            break
        part = min(left, lot.remaining)
        taken.append({"lot": lot.id, "amount": part})
        left -= part
    return taken


AccountLookup = Callable[[str], Account]


def _int(entry: JsonObject, key: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise VerificationError(f"entry {entry.get('id')}: field {key!r} must be an integer")
    return value


def _str(obj: JsonObject, key: str, entry_id: JsonValue) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise VerificationError(f"entry {entry_id}: field {key!r} must be a string")
    return value


def _taken(entry: JsonObject) -> Iterator[tuple[str, int, JsonObject]]:
    items = entry.get("taken")
    if not isinstance(items, list):
        raise VerificationError(f"entry {entry.get('id')}: field 'taken' must be a list")
    for item in items:
        if not isinstance(item, dict):
            raise VerificationError(f"entry {entry.get('id')}: bad 'taken' item")
        yield _str(item, "lot", entry.get("id")), _int(item, "amount"), item


def _debit(entry: JsonObject, account: Account, at: datetime, *, expiring: bool) -> int:
    """Apply the ``taken`` list of ``entry`` to ``account``; return the total taken."""
    entry_id = entry.get("id")
    total = 0
    for lot_id, part, _ in _taken(entry):
        lot = account.lots.get(lot_id)
        if lot is None:
            raise VerificationError(f"entry {entry_id}: lot {lot_id} not in account")
        if part <= 0 or part > lot.remaining:
            raise VerificationError(
                f"entry {entry_id}: takes {part} from lot {lot_id} holding {lot.remaining}"
            )
        if expiring and lot.expires_at > at:
            raise VerificationError(f"entry {entry_id}: expires lot {lot_id} before its time")
        lot.remaining -= part
        account.changed.add(lot_id)
        total += part
    return total


def _open_lot(
    account: Account,
    lot_id: str,
    amount: int,
    at: datetime,
    available_at: datetime,
    expires_at: datetime,
    *,
    qualifying: int = 0,
    ref: str | None = None,
) -> Lot:
    if amount <= 0:
        raise VerificationError(f"lot {lot_id}: amount must be positive, got {amount}")
    if lot_id in account.lots:
        raise VerificationError(f"lot {lot_id} opened twice")
    lot = Lot(lot_id, account.id, amount, amount, qualifying, at, available_at, expires_at, ref)
    account.lots[lot_id] = lot
    account.changed.add(lot_id)
    return lot


def apply_entry(entry: JsonObject, lookup: AccountLookup) -> None:
    """Apply one entry body to the accounts ``lookup`` returns, checking it as it goes.

    Raises VerificationError when the entry does not fit the state (a debit beyond a
    lot, an unknown lot, a premature expiry, a wrong total): on the node that means a bug,
    on an auditor's replay it means the chain is wrong.
    """
    kind = entry.get("kind")
    entry_id = entry.get("id")
    at = parse_time(_str(entry, "at", entry_id))
    account = lookup(_str(entry, "account", entry_id))
    amount = _int(entry, "amount") if kind != "enroll" else 0
    if kind == "enroll":
        return
    if kind == "earn":
        spec = entry.get("lot")
        if not isinstance(spec, dict):
            raise VerificationError(f"entry {entry_id}: earn without a lot")
        _open_lot(
            account,
            _str(spec, "id", entry_id),
            amount,
            at,
            parse_time(_str(spec, "available_at", entry_id)),
            parse_time(_str(spec, "expires_at", entry_id)),
            qualifying=_int(spec, "qualifying"),
            ref=_lot_ref(entry.get("reason")),
        )
        return
    if kind in ("redeem", "transfer"):
        taken = list(_taken(entry))
        for lot_id, _, _ in taken:
            source = account.lots.get(lot_id)
            if source is not None and not source.spendable(at):
                raise VerificationError(f"entry {entry_id}: lot {lot_id} is not spendable")
        total = _debit(entry, account, at, expiring=False)
        if total != amount:
            raise VerificationError(f"entry {entry_id}: lots give {total}, amount says {amount}")
        if kind == "transfer":
            target = lookup(_str(entry, "to", entry_id))
            if target.id == account.id:
                raise VerificationError(f"entry {entry_id}: transfer to the same account")
            for _, part, item in taken:
                _open_lot(
                    target,
                    _str(item, "new_lot", entry_id),
                    part,
                    at,
                    at,
                    parse_time(_str(item, "expires_at", entry_id)),
                )
        return
    if kind == "expire":
        if _debit(entry, account, at, expiring=True) != amount:
            raise VerificationError(f"entry {entry_id}: expired lots do not sum to amount")
        return
    if kind in ("reverse", "revoke"):
        lot_id = _str(entry, "lot", entry_id)
        earned = account.lots.get(lot_id)
        if earned is None or earned.reversed:
            raise VerificationError(f"entry {entry_id}: lot {lot_id} missing or already reversed")
        total = _debit(entry, account, at, expiring=False)
        if total != amount or total + _int(entry, "written_off") != earned.amount:
            raise VerificationError(f"entry {entry_id}: clawback does not add up")
        earned.reversed = True
        earned.qualifying = 0
        account.changed.add(lot_id)
        return
    if kind == "adjust":
        if amount > 0:
            _open_lot(
                account,
                _str(entry, "lot", entry_id),
                amount,
                at,
                at,
                parse_time(_str(entry, "expires_at", entry_id)),
            )
        elif amount < 0:
            if _debit(entry, account, at, expiring=False) != -amount:
                raise VerificationError(f"entry {entry_id}: adjustment lots do not add up")
        else:
            raise VerificationError(f"entry {entry_id}: adjustment of zero")
        return
    raise VerificationError(f"entry {entry_id}: unknown kind {kind!r}")


def _lot_ref(reason: JsonValue) -> str | None:
    if not isinstance(reason, dict):
        return None
    reference = reason.get("reference")
    if not isinstance(reference, str):
        return None
    prefix = reason.get("event") if reason.get("rule") == "reward" else reason.get("rule")
    return lot_ref(str(prefix), reference)


def lot_ref(kind: str, reference: str) -> str:
    """The program-wide unique key of a purchase or reward reference (``purchase:R``)."""
    return f"{kind}:{reference}"
