"""What the application service returns: plain frozen records, independent of any wire."""

from __future__ import annotations

from dataclasses import dataclass, field

from coalition.ledger.canonical import JsonObject


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The entry a write produced; ``replayed`` when an idempotency key was seen before."""

    entry: JsonObject
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class PurchaseRow:
    """One purchase of a bulk earn (a partner's batch or a CSV line)."""

    member_id: str
    reference: str
    spend_minor: int
    category: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RowError:
    """A bulk row that was refused, and why; the other rows are unaffected."""

    row: int
    idempotency_key: str
    message: str


@dataclass(frozen=True, slots=True)
class BulkResult:
    accepted: int = 0
    replayed: int = 0
    rejected: list[RowError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExpiryResult:
    entries: int
    points: int


@dataclass(frozen=True, slots=True)
class BalanceView:
    member_id: str
    account: str
    spendable: int
    pending: int
    held: int
    tier: str
    qualifying: int


@dataclass(frozen=True, slots=True)
class LotView:
    id: str
    amount: int
    remaining: int
    qualifying: int
    earned_at: str
    available_at: str
    expires_at: str
    ref: str | None
    reversed: bool


@dataclass(frozen=True, slots=True)
class EntryView:
    """An entry body and its position in the log (None until the sealer has sealed it)."""

    entry: JsonObject
    log_index: int | None
