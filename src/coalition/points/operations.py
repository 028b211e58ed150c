"""Decide what an operation does: each function checks a request against the rules and the
account's state and returns the entry body that records it, or raises.

Nothing here changes state; ``state.apply_typed`` does that from the returned body (a
``model.EntryBody``: the JSON and the typed entry it was checked as), so the ledger
entry is the single description of every change. Every entry says why it happened in
its ``reason`` (rule, event, reference, operator).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coalition.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VerificationError,
    quoted,
)
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.documents import split_signed
from coalition.ledger.entries import (
    check_envelope,
    check_program_id,
    entry_leaf_hash,
    format_time,
)
from coalition.ledger.rotation import ROTATION_KIND, KeyRotation
from coalition.points import model, rates
from coalition.points.accounts import validate_reference
from coalition.points.rates import (
    Agreement,
    Quote,
    agreement_from_document,
    check_currency,
)
from coalition.points.rules import ProgramRules, check_positive
from coalition.points.state import PROGRAM_ACCOUNT, Account, Lot, debit_order, split_debit
from coalition.points.statements import STATEMENT_FIELD

MAX_NOTE = 200


@dataclass(frozen=True, slots=True)
class EntryContext:
    """What the node supplies to every decision: program, fresh entry id and the time."""

    program: str
    entry_id: str
    at: datetime


def _entry(ctx: EntryContext, kind: str, account: str, **fields: object) -> model.EntryBody:
    """The body of a new entry, checked against its kind's struct (``model.build_entry``)."""
    at = format_time(ctx.at)
    return model.build_entry(kind, ctx.program, ctx.entry_id, at, account, fields)


def validate_note(note: str) -> str:
    """A free-text note: printable, at most 200 characters, not blank."""
    if not isinstance(note, str) or not note.strip() or len(note) > MAX_NOTE:
        raise InvalidArgument(f"note must be 1-{MAX_NOTE} characters, got {quoted(note)}")
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


# The coalition's entries (docs/coalition.md, "Entry kinds added by the coalition").

_HEX_HASH = re.compile(r"[0-9a-f]{64}")


def _check_id(value: str, what: str) -> str:
    """Conversion, hold and statement ids: references (1-128 of ``A-Z a-z 0-9 . _ : / # -``)."""
    return validate_reference(value, what)


def _taken_with_expiry(lots: list[Lot], amount: int) -> list[JsonObject]:
    """``split_debit``, each item also naming its lot's expiry so a refund can restore it."""
    taken = split_debit(lots, amount)
    expiry = {lot.id: lot.expires_at for lot in lots}
    for item in taken:
        item["expires_at"] = format_time(expiry[str(item["lot"])])
    return taken


def _restored(ctx: EntryContext, taken: list[model.TakenWithExpiry]) -> list[JsonValue]:
    """New lots ``<entry id>:<n>`` for the points ``taken`` took, with the same expiry."""
    return [
        {"lot": f"{ctx.entry_id}:{n}", "amount": item.amount, "expires_at": item.expires_at}
        for n, item in enumerate(taken)
    ]


def _stored(body: JsonObject, struct: type[model.Entry], refusal: str) -> Any:
    """A stored entry the decision builds on, typed: ``refusal`` when it is another kind,
    the parse error when it is malformed (both InvalidArgument)."""
    if not isinstance(body, dict) or body.get("kind") != model.kind_of(struct):
        raise InvalidArgument(refusal)
    try:
        return model.parse_entry(body)
    except VerificationError as exc:
        raise InvalidArgument(str(exc)) from None


def _check_value(value_minor: int, currency: str) -> None:
    if not isinstance(value_minor, int) or isinstance(value_minor, bool) or value_minor < 0:
        raise InvalidArgument(f"value_minor must be a non-negative integer, got {value_minor!r}")
    check_currency(currency)


