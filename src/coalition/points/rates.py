"""Rate agreements between two programs, quotes, and the checks a conversion must pass.

Every number is an integer or an exact ``Fraction``: two partners quoting the same
conversion always agree to the last point and the last minor unit. An agreement is a
canonical JSON document signed (Ed25519, hex) by both programs; see docs/coalition.md,
"Rate agreements".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Context, Decimal
from fractions import Fraction

from coalition.errors import FailedPrecondition, InvalidArgument, quoted
from coalition.ledger.canonical import JsonObject
from coalition.ledger.documents import (
    sign_document,
    signed_document,
    split_signed,
    verify_signatures,
)
from coalition.ledger.entries import check_program_id, check_time, format_time
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.points.accounts import validate_reference

AGREEMENT_TYPE = "coalition.agreement.v1"
AGREEMENT_FIELD = "agreement"
"""The recorded form's key for the document (``ledger.documents``)."""
BPS = 10_000
_CURRENCY = re.compile(r"[A-Z]{3}")
_FIELDS = frozenset(
    {
        "type",
        "id",
        "version",
        "from_program",
        "to_program",
        "rate",
        "fee_bps",
        "min_points",
        "max_points",
        "daily_cap_points",
        "point_value",
        "currency",
        "valid_from",
        "valid_until",
        "proposed_by",
    }
)


def check_currency(currency: object, what: str = "currency") -> str:
    """An ISO 4217-style code: three capital letters."""
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise InvalidArgument(f"{what} must be 3 capital letters, got {quoted(currency)}")
    return currency


@dataclass(frozen=True, slots=True)
class Agreement:
    """One version of a rate agreement: ``rate_num/rate_den`` to-points per from-point,
    ``value_num/value_den`` minor units of ``currency`` owed per from-point net of fee."""

    id: str
    version: int
    from_program: str
    to_program: str
    rate_num: int
    rate_den: int
    fee_bps: int
    min_points: int
    max_points: int
    daily_cap_points: int
    value_num: int
    value_den: int
    currency: str
    valid_from: datetime
    valid_until: datetime
    proposed_by: str

    def document(self) -> JsonObject:
        """The agreement document (the inverse of ``agreement_from_document``)."""
        return {
            "type": AGREEMENT_TYPE,
            "id": self.id,
            "version": self.version,
            "from_program": self.from_program,
            "to_program": self.to_program,
            "rate": [self.rate_num, self.rate_den],
            "fee_bps": self.fee_bps,
            "min_points": self.min_points,
            "max_points": self.max_points,
            "daily_cap_points": self.daily_cap_points,
            "point_value": [self.value_num, self.value_den],
            "currency": self.currency,
            "valid_from": format_time(self.valid_from),
            "valid_until": format_time(self.valid_until),
            "proposed_by": self.proposed_by,
        }

    def usable_at(self, at: datetime) -> bool:
        """Within its validity window ``[valid_from, valid_until)`` (signatures aside)."""
        return self.valid_from <= at < self.valid_until

    @property
    def pair(self) -> tuple[str, str]:
        return (self.from_program, self.to_program)

    @property
    def gain(self) -> Fraction:
        """What one point becomes after the fee and the rate (before rounding down)."""
        return Fraction(self.rate_num, self.rate_den) * Fraction(BPS - self.fee_bps, BPS)

    def ref(self) -> JsonObject:
        """How entries name this agreement: ``{"id", "version"}``."""
        return {"id": self.id, "version": self.version}


def _count(doc: JsonObject, key: str, *, least: int = 1, most: int | None = None) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"agreement {key} must be an integer, got {quoted(value)}")
    if value < least or (most is not None and value > most):
        upper = "" if most is None else f"..{most}"
        raise InvalidArgument(f"agreement {key} must be in {least}{upper}, got {value}")
    return value


def _ratio(doc: JsonObject, key: str) -> tuple[int, int]:
    value = doc.get(key)
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidArgument(
            f"agreement {key} must be [numerator, denominator], got {quoted(value)}"
        )
    pair: JsonObject = {"numerator": value[0], "denominator": value[1]}
    try:
        return _count(pair, "numerator"), _count(pair, "denominator")
    except InvalidArgument as exc:
        raise InvalidArgument(f"agreement {key}: {exc}") from None


