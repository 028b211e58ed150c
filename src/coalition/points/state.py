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
from coalition.ledger.entries import canonical_time, parse_time


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


def _time(text: str) -> datetime:
    """``parse_time``, with a fast path for the one spelling entries use (``format_time``'s);
    anything else, including an impossible date, takes ``parse_time`` and its errors."""
    return canonical_time(text) or parse_time(text)


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
    on an auditor's replay it means the chain is wrong. Program-level kinds
    (``PROGRAM_KINDS``, account ``"-"``) never call ``lookup``; every other kind looks up
    its member account once, even when it changes no balance (``convert-complete``,
    ``hold-capture``), so a node passes that account (its lots need not be loaded).
    """
    kind = entry.get("kind")
    entry_id = entry.get("id")
    at = _time(_str(entry, "at", entry_id))
    account_id = _str(entry, "account", entry_id)
    if kind in PROGRAM_KINDS:
        _apply_program_entry(entry, str(kind), account_id)
        return
    if account_id == PROGRAM_ACCOUNT:
        raise VerificationError(f"entry {entry_id}: a {kind} entry needs a member account")
    account = lookup(account_id)
    if kind == "enroll":
        return
    if kind in COALITION_MEMBER_KINDS:
        _apply_coalition_entry(entry, str(kind), account, at)
        return
    amount = _int(entry, "amount")
    if kind == "earn":
        spec = entry.get("lot")
        if not isinstance(spec, dict):
            raise VerificationError(f"entry {entry_id}: earn without a lot")
        _open_lot(
            account,
            _str(spec, "id", entry_id),
            amount,
            at,
            _time(_str(spec, "available_at", entry_id)),
            _time(_str(spec, "expires_at", entry_id)),
            qualifying=_int(spec, "qualifying"),
            ref=earn_ref(entry.get("reason")),
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
                    _time(_str(item, "expires_at", entry_id)),
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
                _time(_str(entry, "expires_at", entry_id)),
            )
        elif amount < 0:
            if _debit(entry, account, at, expiring=False) != -amount:
                raise VerificationError(f"entry {entry_id}: adjustment lots do not add up")
        else:
            raise VerificationError(f"entry {entry_id}: adjustment of zero")
        return
    raise VerificationError(f"entry {entry_id}: unknown kind {kind!r}")


PROGRAM_ACCOUNT = "-"
"""The ``account`` of program-level entries, which change no balance."""

PROGRAM_KINDS = frozenset({"agreement", "statement", "convert-reject", "redemption-receipt"})
"""Kinds recorded with ``account: "-"``: ``apply_entry`` never looks an account up for them."""

COALITION_MEMBER_KINDS = frozenset(
    {"convert-out", "convert-in", "convert-complete", "convert-refund"}
    | {"hold", "hold-capture", "hold-release"}
)


def _obj(obj: JsonObject, key: str, entry_id: JsonValue) -> JsonObject:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise VerificationError(f"entry {entry_id}: field {key!r} must be an object")
    return value


def _positive(obj: JsonObject, key: str, entry_id: JsonValue, *, zero: bool = False) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
        least = "a non-negative" if zero else "a positive"
        raise VerificationError(f"entry {entry_id}: field {key!r} must be {least} integer")
    return value


def _apply_program_entry(entry: JsonObject, kind: str, account_id: str) -> None:
    """Program-level entries: check their shape; no account, no balance."""
    entry_id = entry.get("id")
    if account_id != PROGRAM_ACCOUNT:
        raise VerificationError(f"entry {entry_id}: a {kind} entry has account '-'")
    if "amount" in entry:
        raise VerificationError(f"entry {entry_id}: a {kind} entry moves no points")
    if kind == "agreement":
        signed = _obj(entry, "agreement", entry_id)
        _obj(signed, "agreement", entry_id)
        _obj(signed, "signatures", entry_id)
    elif kind == "statement":
        signed = _obj(entry, "statement", entry_id)
        _obj(signed, "statement", entry_id)
        _obj(signed, "signatures", entry_id)
    elif kind == "convert-reject":
        conversion = _obj(entry, "conversion", entry_id)
        for key in ("id", "from_program", "reason"):
            _str(conversion, key, entry_id)
    else:  # redemption-receipt
        hold = _obj(entry, "hold", entry_id)
        _str(hold, "id", entry_id)
        _str(hold, "partner", entry_id)
        _positive(hold, "amount", entry_id)
        _positive(entry, "value_minor", entry_id, zero=True)
        _str(entry, "currency", entry_id)
        _time(_str(entry, "captured_at", entry_id))
        _obj(entry, "receipt", entry_id)


def _debit_spendable(entry: JsonObject, account: Account, at: datetime, amount: int) -> None:
    """Debit ``taken`` from spendable lots only; each item names its lot's expiry time."""
    entry_id = entry.get("id")
    for lot_id, _, item in _taken(entry):
        source = account.lots.get(lot_id)
        if source is None:
            continue  # _debit names the unknown lot
        if not source.spendable(at):
            raise VerificationError(f"entry {entry_id}: lot {lot_id} is not spendable")
        if _time(_str(item, "expires_at", entry_id)) != source.expires_at:
            raise VerificationError(f"entry {entry_id}: wrong expiry time for lot {lot_id}")
    total = _debit(entry, account, at, expiring=False)
    if total != amount:
        raise VerificationError(f"entry {entry_id}: lots give {total}, amount says {amount}")