def _signed_message(message: JsonObject, what: str) -> JsonObject:
    """A partner's signed message as embedded in entries: ``{envelope, signature}`` strings."""
    if not isinstance(message, dict) or set(message) != {"envelope", "signature"}:
        raise InvalidArgument(f"{what} must be {{envelope, signature}}")
    if not all(isinstance(value, str) and value for value in message.values()):
        raise InvalidArgument(f"{what} envelope and signature must be non-empty strings")
    return message


def convert_out(
    ctx: EntryContext,
    rules: ProgramRules,
    account: Account,
    agreement: Agreement,
    quote: Quote,
    conversion_id: str,
) -> JsonObject:
    """Send ``quote.amount`` points to ``agreement.to_program``: debit spendable lots,
    soonest-to-expire first, into flight until the partner's receipt or rejection.

    The caller checked the daily cap and the credit limit; the quote must be the
    agreement's own for that amount (the member confirmed exactly these numbers).
    """
    _check_id(conversion_id, "conversion id")
    check_positive(quote.amount, "amount", rules.max_points_per_operation)
    if agreement.from_program != ctx.program:
        raise InvalidArgument(f"agreement {agreement.id} converts {agreement.from_program} points")
    if not agreement.usable_at(ctx.at):
        raise FailedPrecondition(f"agreement {agreement.id} v{agreement.version} is not in force")
    if rates.quote(agreement, quote.amount) != quote:
        raise InvalidArgument(
            f"the quote does not match agreement {agreement.id} v{agreement.version}"
        )
    lots = account.take(quote.amount, ctx.at)
    return _entry(
        ctx,
        "convert-out",
        account.id,
        amount=quote.amount,
        taken=_taken_with_expiry(lots, quote.amount),
        conversion={
            "id": conversion_id,
            "to_program": agreement.to_program,
            "agreement": agreement.ref(),
            "fee": quote.fee,
            "net": quote.net,
            "credit": quote.credit,
            "rate": [agreement.rate_num, agreement.rate_den],
            "value_minor": quote.value_minor,
            "currency": agreement.currency,
        },
    )


def convert_in(
    ctx: EntryContext,
    rules: ProgramRules,
    account_id: str,
    out_entry: JsonObject,
    out_hash: str,
    agreement: Agreement,
) -> model.EntryBody:
    """Credit a conversion from a partner, after re-deriving it from the partner's entry.

    Refused (InvalidArgument) when the convert-out is not for this program, its hash or
    numbers differ from what ``agreement`` gives, or (FailedPrecondition) when the
    agreement was not in force at the convert-out's time. The credit is a lot available
    now and expiring after this program's expiry period.
    """
    refusal = "a conversion is credited from a convert-out entry"
    if not isinstance(out_entry, dict) or out_entry.get("kind") != model.kind_of(model.ConvertOut):
        raise InvalidArgument(refusal)
    if not isinstance(out_hash, str) or not _HEX_HASH.fullmatch(out_hash):
        raise InvalidArgument("out_hash must be 64 lowercase hex digits")
    if entry_leaf_hash(out_entry).hex() != out_hash:
        raise InvalidArgument("out_hash is not the leaf hash of the convert-out entry")
    check_envelope(out_entry)
    out: model.ConvertOut = _stored(out_entry, model.ConvertOut, refusal)
    conversion = out.conversion
    conversion_id = _check_id(conversion.id, "conversion id")
    source = out.program
    out_at = model.moment(out.at)
    if (source, conversion.to_program) != (agreement.from_program, ctx.program):
        raise InvalidArgument(
            f"conversion {conversion_id} is not {agreement.from_program} -> {ctx.program}"
        )
    if agreement.to_program != ctx.program:
        raise InvalidArgument(
            f"agreement {agreement.id} credits {agreement.to_program}, not {ctx.program}"
        )
    if conversion.agreement.key != (agreement.id, agreement.version):
        raise InvalidArgument(
            f"conversion {conversion_id} names agreement {model.to_json(conversion.agreement)}, "
            f"not {agreement.ref()}"
        )
    if not agreement.usable_at(out_at):
        raise FailedPrecondition(
            f"agreement {agreement.id} v{agreement.version} "
            f"was not in force at {format_time(out_at)}"
        )
    expected = rates.quote(agreement, out.amount)
    derived: JsonObject = {
        "fee": expected.fee,
        "net": expected.net,
        "credit": expected.credit,
        "value_minor": expected.value_minor,
        "rate": [agreement.rate_num, agreement.rate_den],
        "currency": agreement.currency,
    }
    stated = model.to_json(conversion)
    stated = {key: stated[key] for key in derived}
    if stated != derived:
        raise InvalidArgument(
            f"conversion {conversion_id} states {stated}, agreement {agreement.id} gives {derived}"
        )
    check_positive(expected.credit, "credit", rules.max_points_per_operation)
    return _entry(
        ctx,
        "convert-in",
        account_id,
        amount=expected.credit,
        lot={
            "id": ctx.entry_id,
            "available_at": format_time(ctx.at),
            "expires_at": format_time(ctx.at + rules.expiry_period),
        },
        conversion={
            "id": conversion_id,
            "from_program": source,
            "out_entry": out.id,
            "out_hash": out_hash,
            "out_at": format_time(out_at),
            "value_minor": expected.value_minor,
            "currency": agreement.currency,
            "agreement": agreement.ref(),
        },
    )


