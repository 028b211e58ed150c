"""Replay a program's entries, in log order, into accounts and lots.

Any holder of a chain can run this to recompute every balance and the program's
outstanding supply; the node's database must always equal it. Points a member sent to a
partner (``convert-out``) stay in flight until the partner's receipt (``convert-complete``)
or signed rejection (``convert-refund``); points held for a partner's redemption stay in
the hold until it is captured or released. So, at any point of the chain:
earned + converted in + refunded + released - spent - expired - ... - converted out - held
= ``supply()``, and ``supply() + in_flight_total() + held_for_partners()`` changes only
by earning, spending, expiry, adjustment, conversions in and captures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

from coalition.errors import VerificationError
from coalition.ledger.canonical import JsonObject
from coalition.points import model
from coalition.points.kinds import FAST_KINDS
from coalition.points.replay_fast import apply_fast
from coalition.points.state import PROGRAM_ACCOUNT, Account, apply_typed

_Settle: TypeAlias = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Points that left an account for a partner and may come back: what came from where."""

    account: str
    amount: int
    parts: tuple[tuple[int, str], ...]  # (amount, expires_at) per lot taken
    partner: str
    expires_at: datetime | None = None  # holds only


@dataclass
class Replay:
    """Accounts rebuilt from entries, with totals per entry kind for the audit report.

    ``in_flight`` maps each unsettled conversion id to its points, ``holds`` each open
    hold id to its points; ``credited`` and ``rejected`` are the conversion ids this
    program credited (``convert-in``) or refused for good (``convert-reject``).
    """

    accounts: dict[str, Account] = field(default_factory=dict)
    refs: set[str] = field(default_factory=set)
    points_by_kind: Counter[str] = field(default_factory=Counter)
    entries: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    holds: dict[str, int] = field(default_factory=dict)
    credited: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    captured: int = 0
    _outgoing: dict[str, Outgoing] = field(default_factory=dict, repr=False)
    _held: dict[str, Outgoing] = field(default_factory=dict, repr=False)

    def _lookup(self, account: str) -> Account:
        found = self.accounts.get(account)
        if found is None:
            raise VerificationError(f"account {account[:12]}... used before it was enrolled")
        return found

    def apply(self, entry: JsonObject) -> None:
        """Apply one entry; VerificationError names the entry when it does not fit.

        Cross-entry rules (each conversion settled once, for exactly what left; each hold
        captured or released once) are checked before anything changes.

        The common member kinds first try ``replay_fast.apply_fast``, which applies an entry only
        when it is sure the reference path below would accept it, with the same result;
        on any doubt it changes nothing and the reference path runs (and names the fault).
        """
        kind = entry.get("kind")
        if not (type(kind) is str and kind in FAST_KINDS and apply_fast(self, entry)):
            self.apply_reference(entry)

    def apply_reference(self, entry: JsonObject) -> None:
        """``apply`` without the fast path: the one definition of what an entry does."""
        try:
            typed = model.parse_entry(entry)
        except VerificationError as exc:
            raise VerificationError(_named(exc, entry.get("id"))) from exc
        self.apply_typed(typed)

    def apply_typed(self, entry: model.Entry) -> None:
        """``apply_reference`` of an entry already parsed (``model.parse_entry``)."""
        if isinstance(entry, model.Enroll):
            if entry.account == PROGRAM_ACCOUNT:
                raise VerificationError(f"entry {entry.id}: enroll without a member account")
            if entry.account in self.accounts:
                raise VerificationError(f"entry {entry.id}: account enrolled twice")
            self.accounts[entry.account] = Account(entry.account)
        touched: list[Account] = []

        def lookup(account_id: str) -> Account:
            found = self._lookup(account_id)
            touched.append(found)
            return found

        try:
            settle = self._check_coalition(entry)
            apply_typed(entry, lookup)
        except VerificationError as exc:
            raise VerificationError(_named(exc, entry.id)) from exc
        finally:
            for changed in touched:  # only the accounts this entry touched: O(1) per entry
                changed.changed.clear()
        settle()
        if isinstance(entry, model.Earn):
            lot = self._lookup(entry.account).lots[entry.lot.id]
            if lot.ref is not None:
                if lot.ref in self.refs:
                    raise VerificationError(f"entry {entry.id}: reference {lot.ref} earned twice")
                self.refs.add(lot.ref)
        amount = getattr(entry, "amount", None)
        if isinstance(amount, int):
            self.points_by_kind[model.kind_of(type(entry))] += amount
        self.entries += 1

    def _check_coalition(self, entry: model.Entry) -> _Settle:
        """Check a coalition entry against the conversions and holds seen so far.

        Returns what to record once ``apply_entry`` accepted the entry, so a refused entry
        changes nothing here either.
        """
        if isinstance(entry, model.ConvertOut | model.Hold):
            return self._check_outgoing(entry)
        if isinstance(entry, model.ConvertComplete | model.ConvertRefund):
            return self._check_conversion_end(entry)
        if isinstance(entry, model.HoldCapture | model.HoldRelease):
            return self._check_hold_end(entry)
        if isinstance(entry, model.ConvertIn | model.ConvertReject):
            conversion_id = entry.conversion.id
            if conversion_id in self.credited:
                raise VerificationError(f"conversion {conversion_id} was already credited")
            if conversion_id in self.rejected:
                raise VerificationError(f"conversion {conversion_id} was already rejected")
            done = self.credited if isinstance(entry, model.ConvertIn) else self.rejected
            return lambda: done.add(conversion_id)
        return _nothing

    def _check_outgoing(self, entry: model.ConvertOut | model.Hold) -> _Settle:
        if isinstance(entry, model.ConvertOut):
            what, key, partner, expires = (
                "conversion",
                entry.conversion.id,
                entry.conversion.to_program,
                None,
            )
            seen, totals = self._outgoing, self.in_flight
        else:
            what, key, partner = "hold", entry.hold.id, entry.hold.partner
            expires = model.moment(entry.hold.expires_at)
            seen, totals = self._held, self.holds
        if key in seen:
            raise VerificationError(f"{what} {key} started twice")
        parts = tuple((item.amount, item.expires_at) for item in entry.taken)
        out = Outgoing(entry.account, entry.amount, parts, partner, expires)
        amount = entry.amount

        def settle() -> None:
            seen[key] = out
            totals[key] = amount

        return settle

    def _check_conversion_end(self, entry: model.ConvertComplete | model.ConvertRefund) -> _Settle:
        kind = model.kind_of(type(entry))
        conversion_id = entry.conversion.id
        if conversion_id not in self._outgoing:
            raise VerificationError(f"{kind} of unknown conversion {conversion_id}")
        if conversion_id not in self.in_flight:  # started, so settled already
            raise VerificationError(f"conversion {conversion_id} was already settled")
        out = self._outgoing[conversion_id]
        if entry.account != out.account:
            raise VerificationError(f"{kind} of conversion {conversion_id} on another account")
        if isinstance(entry, model.ConvertRefund):
            _check_restored(entry, out, f"refund of conversion {conversion_id}")

        def settle() -> None:
            del self.in_flight[conversion_id]

        return settle

    def _check_hold_end(self, entry: model.HoldCapture | model.HoldRelease) -> _Settle:
        kind = model.kind_of(type(entry))
        hold_id = entry.hold.id
        if hold_id not in self._held:
            raise VerificationError(f"{kind} of unknown hold {hold_id}")
        if hold_id not in self.holds:  # held, so captured or released already
            raise VerificationError(f"hold {hold_id} was already captured or released")
        held = self._held[hold_id]
        if entry.account != held.account or entry.hold.partner != held.partner:
            raise VerificationError(f"{kind} of hold {hold_id} names another account or partner")
        if entry.amount != held.amount:
            raise VerificationError(
                f"{kind} of hold {hold_id}: amount {entry.amount}, held {held.amount}"
            )
        at = model.moment(entry.at)
        expires_at = held.expires_at or at  # every hold has one (apply_entry checks)
        if isinstance(entry, model.HoldCapture) and at >= expires_at:
            raise VerificationError(f"hold {hold_id} captured after it expired")
        if isinstance(entry, model.HoldRelease):
            if entry.hold.why == "expired" and at < expires_at:
                raise VerificationError(f"hold {hold_id} released as expired before its time")
            _check_restored(entry, held, f"release of hold {hold_id}")
        captured = isinstance(entry, model.HoldCapture)

        def settle() -> None:
            del self.holds[hold_id]
            if captured:
                self.captured += held.amount

        return settle

    def supply(self) -> int:
        """Points outstanding: everything members hold, spendable or not."""
        return sum(account.held() for account in self.accounts.values())

    def in_flight_total(self) -> int:
        """Points converted out and not yet completed or refunded."""
        return sum(self.in_flight.values())

    def held_for_partners(self) -> int:
        """Points held for partners' redemptions, not yet captured or released."""
        return sum(self.holds.values())


def _nothing() -> None:
    return None


def _named(exc: VerificationError, entry_id: object) -> str:
    message = str(exc)
    return message if message.startswith("entry ") else f"entry {entry_id}: {message}"


def _check_restored(
    entry: model.ConvertRefund | model.HoldRelease, out: Outgoing, what: str
) -> None:
    """Points coming back must be exactly those that left, with their expiry times."""
    if entry.amount != out.amount:
        raise VerificationError(f"{what}: amount {entry.amount}, sent {out.amount}")
    parts = tuple((item.amount, item.expires_at) for item in entry.restored)
    if parts != out.parts:
        raise VerificationError(f"{what}: restored lots differ from the lots taken")
