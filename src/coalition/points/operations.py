"""Decide what an operation does: each function checks a request against the rules and the
account's state and returns the entry body that records it, or raises.

Nothing here changes state; ``state.apply_entry`` does that from the returned body, so
the ledger entry is the single description of every change. Every entry says why it
happened in its ``reason`` (rule, event, reference, operator).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from coalition.errors import FailedPrecondition, InvalidArgument, NotFound
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import ENTRY_TYPE, format_time
from coalition.points.accounts import validate_reference
from coalition.points.rules import ProgramRules, check_positive
from coalition.points.state import Account, debit_order, split_debit

MAX_NOTE = 200


@dataclass(frozen=True, slots=True)
class EntryContext:
    """What the node supplies to every decision: program, fresh entry id and the time."""

    program: str
    entry_id: str
    at: datetime


def _entry(ctx: EntryContext, kind: str, account: str, **fields: object) -> JsonObject:
    body: JsonObject = {
        "type": ENTRY_TYPE,
        "program": ctx.program,
        "id": ctx.entry_id,
        "kind": kind,
        "at": format_time(ctx.at),
        "account": account,
    }
    body.update(fields)  # type: ignore[arg-type]
    return body


def validate_note(note: str) -> str:
    """A free-text note: printable, at most 200 characters, not blank."""
    if not isinstance(note, str) or not note.strip() or len(note) > MAX_NOTE:
        raise InvalidArgument(f"note must be 1-{MAX_NOTE} characters, got {note!r}")
    if not note.isprintable():
        raise InvalidArgument("note must not contain control characters")
    return note


def enroll(ctx: EntryContext, account: str) -> JsonObject:
    """Open an account on the ledger so later entries for it can be replayed."""
    return _entry(ctx, "enroll", account, reason={"event": "enroll"})


def earn_purchase(
    ctx: EntryContext,
    rules: ProgramRules,
    account: str,
    qualifying: int,
    reference: str,
    spend_minor: int,
    category: str,
    *,
    reference_used: bool,
) -> JsonObject:
    """Points for a purchase, pending for the holding period (the return window).

    ``qualifying`` is the member's tier-qualifying points over the rolling window before
    this purchase (``Account.qualifying_since(at - rules.tier_window)``); the caller
    supplies it so a store can sum it in the database instead of loading every lot.
    """
    validate_reference(reference, "purchase reference")
    if reference_used:
        raise FailedPrecondition(f"purchase {reference} has already earned points")
    tier = rules.tier_for(qualifying)
    quote = rules.quote_purchase(spend_minor, category, ctx.at, tier)
    if quote.points == 0:
        raise InvalidArgument(f"a spend of {spend_minor} minor units earns no points")
    return _entry(
        ctx,
        "earn",
        account,
        amount=quote.points,
        lot={
            "id": ctx.entry_id,
            "available_at": format_time(ctx.at + rules.holding_period),
            "expires_at": format_time(ctx.at + rules.expiry_period),
            "qualifying": quote.points,
        },
        reason={
            "rule": "purchase",
            "reference": reference,
            "spend": spend_minor,
            "currency": rules.currency,
            "category": category,
            "multipliers": [[name, text] for name, text in quote.multipliers],
            "capped": quote.capped,
        },
    )


def earn_reward(
    ctx: EntryContext,
    rules: ProgramRules,
    account: Account,
    event: str,
    reference: str,
    *,
    reference_used: bool,
) -> JsonObject:
    """Fixed points for a behaviour event, at most once per (event, reference)."""
    points = rules.reward_points(event)
    validate_reference(reference, "event reference")
    if reference_used:
        raise FailedPrecondition(f"reward {event} for {reference} was already given")
    return _entry(
        ctx,
        "earn",
        account.id,
        amount=points,
        lot={
            "id": ctx.entry_id,
            "available_at": format_time(ctx.at),
            "expires_at": format_time(ctx.at + rules.expiry_period),
            "qualifying": 0,
        },
        reason={"rule": "reward", "event": event, "reference": reference},
    )


def redeem(
    ctx: EntryContext, rules: ProgramRules, account: Account, amount: int, reference: str
) -> JsonObject:
    """Spend points, soonest-to-expire lots first; never more than the spendable balance."""
    check_positive(amount, "amount", rules.max_points_per_operation)
    validate_reference(reference, "redemption reference")
    lots = account.take(amount, ctx.at)
    return _entry(
        ctx,
        "redeem",
        account.id,
        amount=amount,
        taken=split_debit(lots, amount),
        reason={"rule": "redemption", "reference": reference},
    )


def transfer(
    ctx: EntryContext, rules: ProgramRules, source: Account, target: str, amount: int, note: str
) -> JsonObject:
    """Move spendable points to another member; each moved part keeps its expiry time."""
    check_positive(amount, "amount", rules.max_points_per_operation)
    validate_note(note)
    if target == source.id:
        raise InvalidArgument("cannot transfer points to the same member")
    lots = source.take(amount, ctx.at)
    taken = split_debit(lots, amount)
    expiry = {lot.id: lot.expires_at for lot in lots}
    for n, item in enumerate(taken):
        item["new_lot"] = f"{ctx.entry_id}:{n}"
        item["expires_at"] = format_time(expiry[str(item["lot"])])
    return _entry(
        ctx,
        "transfer",
        source.id,
        to=target,
        amount=amount,
        taken=taken,
        reason={"rule": "transfer", "note": note},
    )


def expire(ctx: EntryContext, account: Account) -> JsonObject | None:
    """Expire every lot of ``account`` whose time has come, or None if nothing is due."""
    due = account.expired_lots(ctx.at)
    if not due:
        return None
    taken: list[JsonObject] = [{"lot": lot.id, "amount": lot.remaining} for lot in due]
    return _entry(
        ctx,
        "expire",
        account.id,
        amount=sum(lot.remaining for lot in due),
        taken=taken,
        reason={"rule": "expiry"},
    )


def clawback(
    ctx: EntryContext, account: Account, lot_id: str, kind: str, reason: JsonObject
) -> JsonObject:
    """Take back the points of one earn (a refunded purchase, or a revocation).

    Policy: the earn's own lot gives back what it still holds; the rest comes from the
    member's other points, spendable or pending, soonest-to-expire first; whatever the
    member no longer has is written off and stated in the entry (``written_off``), so the
    balance never goes negative and every point is accounted for.
    """
    lot = account.lots.get(lot_id)
    if lot is None or lot.amount <= 0:
        raise NotFound(f"no earn {lot_id} in this account")
    if lot.reversed:
        raise FailedPrecondition(f"earn {lot_id} was already reversed")
    sources = [lot] if lot.remaining > 0 else []
    others = (
        other
        for other in sorted(account.lots.values(), key=debit_order)
        if other.id != lot.id and other.remaining > 0 and other.expires_at > ctx.at
    )
    sources.extend(others)
    held = sum(source.remaining for source in sources)
    recovered = min(lot.amount, held)
    return _entry(
        ctx,
        kind,
        account.id,
        lot=lot_id,
        amount=recovered,
        written_off=lot.amount - recovered,
        taken=split_debit(sources, recovered),
        reason=reason,
    )


def adjust(
    ctx: EntryContext,
    rules: ProgramRules,
    account: Account,
    amount: int,
    operator: str,
    note: str,
) -> JsonObject:
    """An operator's correction: credit (a new lot) or debit (oldest lots first)."""
    validate_reference(operator, "operator id")
    validate_note(note)
    if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0:
        raise InvalidArgument(f"adjustment must be a non-zero integer, got {amount!r}")
    check_positive(abs(amount), "adjustment", rules.max_points_per_operation)
    reason: JsonObject = {"rule": "adjustment", "operator": operator, "note": note}
    if amount > 0:
        return _entry(
            ctx,
            "adjust",
            account.id,
            amount=amount,
            lot=ctx.entry_id,
            expires_at=format_time(ctx.at + rules.expiry_period),
            reason=reason,
        )
    lots = account.take(-amount, ctx.at)
    return _entry(
        ctx, "adjust", account.id, amount=amount, taken=split_debit(lots, -amount), reason=reason
    )