def convert_complete(
    ctx: EntryContext, account_id: str, conversion_id: str, receipt: JsonObject
) -> JsonObject:
    """Close a conversion with the partner's signed receipt (verified by the caller)."""
    _check_id(conversion_id, "conversion id")
    return _entry(
        ctx,
        "convert-complete",
        account_id,
        conversion={"id": conversion_id},
        receipt=_signed_message(receipt, "a conversion receipt"),
    )


def convert_refund(ctx: EntryContext, out_entry: JsonObject, rejection: JsonObject) -> JsonObject:
    """Give back a conversion's points on the partner's signed rejection or abort answer:
    new lots, spendable now, each with the expiry of the lot its points came from."""
    out: model.ConvertOut = _stored(
        out_entry, model.ConvertOut, "a refund reverses a convert-out entry"
    )
    return _entry(
        ctx,
        "convert-refund",
        out.account,
        amount=out.amount,
        restored=_restored(ctx, out.taken),
        conversion={"id": out.conversion.id},
        rejection=_signed_message(rejection, "a conversion rejection"),
    )


def convert_reject(
    ctx: EntryContext, conversion_id: str, from_program: str, reason: str
) -> JsonObject:
    """Record that this program will never credit ``conversion_id`` (rejected or aborted)."""
    _check_id(conversion_id, "conversion id")
    check_program_id(from_program, "from_program")
    validate_note(reason)
    return _entry(
        ctx,
        "convert-reject",
        PROGRAM_ACCOUNT,
        conversion={"id": conversion_id, "from_program": from_program, "reason": reason},
    )


def hold(
    ctx: EntryContext,
    rules: ProgramRules,
    account: Account,
    hold_id: str,
    partner: str,
    reference: str,
    amount: int,
    expires_at: datetime,
    agreement: Agreement,
) -> JsonObject:
    """Hold spendable points for a redemption at ``partner`` until capture, void or expiry."""
    _check_id(hold_id, "hold id")
    check_positive(amount, "amount", rules.max_points_per_operation)
    validate_reference(reference, "redemption reference")
    if agreement.pair != (ctx.program, partner):
        raise InvalidArgument(
            f"agreement {agreement.id} is {agreement.from_program} -> {agreement.to_program}, "
            f"not {ctx.program} -> {partner}"
        )
    if not agreement.usable_at(ctx.at):
        raise FailedPrecondition(f"agreement {agreement.id} v{agreement.version} is not in force")
    if expires_at <= ctx.at:
        raise InvalidArgument("a hold must expire after it is made")
    lots = account.take(amount, ctx.at)
    return _entry(
        ctx,
        "hold",
        account.id,
        amount=amount,
        taken=_taken_with_expiry(lots, amount),
        hold={
            "id": hold_id,
            "partner": partner,
            "reference": reference,
            "expires_at": format_time(expires_at),
            "agreement": agreement.ref(),
        },
    )


