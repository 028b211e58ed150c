"""Value flowing between brands, aggregated from one node's own chain for the explorer.

Every figure comes from entries this node signed: ``convert-out`` (our members' points
leaving for a partner; a later ``convert-refund`` takes it back), ``convert-in`` (a
partner's points arriving here), ``hold-capture`` (our members spending at a partner) and
``redemption-receipt`` (a partner's members spending here). Flows are summed per kind,
direction and UTC time bucket; ``value_minor`` (money, comparable across brands) is what
the chart draws, points are in each program's own unit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import format_time, parse_time
from coalition.points import kinds, model

FLOW_KINDS = kinds.FLOW_KINDS
"""The kinds summed into flows (those whose ``kinds.Display`` names a flow)."""
MIN_BUCKET_S = 60
MAX_BUCKET_S = 31 * 86400


@dataclass(slots=True)
class Flow:
    """What went from ``source`` to ``target`` in one bucket, for one kind of flow."""

    kind: str
    """``conversion`` or ``redemption``."""
    source: str
    target: str
    bucket: str
    """Start of the bucket, ``format_time`` form."""
    currency: str
    count: int = 0
    points_out: int = 0
    """Points that left ``source`` (known only when ``source`` is this node)."""
    points_in: int = 0
    """Points credited at ``target`` (redemptions: none)."""
    value_minor: int = 0
    refunded: int = 0
    """Conversions sent back on a signed rejection (their points and value are excluded)."""

    def to_json(self) -> JsonObject:
        return {
            "kind": self.kind,
            "from": self.source,
            "to": self.target,
            "bucket": self.bucket,
            "currency": self.currency,
            "count": self.count,
            "points_out": self.points_out,
            "points_in": self.points_in,
            "value_minor": self.value_minor,
            "refunded": self.refunded,
        }


def bucket_of(at: str, bucket_s: int) -> str:
    """The start of the ``bucket_s``-second UTC bucket holding the time ``at``."""
    seconds = int(parse_time(at).timestamp())
    return format_time(datetime.fromtimestamp(seconds - seconds % bucket_s, UTC))


def conversion_flows(chain: Iterable[JsonObject], program: str, bucket_s: int) -> list[Flow]:
    """Sum ``chain`` (this node's entries in log order, any kinds) into flows, sorted by
    bucket, kind and direction. A refund finds its conversion by id, so the order matters."""
    if not MIN_BUCKET_S <= bucket_s <= MAX_BUCKET_S:
        raise InvalidArgument(f"bucket_s must be in [{MIN_BUCKET_S}, {MAX_BUCKET_S}]")
    flows: dict[tuple[str, str, str, str, str], Flow] = {}
    sent: dict[str, tuple[Flow, int, int, int]] = {}

    def flow(kind: str, source: str, target: str, at: str, currency: str) -> Flow:
        key = (bucket_of(at, bucket_s), kind, source, target, currency)
        if key not in flows:
            flows[key] = Flow(kind, source, target, key[0], currency)
        return flows[key]

    for body in chain:
        found = kinds.kind(body.get("kind"))
        if found is None or found.display.flow is None:
            continue
        entry = _parsed(body)
        at, flow_of = entry.at, found.display.flow
        if isinstance(entry, model.ConvertOut):
            conversion = entry.conversion
            f = flow("conversion", program, conversion.to_program, at, conversion.currency)
            points, credit, value = entry.amount, conversion.credit, conversion.value_minor
            f.count += 1
            f.points_out += points
            f.points_in += credit
            f.value_minor += value
            sent[conversion.id] = (f, points, credit, value)
        elif isinstance(entry, model.ConvertRefund):
            refunded = sent.pop(entry.conversion.id, None)
            if refunded is not None:
                f, points, credit, value = refunded
                f.count -= 1
                f.refunded += 1
                f.points_out -= points
                f.points_in -= credit
                f.value_minor -= value
        elif isinstance(entry, model.ConvertIn):
            incoming = entry.conversion
            f = flow("conversion", incoming.from_program, program, at, incoming.currency)
            f.count += 1
            f.points_in += entry.amount
            f.value_minor += incoming.value_minor
        elif isinstance(entry, model.HoldCapture):
            f = flow("redemption", program, entry.hold.partner, at, entry.currency)
            f.count += 1
            f.points_out += entry.amount
            f.value_minor += entry.value_minor
        elif isinstance(entry, model.RedemptionReceipt):
            f = flow("redemption", entry.hold.partner, program, at, entry.currency)
            f.count += 1
            f.points_out += entry.hold.amount
            f.value_minor += entry.value_minor
        else:
            raise AssertionError(f"no flow rule for {flow_of}")  # test_kinds covers each flow
    return [flows[key] for key in sorted(flows)]


def _parsed(body: JsonObject) -> model.Entry:
    try:
        return model.parse_entry(body)
    except VerificationError as exc:
        raise InvalidArgument(str(exc)) from None
