"""Replay a program's entries, in log order, into accounts and lots.

Any holder of a chain can run this to recompute every balance and the program's
outstanding supply; the node's database must always equal it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from coalition.errors import VerificationError
from coalition.ledger.canonical import JsonObject
from coalition.points.state import Account, apply_entry


@dataclass
class Replay:
    """Accounts rebuilt from entries, with totals per entry kind for the audit report."""

    accounts: dict[str, Account] = field(default_factory=dict)
    refs: set[str] = field(default_factory=set)
    points_by_kind: Counter[str] = field(default_factory=Counter)
    entries: int = 0

    def _lookup(self, account: str) -> Account:
        found = self.accounts.get(account)
        if found is None:
            raise VerificationError(f"account {account[:12]}... used before it was enrolled")
        return found

    def apply(self, entry: JsonObject) -> None:
        """Apply one entry; VerificationError names the entry when it does not fit."""
        entry_id = entry.get("id")
        account = entry.get("account")
        if entry.get("kind") == "enroll":
            if not isinstance(account, str) or account in self.accounts:
                raise VerificationError(f"entry {entry_id}: account enrolled twice or missing")
            self.accounts[account] = Account(account)
        touched: list[Account] = []

        def lookup(account_id: str) -> Account:
            found = self._lookup(account_id)
            touched.append(found)
            return found

        try:
            apply_entry(entry, lookup)
        except VerificationError as exc:
            message = str(exc)
            raise VerificationError(
                message if message.startswith("entry ") else f"entry {entry_id}: {message}"
            ) from exc
        finally:
            for changed in touched:  # only the accounts this entry touched: O(1) per entry
                changed.changed.clear()
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

    def supply(self) -> int:
        """Points outstanding: everything members hold, spendable or not."""
        return sum(account.held() for account in self.accounts.values())