def agreement_from_document(doc: JsonObject) -> Agreement:
    """Parse and check an agreement document; InvalidArgument says what is wrong."""
    if not isinstance(doc, dict):
        raise InvalidArgument("an agreement must be a JSON object")
    if doc.get("type") != AGREEMENT_TYPE:
        raise InvalidArgument(f"agreement type must be {AGREEMENT_TYPE!r}")
    missing = sorted(_FIELDS - doc.keys())
    extra = sorted(doc.keys() - _FIELDS)
    if missing or extra:
        raise InvalidArgument(f"agreement fields missing {missing}, unknown {extra}")
    if not isinstance(doc["id"], str):
        raise InvalidArgument("agreement id must be a string")
    agreement_id = validate_reference(doc["id"], "agreement id")
    source = check_program_id(doc["from_program"], "from_program")
    target = check_program_id(doc["to_program"], "to_program")
    if source == target:
        raise InvalidArgument(f"an agreement converts between two programs, not {source} twice")
    proposer = check_program_id(doc["proposed_by"], "proposed_by")
    if proposer not in (source, target):
        raise InvalidArgument(f"proposed_by {proposer} is neither {source} nor {target}")
    rate_num, rate_den = _ratio(doc, "rate")
    value_num, value_den = _ratio(doc, "point_value")
    min_points = _count(doc, "min_points")
    max_points = _count(doc, "max_points")
    if min_points > max_points:
        raise InvalidArgument(f"agreement min_points {min_points} > max_points {max_points}")
    currency = check_currency(doc["currency"], "agreement currency")
    valid_from = _time(doc, "valid_from")
    valid_until = _time(doc, "valid_until")
    if valid_from >= valid_until:
        raise InvalidArgument("agreement valid_from must be before valid_until")
    return Agreement(
        id=agreement_id,
        version=_count(doc, "version"),
        from_program=source,
        to_program=target,
        rate_num=rate_num,
        rate_den=rate_den,
        fee_bps=_count(doc, "fee_bps", least=0, most=BPS - 1),
        min_points=min_points,
        max_points=max_points,
        daily_cap_points=_count(doc, "daily_cap_points"),
        value_num=value_num,
        value_den=value_den,
        currency=currency,
        valid_from=valid_from,
        valid_until=valid_until,
        proposed_by=proposer,
    )


def _time(doc: JsonObject, key: str) -> datetime:
    return check_time(doc.get(key), f"agreement {key}")


def sign_agreement(doc: JsonObject, key: SigningKey) -> str:
    """Hex Ed25519 signature over the agreement's canonical JSON (checked first)."""
    agreement_from_document(doc)
    return sign_document(doc, key)


def signed_agreement(doc: JsonObject, signatures: Mapping[str, str]) -> JsonObject:
    """The recorded form: ``{"agreement": doc, "signatures": {program: hex}}``."""
    return signed_document(AGREEMENT_FIELD, doc, signatures)


def verify_signed_agreement(signed: JsonObject, key_of: Callable[[str], VerifyKey]) -> Agreement:
    """The agreement, if both ``from_program`` and ``to_program`` signed it.

    VerificationError for a missing, extra or bad signature; InvalidArgument for a
    malformed document; ``key_of`` errors (an unknown program) pass through.
    """
    doc, signatures = split_signed(signed, AGREEMENT_FIELD)
    agreement = agreement_from_document(doc)
    what = f"agreement {agreement.id} v{agreement.version}"
    verify_signatures(doc, signatures, agreement.pair, key_of, what)
    return agreement


@dataclass(frozen=True, slots=True)
class Quote:
    """What converting ``amount`` points gives: ``fee + net == amount``; ``credit`` target
    points and ``value_minor`` owed to the target, both rounded down."""

    amount: int
    fee: int
    net: int
    credit: int
    value_minor: int


