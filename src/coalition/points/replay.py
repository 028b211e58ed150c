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
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import parse_time
from coalition.points.replay_fast import FAST_KINDS, apply_fast
from coalition.points.state import PROGRAM_ACCOUNT, Account, apply_entry

_Settle: TypeAlias = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Points that left an account for a partner and may come back: what came from where."""

    account: str
    amount: int
    parts: tuple[tuple[JsonValue, JsonValue], ...]  # (amount, expires_at) per lot taken
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
        entry_id = entry.get("id")
        account = entry.get("account")
        if entry.get("kind") == "enroll":
            if not isinstance(account, str) or account == PROGRAM_ACCOUNT:
                raise VerificationError(f"entry {entry_id}: enroll without a member account")
            if account in self.accounts:
                raise VerificationError(f"entry {entry_id}: account enrolled twice")
            self.accounts[account] = Account(account)
        touched: list[Account] = []

        def lookup(account_id: str) -> Account:
            found = self._lookup(account_id)
            touched.append(found)
            return found

        try:
            settle = self._check_coalition(entry)
            apply_entry(entry, lookup)
        except VerificationError as exc:
            message = str(exc)
            raise VerificationError(
                message if message.startswith("entry ") else f"entry {entry_id}: {message}"
            ) from exc
        finally:
            for changed in touched:  # only the accounts this entry touched: O(1) per entry
                changed.changed.clear()
        settle()
        spec = entry.get("lot")
        if entry.get("kind") == "earn" and isinstance(spec, dict):
            lot = self._lookup(str(account)).lots[str(spec.get("id"))]
            if lot.ref is not None:
                if lot.ref in self.refs:
                    raise VerificationError(f"entry {entry_id}: reference {lot.ref} earned twice")
                self.refs.add(lot.ref)
        amount = entry.get("amount")
        if isinstance(amount, int):
            self.points_by_kind[str(entry.get("kind"))] += amount
        self.entries += 1

    def _check_coalition(self, entry: JsonObject) -> _Settle:
        """Check a coalition entry against the conversions and holds seen so far.

        Returns what to record once ``apply_entry`` accepted the entry, so a refused entry
        changes nothing here either.
        """
        kind = entry.get("kind")
        if kind in ("convert-out", "hold"):
            return self._check_outgoing(entry, str(kind))
        if kind in ("convert-complete", "convert-refund"):
            return self._check_conversion_end(entry, str(kind))
        if kind in ("hold-capture", "hold-release"):
            return self._check_hold_end(entry, str(kind))
        if kind in ("convert-in", "convert-reject"):
            conversion_id = _field(_field(entry, "conversion"), "id")
            if not isinstance(conversion_id, str):
                raise VerificationError("conversion without an id")
            if conversion_id in self.credited:
                raise VerificationError(f"conversion {conversion_id} was already credited")
            if conversion_id in self.rejected:
                raise VerificationError(f"conversion {conversion_id} was already rejected")
            done = self.credited if kind == "convert-in" else self.rejected
            return lambda: done.add(conversion_id)
        return _nothing

    def _check_outgoing(self, entry: JsonObject, kind: str) -> _Settle:
        what = "conversion" if kind == "convert-out" else "hold"
        spec = _field(entry, what)
        key = _field(spec, "id")
        partner = _field(spec, "to_program" if kind == "convert-out" else "partner")
        amount = entry.get("amount")
        taken = entry.get("taken")
        if not isinstance(key, str) or not isinstance(partner, str):
            raise VerificationError(f"{what} without an id or partner")
        if not isinstance(amount, int) or not isinstance(taken, list):
            raise VerificationError(f"{what} {key} without amount or taken")
        seen = self._outgoing if kind == "convert-out" else self._held
        if key in seen:
            raise VerificationError(f"{what} {key} started twice")
        parts = tuple((_field(item, "amount"), _field(item, "expires_at")) for item in taken)
        expires = _field(spec, "expires_at") if kind == "hold" else None
        out = Outgoing(
            str(entry.get("account")),
            amount,
            parts,
            partner,
            parse_time(expires) if isinstance(expires, str) else None,
        )
        totals = self.in_flight if kind == "convert-out" else self.holds

        def settle() -> None:
            seen[key] = out
            totals[key] = amount

        return settle

    def _check_conversion_end(self, entry: JsonObject, kind: str) -> _Settle:
        conversion_id = _field(_field(entry, "conversion"), "id")
        if not isinstance(conversion_id, str) or conversion_id not in self._outgoing:
            raise VerificationError(f"{kind} of unknown conversion {conversion_id}")
        if conversion_id not in self.in_flight:  # started, so settled already
            raise VerificationError(f"conversion {conversion_id} was already settled")
        out = self._outgoing[conversion_id]
        if entry.get("account") != out.account:
            raise VerificationError(f"{kind} of conversion {conversion_id} on another account")
        if kind == "convert-refund":
            _check_restored(entry, out, f"refund of conversion {conversion_id}")

        def settle() -> None:
            del self.in_flight[conversion_id]

        return settle

    def _check_hold_end(self, entry: JsonObject, kind: str) -> _Settle:
        spec = _field(entry, "hold")
        hold_id = _field(spec, "id")
        if not isinstance(hold_id, str) or hold_id not in self._held:
            raise VerificationError(f"{kind} of unknown hold {hold_id}")
        if hold_id not in self.holds:  # held, so captured or released already
            raise VerificationError(f"hold {hold_id} was already captured or released")
        held = self._held[hold_id]
        if entry.get("account") != held.account or _field(spec, "partner") != held.partner:
            raise VerificationError(f"{kind} of hold {hold_id} names another account or partner")
        if entry.get("amount") != held.amount:
            raise VerificationError(
                f"{kind} of hold {hold_id}: amount {entry.get('amount')}, held {held.amount}"
            )
        at = parse_time(str(entry.get("at")))
        expires_at = held.expires_at or at  # every hold has one (apply_entry checks)
        if kind == "hold-capture" and at >= expires_at:
            raise VerificationError(f"hold {hold_id} captured after it expired")
        if kind == "hold-release":
            if _field(spec, "why") == "expired" and at < expires_at:
                raise VerificationError(f"hold {hold_id} released as expired before its time")
            _check_restored(entry, held, f"release of hold {hold_id}")

        def settle() -> None:
            del self.holds[hold_id]
            if kind == "hold-capture":
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


def _field(obj: JsonValue, key: str) -> JsonValue:
    if not isinstance(obj, dict):
        raise VerificationError(f"expected an object holding {key!r}")
    return obj.get(key)


def _check_restored(entry: JsonObject, out: Outgoing, what: str) -> None:
    """Points coming back must be exactly those that left, with their expiry times."""
    if entry.get("amount") != out.amount:
        raise VerificationError(f"{what}: amount {entry.get('amount')}, sent {out.amount}")
    restored = entry.get("restored")
    if not isinstance(restored, list):
        raise VerificationError(f"{what}: field 'restored' must be a list")
    parts = tuple((_field(item, "amount"), _field(item, "expires_at")) for item in restored)
    if parts != out.parts:
        raise VerificationError(f"{what}: restored lots differ from the lots taken")
