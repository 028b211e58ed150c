"""Accounts, lots and the one function that applies an entry to them.

Points live in lots: each earn (or positive adjustment, or transfer-in) opens a lot with
an amount, the time it becomes spendable (after the holding period) and the time it
expires. Debits take from lots soonest-to-expire first, which for one expiry period is
oldest first. ``apply_typed`` (``apply_entry`` parses a body first) is the only place
where state changes; the node runs it on the typed entries it builds and the accounts it
loaded from its database, the auditor runs it to replay a whole chain, so the two always
agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coalition.errors import InsufficientPoints, InvalidArgument, VerificationError
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.rotation import KeyRotation
from coalition.points import model
from coalition.points.kinds import PROGRAM_KINDS


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

PROGRAM_ACCOUNT = "-"
"""The ``account`` of program-level entries, which change no balance."""


def _debit(
    entry: model.Entry,
    taken: Sequence[model.Taken | model.TakenWithExpiry | model.TakenToLot],
    account: Account,
    at: datetime,
    *,
    expiring: bool,
) -> int:
    """Apply the ``taken`` list of ``entry`` to ``account``; return the total taken."""
    total = 0
    for item in taken:
        lot_id, part = item.lot, item.amount
        lot = account.lots.get(lot_id)
        if lot is None:
            raise VerificationError(f"entry {entry.id}: lot {lot_id} not in account")
        if part <= 0 or part > lot.remaining:
            raise VerificationError(
                f"entry {entry.id}: takes {part} from lot {lot_id} holding {lot.remaining}"
            )
        if expiring and lot.expires_at > at:
            raise VerificationError(f"entry {entry.id}: expires lot {lot_id} before its time")
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

    The body is parsed into its kind's typed entry first (``points.model``: types,
    fields, canonical times), then ``apply_typed`` applies it.
    """
    apply_typed(model.parse_entry(entry), lookup)


def apply_typed(entry: model.Entry, lookup: AccountLookup) -> None:
    """Apply one typed entry to the accounts ``lookup`` returns, checking it as it goes.

    Raises VerificationError when the entry does not fit the state (a debit beyond a
    lot, an unknown lot, a premature expiry, a wrong total): on the node that means a bug,
    on an auditor's replay it means the chain is wrong. Program-level kinds
    (``kinds.PROGRAM_KINDS``, account ``"-"``) never call ``lookup``; every other kind
    looks up its member account once, even when it changes no balance
    (``convert-complete``, ``hold-capture``), so a node passes that account (its lots
    need not be loaded).
    """
    kind = model.kind_of(type(entry))
    at = model.moment(entry.at)
    if kind in PROGRAM_KINDS:
        if entry.account != PROGRAM_ACCOUNT:
            raise VerificationError(f"entry {entry.id}: a {kind} entry has account '-'")
        _PROGRAM_CHECKS[type(entry)](entry)
        return
    if entry.account == PROGRAM_ACCOUNT:
        raise VerificationError(f"entry {entry.id}: a {kind} entry needs a member account")
    account = lookup(entry.account)
    _MEMBER_EFFECTS[type(entry)](entry, account, at, lookup)


def _enroll(entry: Any, account: Account, at: datetime, lookup: AccountLookup) -> None:
    return None


def _earn(entry: model.Earn, account: Account, at: datetime, lookup: AccountLookup) -> None:
    spec = entry.lot
    _open_lot(
        account,
        spec.id,
        entry.amount,
        at,
        model.moment(spec.available_at),
        model.moment(spec.expires_at),
        qualifying=spec.qualifying,
        ref=earn_ref(entry.reason),
    )


def _spend(
    entry: model.Redeem | model.Transfer, account: Account, at: datetime, lookup: AccountLookup
) -> None:
    for item in entry.taken:
        source = account.lots.get(item.lot)
        if source is not None and not source.spendable(at):
            raise VerificationError(f"entry {entry.id}: lot {item.lot} is not spendable")
    total = _debit(entry, entry.taken, account, at, expiring=False)
    if total != entry.amount:
        raise VerificationError(f"entry {entry.id}: lots give {total}, amount says {entry.amount}")
    if isinstance(entry, model.Transfer):
        target = lookup(entry.to)
        if target.id == account.id:
            raise VerificationError(f"entry {entry.id}: transfer to the same account")
        for item in entry.taken:
            _open_lot(target, item.new_lot, item.amount, at, at, model.moment(item.expires_at))


def _expire(entry: model.Expire, account: Account, at: datetime, lookup: AccountLookup) -> None:
    if _debit(entry, entry.taken, account, at, expiring=True) != entry.amount:
        raise VerificationError(f"entry {entry.id}: expired lots do not sum to amount")


def _claw_back(entry: model.Reverse, account: Account, at: datetime, lookup: AccountLookup) -> None:
    earned = account.lots.get(entry.lot)
    if earned is None or earned.reversed:
        raise VerificationError(f"entry {entry.id}: lot {entry.lot} missing or already reversed")
    total = _debit(entry, entry.taken, account, at, expiring=False)
    if total != entry.amount or total + entry.written_off != earned.amount:
        raise VerificationError(f"entry {entry.id}: clawback does not add up")
    earned.reversed = True
    earned.qualifying = 0
    account.changed.add(entry.lot)