def quote(agreement: Agreement, amount: int) -> Quote:
    """Quote ``amount`` points under ``agreement``, or InvalidArgument.

    ``fee = ceil(amount * fee_bps / 10000)``, ``credit = floor(net * rate)``,
    ``value_minor = floor(net * point_value)``: integer arithmetic only.
    """
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidArgument(f"amount must be an integer, got {amount!r}")
    if not agreement.min_points <= amount <= agreement.max_points:
        raise InvalidArgument(
            f"agreement {agreement.id} converts {agreement.min_points}-{agreement.max_points} "
            f"points at a time, not {amount}"
        )
    fee = -(-amount * agreement.fee_bps // BPS)
    net = amount - fee
    credit = net * agreement.rate_num // agreement.rate_den
    if credit == 0:
        raise InvalidArgument(f"{amount} points convert to 0 {agreement.to_program} points")
    value_minor = net * agreement.value_num // agreement.value_den
    return Quote(amount, fee, net, credit, value_minor)


def redemption_value(agreement: Agreement, amount: int) -> int:
    """Minor units ``from_program`` owes ``to_program`` for ``amount`` points redeemed there."""
    return amount * agreement.value_num // agreement.value_den


def check_daily_cap(agreement: Agreement, converted_today: int, amount: int) -> None:
    """FailedPrecondition if the member's conversions today plus ``amount`` pass the cap."""
    if converted_today + amount > agreement.daily_cap_points:
        left = max(agreement.daily_cap_points - converted_today, 0)
        raise FailedPrecondition(
            f"daily cap of agreement {agreement.id} is {agreement.daily_cap_points} points: "
            f"{converted_today} converted today, {left} left, {amount} asked"
        )


def check_credit_limit(
    limit: int | None, unsettled: int, value_minor: int, debtor: str, creditor: str
) -> None:
    """FailedPrecondition if ``debtor`` would owe ``creditor`` more than its limit. The
    message reaches members (their conversion's refusal or rejection reason), so it names
    neither the limit (the manifest's) nor what is owed: operators read both from the
    settlement API (issue 11, class 9)."""
    if limit is not None and unsettled + value_minor > limit:
        raise FailedPrecondition(
            f"the conversion would pass the credit limit of {debtor} at {creditor}: "
            "it can be made once they settle"
        )


def current_agreements(
    agreements: Iterable[Agreement], at: datetime
) -> dict[tuple[str, str], Agreement]:
    """Per ``(from, to)`` the agreement in force at ``at``.

    An agreement is in force when usable at ``at`` and no higher version of the same id
    has started (``valid_from <= at``: a higher version supersedes from its valid_from,
    even after it ends). Among several ids for one pair the highest version wins, then
    the latest start, then the id.
    """
    everything = list(agreements)
    started: dict[str, int] = {}
    for agreement in everything:
        if agreement.valid_from <= at:
            started[agreement.id] = max(started.get(agreement.id, 0), agreement.version)
    best: dict[tuple[str, str], Agreement] = {}
    for agreement in everything:
        if not agreement.usable_at(at) or started[agreement.id] > agreement.version:
            continue
        held = best.get(agreement.pair)
        if held is None or _precedence(agreement) > _precedence(held):
            best[agreement.pair] = agreement
    return best


def _precedence(agreement: Agreement) -> tuple[int, datetime, str]:
    return (agreement.version, agreement.valid_from, agreement.id)


def find_gain_cycle(agreements: Iterable[Agreement]) -> list[str] | None:
    """A cycle of programs that turns one point into more than one, as ``[a, ..., a]``
    starting at its alphabetically first program, or None.

    Bellman-Ford on products instead of sums, in exact ``Fraction``s: after as many
    rounds as programs, a factor that still grows lies on or behind a gaining cycle, and
    any cycle of predecessors is gaining. Of several agreements for one pair, the one
    giving the most counts. O(programs * agreements).
    """
    found = _gain_cycle(agreements)
    return None if found is None else found[0]


def _gain_cycle(agreements: Iterable[Agreement]) -> tuple[list[str], Fraction] | None:
    gains: dict[tuple[str, str], Fraction] = {}
    for agreement in agreements:
        gains[agreement.pair] = max(gains.get(agreement.pair, Fraction(0)), agreement.gain)
    edges = sorted(gains.items())
    best = dict.fromkeys((program for pair in gains for program in pair), Fraction(1))
    before: dict[str, str] = {}
    grown: str | None = None
    for _ in range(len(best)):
        grown = None
        for (source, target), gain in edges:
            if best[source] * gain > best[target]:
                best[target] = best[source] * gain
                before[target] = source
                grown = target
        if grown is None:
            return None
    if grown is None:  # no agreements at all
        return None
    for _ in range(len(best)):  # step back onto the cycle itself
        grown = before[grown]
    cycle = [grown]
    while (step := before[cycle[-1]]) != grown:
        cycle.append(step)
    cycle.reverse()
    first = cycle.index(min(cycle))
    cycle = cycle[first:] + cycle[:first]
    factor = Fraction(1)
    for pair in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        factor *= gains[pair]
    return [*cycle, cycle[0]], factor


def check_no_gain_cycle(agreements: Iterable[Agreement]) -> None:
    """FailedPrecondition naming the cycle if some cycle multiplies a point into more.

    To admit a new agreement, pass the agreements in force (``current_agreements``) with
    the new one added (replacing the one it supersedes).
    """
    found = _gain_cycle(agreements)
    if found is not None:
        cycle, factor = found
        raise FailedPrecondition(
            f"{' -> '.join(cycle)} multiplies 1 point into {_decimal(factor)}: "
            "an agreement must not create points"
        )


def _decimal(value: Fraction) -> str:
    """A readable decimal for a gain factor (12 significant digits)."""
    exact = Context(prec=12).divide(Decimal(value.numerator), Decimal(value.denominator))
    text = format(exact, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
