"""What one entry adds to the value flowing between brands: the rule behind the explorer's
flows, written once for the reference fold over a chain (``explorer.flows``) and for the
running totals the store keeps beside the entries (``store.flows``).

A ``convert-out`` sends our member's points to a partner, a ``convert-in`` credits a
partner's points here, a ``hold-capture`` is our member spending at a partner and a
``redemption-receipt`` a partner's member spending here. A ``convert-refund`` takes its
conversion back: it subtracts what the ``convert-out`` added, in the convert-out's own
bucket (``refund_of``), and counts one refund there. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from coalition.ledger.entries import parse_time
from coalition.points import model

LEVELS_S = (86400, 3600, 60)
"""The bucket sizes the store keeps running totals at, coarsest first: a flows read for a
bucket of ``bucket_s`` seconds sums the rows of the coarsest level dividing it."""


@dataclass(frozen=True, slots=True)
class FlowDelta:
    """What one entry adds to one flow: (``kind``, ``source`` -> ``target``, ``currency``)
    at the time ``at_s`` (whole seconds since the epoch, UTC)."""

    kind: str
    """``conversion`` or ``redemption``."""
    source: str
    target: str
    currency: str
    at_s: int
    count: int
    points_out: int
    points_in: int
    value_minor: int
    refunded: int = 0

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.kind, self.source, self.target, self.currency)


def _seconds(at: str) -> int:
    return int(parse_time(at).timestamp())


def flow_delta(entry: model.Entry) -> FlowDelta | None:
    """The flow ``entry`` adds on its own chain (``entry.program`` is this node); None for
    a kind that is no flow and for ``convert-refund``, whose delta is ``refund_of`` its
    conversion's ``convert-out``."""
    at, program = _seconds(entry.at), entry.program
    if isinstance(entry, model.ConvertOut):
        c = entry.conversion
        return FlowDelta(
            "conversion",
            program,
            c.to_program,
            c.currency,
            at,
            1,
            entry.amount,
            c.credit,
            c.value_minor,
        )
    if isinstance(entry, model.ConvertIn):
        c2 = entry.conversion
        return FlowDelta(
            "conversion",
            c2.from_program,
            program,
            c2.currency,
            at,
            1,
            0,
            entry.amount,
            c2.value_minor,
        )
    if isinstance(entry, model.HoldCapture):
        return FlowDelta(
            "redemption",
            program,
            entry.hold.partner,
            entry.currency,
            at,
            1,
            entry.amount,
            0,
            entry.value_minor,
        )
    if isinstance(entry, model.RedemptionReceipt):
        return FlowDelta(
            "redemption",
            entry.hold.partner,
            program,
            entry.currency,
            at,
            1,
            entry.hold.amount,
            0,
            entry.value_minor,
        )
    return None


def refund_of(out: FlowDelta) -> FlowDelta:
    """The delta of refunding the conversion whose ``convert-out`` added ``out``: the
    same flow and bucket, every sum taken back, one refund counted."""
    return FlowDelta(
        out.kind,
        out.source,
        out.target,
        out.currency,
        out.at_s,
        -out.count,
        -out.points_out,
        -out.points_in,
        -out.value_minor,
        1,
    )


def level_for(bucket_s: int) -> int:
    """The coarsest stored level dividing ``bucket_s``; ValueError when none does."""
    for level in LEVELS_S:
        if bucket_s % level == 0:
            return level
    raise ValueError(f"bucket_s {bucket_s} is not a multiple of {LEVELS_S[-1]}")