def _restore(entry: JsonObject, account: Account, at: datetime, amount: int) -> None:
    """Reopen ``restored`` points as lots ``<entry id>:<n>``, spendable now, old expiry."""
    entry_id = entry.get("id")
    items = entry.get("restored")
    if not isinstance(items, list) or not items:
        raise VerificationError(f"entry {entry_id}: field 'restored' must be a non-empty list")
    lots: list[tuple[str, int, datetime]] = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise VerificationError(f"entry {entry_id}: bad 'restored' item")
        lot_id = _str(item, "lot", entry_id)
        if lot_id != f"{entry_id}:{n}" or lot_id in account.lots:
            raise VerificationError(f"entry {entry_id}: restored lot {n} must be {entry_id}:{n}")
        expires_at = _time(_str(item, "expires_at", entry_id))
        lots.append((lot_id, _positive(item, "amount", entry_id), expires_at))
    total = sum(part for _, part, _ in lots)
    if total != amount:
        raise VerificationError(f"entry {entry_id}: restored lots give {total}, amount {amount}")
    for lot_id, part, expires_at in lots:
        _open_lot(account, lot_id, part, at, at, expires_at)


def _apply_coalition_entry(entry: JsonObject, kind: str, account: Account, at: datetime) -> None:
    """Conversions and partner holds on a member's account (see docs/coalition.md)."""
    entry_id = entry.get("id")
    if kind == "convert-complete":
        _str(_obj(entry, "conversion", entry_id), "id", entry_id)
        receipt = _obj(entry, "receipt", entry_id)
        _str(receipt, "envelope", entry_id)
        _str(receipt, "signature", entry_id)
        return
    amount = _positive(entry, "amount", entry_id)
    if kind == "convert-out":
        conversion = _obj(entry, "conversion", entry_id)
        _str(conversion, "id", entry_id)
        _str(conversion, "to_program", entry_id)
        fee = _positive(conversion, "fee", entry_id, zero=True)
        net = _positive(conversion, "net", entry_id)
        _positive(conversion, "credit", entry_id)
        _positive(conversion, "value_minor", entry_id, zero=True)
        if fee + net != amount:
            raise VerificationError(f"entry {entry_id}: fee {fee} + net {net} != amount {amount}")
        _debit_spendable(entry, account, at, amount)
    elif kind == "hold":
        hold = _obj(entry, "hold", entry_id)
        for key in ("id", "partner", "reference"):
            _str(hold, key, entry_id)
        if _time(_str(hold, "expires_at", entry_id)) <= at:
            raise VerificationError(f"entry {entry_id}: hold expires before it starts")
        _debit_spendable(entry, account, at, amount)
    elif kind == "convert-in":
        conversion = _obj(entry, "conversion", entry_id)
        for key in ("id", "from_program", "out_entry", "out_hash"):
            _str(conversion, key, entry_id)
        spec = _obj(entry, "lot", entry_id)
        _open_lot(
            account,
            _str(spec, "id", entry_id),
            amount,
            at,
            _time(_str(spec, "available_at", entry_id)),
            _time(_str(spec, "expires_at", entry_id)),
        )
    elif kind == "convert-refund":
        _str(_obj(entry, "conversion", entry_id), "id", entry_id)
        _obj(entry, "rejection", entry_id)
        _restore(entry, account, at, amount)
    elif kind == "hold-capture":
        hold = _obj(entry, "hold", entry_id)
        _str(hold, "id", entry_id)
        _str(hold, "partner", entry_id)
        _positive(entry, "value_minor", entry_id, zero=True)
        _str(entry, "currency", entry_id)
    else:  # hold-release
        hold = _obj(entry, "hold", entry_id)
        _str(hold, "id", entry_id)
        _str(hold, "partner", entry_id)
        if hold.get("why") not in ("void", "expired"):
            raise VerificationError(f"entry {entry_id}: hold release why must be void or expired")
        _restore(entry, account, at, amount)


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