def _stored_hold(hold_entry: JsonObject) -> tuple[model.Hold, datetime]:
    """The hold entry, typed, and the time it expires."""
    held: model.Hold = _stored(hold_entry, model.Hold, "expected a hold entry")
    return held, model.moment(held.hold.expires_at)


def hold_capture(
    ctx: EntryContext, hold_entry: JsonObject, value_minor: int, currency: str
) -> JsonObject:
    """The held points leave for good: the partner redeemed them; this program owes it
    ``value_minor``. Refused (FailedPrecondition) once the hold has expired."""
    held, expires_at = _stored_hold(hold_entry)
    if ctx.at >= expires_at:
        raise FailedPrecondition(f"hold {held.hold.id} expired at {format_time(expires_at)}")
    _check_value(value_minor, currency)
    return _entry(
        ctx,
        "hold-capture",
        held.account,
        amount=held.amount,
        hold={"id": held.hold.id, "partner": held.hold.partner},
        value_minor=value_minor,
        currency=currency,
    )


def hold_release(ctx: EntryContext, hold_entry: JsonObject, why: str) -> JsonObject:
    """Give held points back (``void`` by the partner, or ``expired``), old expiry kept."""
    held, expires_at = _stored_hold(hold_entry)
    if why not in ("void", "expired"):
        raise InvalidArgument(f"a hold is released because of void or expired, not {why!r}")
    if why == "expired" and ctx.at < expires_at:
        raise FailedPrecondition(f"hold {held.hold.id} expires only at {format_time(expires_at)}")
    return _entry(
        ctx,
        "hold-release",
        held.account,
        amount=held.amount,
        restored=_restored(ctx, held.taken),
        hold={"id": held.hold.id, "partner": held.hold.partner, "why": why},
    )


def redemption_receipt(
    ctx: EntryContext,
    hold_id: str,
    partner: str,
    amount: int,
    value_minor: int,
    currency: str,
    captured_at: datetime,
    receipt: JsonObject,
) -> JsonObject:
    """On the partner that asked for a redemption: ``partner`` captured ``amount`` of its
    points for us and owes us ``value_minor`` (its signed capture receipt attached)."""
    _check_id(hold_id, "hold id")
    check_program_id(partner, "partner")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidArgument(f"amount must be a positive integer, got {amount!r}")
    _check_value(value_minor, currency)
    return _entry(
        ctx,
        "redemption-receipt",
        PROGRAM_ACCOUNT,
        hold={"id": hold_id, "partner": partner, "amount": amount},
        value_minor=value_minor,
        currency=currency,
        captured_at=format_time(captured_at),
        receipt=_signed_message(receipt, "a capture receipt"),
    )


def agreement_entry(ctx: EntryContext, signed_agreement: JsonObject) -> JsonObject:
    """Record a rate agreement signed by both partners (verified by the caller)."""
    document, _ = split_signed(signed_agreement, rates.AGREEMENT_FIELD, InvalidArgument)
    agreement_from_document(document)
    return _entry(ctx, "agreement", PROGRAM_ACCOUNT, agreement=signed_agreement)


def statement_entry(ctx: EntryContext, signed_statement: JsonObject) -> JsonObject:
    """Record a settlement statement signed by both parties (verified by the caller)."""
    split_signed(signed_statement, STATEMENT_FIELD, InvalidArgument)
    return _entry(ctx, "statement", PROGRAM_ACCOUNT, statement=signed_statement)


def key_rotation_entry(ctx: EntryContext, rotation: KeyRotation) -> JsonObject:
    """Record the rotation of the program's ledger key (``ledger.rotation``: the caller
    checked it follows the key in force, ``KeySchedule.check``)."""
    if rotation.program != ctx.program:
        raise InvalidArgument(f"a rotation of {rotation.program} is not {ctx.program}'s")
    return _entry(ctx, ROTATION_KIND, PROGRAM_ACCOUNT, rotation=rotation.to_json())