def _adjust(entry: model.Adjust, account: Account, at: datetime, lookup: AccountLookup) -> None:
    amount = entry.amount
    if amount > 0:
        if (
            isinstance(entry.lot, model.UnsetType)
            or isinstance(entry.expires_at, model.UnsetType)
            or not isinstance(entry.taken, model.UnsetType)
        ):
            raise VerificationError(
                f"entry {entry.id}: a credit adjustment has lot and expires_at, no taken"
            )
        _open_lot(account, entry.lot, amount, at, at, model.moment(entry.expires_at))
    elif amount < 0:
        if isinstance(entry.taken, model.UnsetType) or not (
            isinstance(entry.lot, model.UnsetType) and isinstance(entry.expires_at, model.UnsetType)
        ):
            raise VerificationError(
                f"entry {entry.id}: a debit adjustment has taken, no lot or expires_at"
            )
        if _debit(entry, entry.taken, account, at, expiring=False) != -amount:
            raise VerificationError(f"entry {entry.id}: adjustment lots do not add up")
    else:
        raise VerificationError(f"entry {entry.id}: adjustment of zero")


def _debit_spendable(entry: model.ConvertOut | model.Hold, account: Account, at: datetime) -> None:
    """Debit ``taken`` from spendable lots only; each item names its lot's expiry time."""
    for item in entry.taken:
        source = account.lots.get(item.lot)
        if source is None:
            continue  # _debit names the unknown lot
        if not source.spendable(at):
            raise VerificationError(f"entry {entry.id}: lot {item.lot} is not spendable")
        if model.moment(item.expires_at) != source.expires_at:
            raise VerificationError(f"entry {entry.id}: wrong expiry time for lot {item.lot}")
    total = _debit(entry, entry.taken, account, at, expiring=False)
    if total != entry.amount:
        raise VerificationError(f"entry {entry.id}: lots give {total}, amount says {entry.amount}")


def _restore(
    entry: model.ConvertRefund | model.HoldRelease, account: Account, at: datetime
) -> None:
    """Reopen ``restored`` points as lots ``<entry id>:<n>``, spendable now, old expiry."""
    lots: list[tuple[str, int, datetime]] = []
    for n, item in enumerate(entry.restored):
        if item.lot != f"{entry.id}:{n}" or item.lot in account.lots:
            raise VerificationError(f"entry {entry.id}: restored lot {n} must be {entry.id}:{n}")
        lots.append((item.lot, item.amount, model.moment(item.expires_at)))
    total = sum(part for _, part, _ in lots)
    if total != entry.amount:
        raise VerificationError(
            f"entry {entry.id}: restored lots give {total}, amount {entry.amount}"
        )
    for lot_id, part, expires_at in lots:
        _open_lot(account, lot_id, part, at, at, expires_at)


def _send(entry: model.ConvertOut, account: Account, at: datetime, lookup: AccountLookup) -> None:
    conversion = entry.conversion
    if conversion.fee + conversion.net != entry.amount:
        raise VerificationError(
            f"entry {entry.id}: fee {conversion.fee} + net {conversion.net} "
            f"!= amount {entry.amount}"
        )
    _debit_spendable(entry, account, at)


def _hold(entry: model.Hold, account: Account, at: datetime, lookup: AccountLookup) -> None:
    if model.moment(entry.hold.expires_at) <= at:
        raise VerificationError(f"entry {entry.id}: hold expires before it starts")
    _debit_spendable(entry, account, at)


def _credit(entry: model.ConvertIn, account: Account, at: datetime, lookup: AccountLookup) -> None:
    spec = entry.lot
    _open_lot(
        account,
        spec.id,
        entry.amount,
        at,
        model.moment(spec.available_at),
        model.moment(spec.expires_at),
    )


def _return(
    entry: model.ConvertRefund | model.HoldRelease,
    account: Account,
    at: datetime,
    lookup: AccountLookup,
) -> None:
    _restore(entry, account, at)


def _close(entry: Any, account: Account, at: datetime, lookup: AccountLookup) -> None:
    """convert-complete, hold-capture: the typed entry is the whole check."""
    return None


def _receipt(entry: model.RedemptionReceipt) -> None:
    model.moment(entry.captured_at)


def _record(entry: Any) -> None:
    """agreement, statement, convert-reject: the typed entry is the whole check (their
    signatures are the cross-chain and settlement audits' to verify)."""
    return None


def _rotation(entry: model.KeyRotationRecord) -> None:
    """key-rotation: the rotation object is well formed (``ledger.rotation``); whether the
    key in force signed it is the chain's rule (``KeySchedule``), which replay cannot see."""
    try:
        KeyRotation.from_json(entry.program, model.to_json(entry.rotation))
    except InvalidArgument as exc:
        raise VerificationError(f"entry {entry.id}: {exc}") from None


_MEMBER_EFFECTS: dict[type[model.Entry], Callable[[Any, Account, datetime, AccountLookup], None]]
_MEMBER_EFFECTS = {
    model.Enroll: _enroll,
    model.Earn: _earn,
    model.Redeem: _spend,
    model.Transfer: _spend,
    model.Expire: _expire,
    model.Reverse: _claw_back,
    model.Revoke: _claw_back,
    model.Adjust: _adjust,
    model.ConvertOut: _send,
    model.ConvertIn: _credit,
    model.ConvertComplete: _close,
    model.ConvertRefund: _return,
    model.Hold: _hold,
    model.HoldCapture: _close,
    model.HoldRelease: _return,
}
"""What each member kind does to its account (``kinds.Kind.effect`` says it in words)."""
_PROGRAM_CHECKS: dict[type[model.Entry], Callable[[Any], None]] = {
    model.ConvertReject: _record,
    model.RedemptionReceipt: _receipt,
    model.AgreementRecord: _record,
    model.StatementRecord: _record,
    model.KeyRotationRecord: _rotation,
}
"""What replay checks of each program kind beyond its type."""


def earn_ref(reason: JsonValue) -> str | None:
    """The ``lot_ref`` an earn with this ``reason`` claims (None: it names no reference)."""
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
