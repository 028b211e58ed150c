"""What partners owe each other, from one chain alone, and multilateral netting.

Each partner computes its obligations from its own chain (docs/coalition.md,
"Settlement"), so two honest partners derive the same statement independently: a
completed ``convert-out`` on A (dated by its ``at``) is the ``convert-in`` on B (dated by
``out_at``), and a ``hold-capture`` on A (``at``) is the ``redemption-receipt`` on B
(``captured_at``). Netting turns pairwise amounts into positions and the fewest
payments: exact (a partition into the most zero-sum groups) for up to 16 parties.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import check_program_id, format_time
from coalition.points import model
from coalition.points.accounts import validate_reference
from coalition.points.kinds import OBLIGATION_KINDS

STATEMENT_TYPE = "coalition.statement.v1"
EXACT_NETTING_LIMIT = 16


@dataclass(frozen=True, slots=True)
class Owed:
    """An amount in minor units and the number of conversions and captures behind it."""

    minor: int
    items: int


def _typed(entries: Iterable[JsonObject]) -> list[model.Entry]:
    """The entries of the kinds settlement reads (``kinds.OBLIGATION_KINDS``), parsed."""
    return [model.parse_entry(e) for e in entries if e.get("kind") in OBLIGATION_KINDS]


def _settled(typed: list[model.Entry]) -> tuple[set[str], set[str]]:
    """The conversion ids completed and refunded among ``typed``."""
    completed: set[str] = set()
    refunded: set[str] = set()
    for entry in typed:
        if isinstance(entry, model.ConvertComplete):
            completed.add(entry.conversion.id)
        elif isinstance(entry, model.ConvertRefund):
            refunded.add(entry.conversion.id)
    return completed, refunded


def _check_period(start: datetime, end: datetime) -> None:
    if start >= end:
        raise InvalidArgument(f"a period starts before it ends: {start} >= {end}")


def priced(program: str, entry: model.Entry) -> tuple[str, str, datetime, int, str] | None:
    """``(debtor, creditor, date, value_minor, currency)`` of an obligation entry of
    ``program``'s chain (``Settlement.OWED_BY_PROGRAM`` or ``OWED_TO_PROGRAM``), None for
    every other kind. Both partners date one obligation alike: a convert-out by its
    ``at``, its convert-in by ``out_at``; a hold-capture by its ``at``, its
    redemption-receipt by ``captured_at``."""
    if isinstance(entry, model.ConvertOut):
        c = entry.conversion
        return program, c.to_program, model.moment(entry.at), c.value_minor, c.currency
    if isinstance(entry, model.ConvertIn):
        i = entry.conversion
        return i.from_program, program, model.moment(i.out_at), i.value_minor, i.currency
    if isinstance(entry, model.HoldCapture):
        at = model.moment(entry.at)
        return program, entry.hold.partner, at, entry.value_minor, entry.currency
    if isinstance(entry, model.RedemptionReceipt):
        at = model.moment(entry.captured_at)
        return entry.hold.partner, program, at, entry.value_minor, entry.currency
    return None


def obligations(
    program: str, entries: Iterable[JsonObject], start: datetime, end: datetime
) -> dict[tuple[str, str], Owed]:
    """``(debtor, creditor) -> Owed`` for the period ``[start, end)`` from ``program``'s chain.

    Counts a ``convert-out`` only once its ``convert-complete`` is among ``entries`` (so
    pass the chain up to now, not just the period). FailedPrecondition if one pair's
    obligations are in two currencies (settle those apart); VerificationError for an
    entry of a kind read here that does not parse.
    """
    _check_period(start, end)
    typed = _typed(entries)
    completed, _ = _settled(typed)
    owed: dict[tuple[str, str], Owed] = {}
    currencies: dict[tuple[str, str], str] = {}
    for entry in typed:
        if isinstance(entry, model.ConvertOut) and entry.conversion.id not in completed:
            continue
        found = priced(program, entry)
        if found is None:
            continue
        debtor, creditor, at, value_minor, currency = found
        if not start <= at < end:
            continue
        pair = (debtor, creditor)
        if currencies.setdefault(pair, currency) != currency:
            raise FailedPrecondition(
                f"{debtor} owes {creditor} in {currencies[pair]} and {currency} in one period"
            )
        before = owed.get(pair, Owed(0, 0))
        owed[pair] = Owed(before.minor + value_minor, before.items + 1)
    return owed


def pending_conversions(entries: Iterable[JsonObject], start: datetime, end: datetime) -> list[str]:
    """Conversion ids sent in ``[start, end)`` and neither completed nor refunded yet:
    a statement for the period would miss them, so a proposer waits or says so."""
    _check_period(start, end)
    typed = _typed(entries)
    completed, refunded = _settled(typed)
    pending: list[str] = []
    for entry in typed:
        if not isinstance(entry, model.ConvertOut) or not start <= model.moment(entry.at) < end:
            continue
        conversion_id = entry.conversion.id
        if conversion_id not in completed and conversion_id not in refunded:
            pending.append(conversion_id)
    return pending


def statement_document(
    statement_id: str,
    parties: tuple[str, str],
    start: datetime,
    end: datetime,
    currency: str,
    owed: Mapping[tuple[str, str], Owed],
) -> JsonObject:
    """The statement both parties sign: both directions, zero included; other pairs in
    ``owed`` are ignored, so ``obligations`` of a chain can be passed as they are."""
    validate_reference(statement_id, "statement id")
    a, b = (check_program_id(party, "party") for party in parties)
    if not a < b:
        raise InvalidArgument(f"statement parties must be two sorted programs, not {parties}")
    _check_period(start, end)
    amounts: dict[str, JsonValue] = {}
    items: dict[str, JsonValue] = {}
    for debtor, creditor in ((a, b), (b, a)):
        found = owed.get((debtor, creditor), Owed(0, 0))
        amounts[f"{debtor}->{creditor}"] = found.minor
        items[f"{debtor}->{creditor}"] = found.items
    return {
        "type": STATEMENT_TYPE,
        "id": statement_id,
        "parties": [a, b],
        "period": {"start": format_time(start), "end": format_time(end)},
        "currency": currency,
        "owed": amounts,
        "items": items,
    }


@dataclass(frozen=True, slots=True)
class Payment:
    payer: str
    payee: str
    amount: int


@dataclass(frozen=True, slots=True)
class Netting:
    """Net ``positions`` (positive: the party receives) and the payments that settle them."""

    positions: dict[str, int]
    payments: list[Payment]


def net(pairwise: Mapping[tuple[str, str], int]) -> Netting:
    """Net ``(debtor, creditor) -> amount`` into positions and the fewest payments.

    Fewest payments = parties with a non-zero position minus the largest number of
    groups whose positions sum to zero (each group settles with one payment fewer than
    its size); found exactly by a DP over subsets for up to 16 such parties, greedily
    (largest debtor pays largest creditor, at most n - 1 payments) above.
    """
    positions: dict[str, int] = {}
    for (debtor, creditor), amount in sorted(pairwise.items()):
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise InvalidArgument(f"{debtor} owes {creditor} {amount!r}: not a whole amount")
        if debtor == creditor:
            raise InvalidArgument(f"{debtor} cannot owe itself")
        positions[debtor] = positions.get(debtor, 0) - amount
        positions[creditor] = positions.get(creditor, 0) + amount
    positions = dict(sorted(positions.items()))
    active = [party for party, position in positions.items() if position != 0]
    if len(active) <= EXACT_NETTING_LIMIT:
        groups = _zero_sum_groups(active, [positions[party] for party in active])
    else:
        groups = [active]
    payments: list[Payment] = []
    for group in groups:
        payments += _settle_group({party: positions[party] for party in group})
    payments.sort(key=lambda p: (p.payer, p.payee))
    return Netting(positions, payments)


def _zero_sum_groups(parties: list[str], values: list[int]) -> list[list[str]]:
    """Partition ``parties`` (values summing to zero) into the most zero-sum groups."""
    n = len(parties)
    full = (1 << n) - 1
    sums = [0] * (full + 1)
    groups = [0] * (full + 1)  # most zero-sum groups an ordering of the subset can close
    for mask in range(1, full + 1):
        low = (mask & -mask).bit_length() - 1
        sums[mask] = sums[mask & (mask - 1)] + values[low]
        most = 0
        rest = mask
        while rest:
            bit = rest & -rest
            most = max(most, groups[mask ^ bit])
            rest ^= bit
        groups[mask] = most + (sums[mask] == 0)
    found: list[list[str]] = []
    mask, closed = full, full
    while mask:
        bit = 1
        while not (mask & bit and groups[mask ^ bit] + (sums[mask] == 0) == groups[mask]):
            bit <<= 1
        mask ^= bit
        if sums[mask] == 0:  # ``closed ^ mask`` is a whole zero-sum group
            found.append([parties[i] for i in range(n) if (closed ^ mask) >> i & 1])
            closed = mask
    return sorted(found)


def _settle_group(group: dict[str, int]) -> list[Payment]:
    """Largest debtor pays largest creditor until all are even: at most len - 1 payments."""
    left = dict(group)
    payments: list[Payment] = []
    while True:
        debtors = sorted((left[p], p) for p in left if left[p] < 0)
        creditors = sorted((-left[p], p) for p in left if left[p] > 0)
        if not debtors or not creditors:
            break
        (owes, payer), (due, payee) = debtors[0], creditors[0]
        amount = min(-owes, -due)  # both sorted most negative first
        payments.append(Payment(payer, payee, amount))
        left[payer] += amount
        left[payee] -= amount
    if any(left.values()):
        raise InvalidArgument("positions do not sum to zero")  # unreachable from ``net``
    return payments


def netting_csv(netting: Netting) -> str:
    """The payments as CSV: ``payer,payee,amount``, one row each, header first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["payer", "payee", "amount"])
    for payment in netting.payments:
        writer.writerow([payment.payer, payment.payee, payment.amount])
    return out.getvalue()


def netting_json(netting: Netting) -> JsonObject:
    """``{"positions": {party: amount}, "payments": [{payer, payee, amount}]}``."""
    positions: dict[str, JsonValue] = dict(netting.positions)
    payments: list[JsonValue] = [
        {"payer": p.payer, "payee": p.payee, "amount": p.amount} for p in netting.payments
    ]
    return {"positions": positions, "payments": payments}
