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
from coalition.ledger.entries import format_time
from coalition.points import kinds, model
from coalition.points.flows import FlowDelta, flow_delta, refund_of
from coalition.store.flows import FlowTotal

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

    def add(self, delta: FlowDelta) -> None:
        self.count += delta.count
        self.points_out += delta.points_out
        self.points_in += delta.points_in
        self.value_minor += delta.value_minor
        self.refunded += delta.refunded

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


def conversion_flows(chain: Iterable[JsonObject], program: str, bucket_s: int) -> list[Flow]:
    """Sum ``chain`` (this node's entries in log order, any kinds) into flows, sorted by
    bucket, kind and direction. A refund finds its conversion by id, so the order matters.

    The reference fold over a whole chain: the node serves flows from the running totals
    of ``store.flows`` (``flows_page``), which the tests compare with this."""
    if not MIN_BUCKET_S <= bucket_s <= MAX_BUCKET_S:
        raise InvalidArgument(f"bucket_s must be in [{MIN_BUCKET_S}, {MAX_BUCKET_S}]")
    flows: dict[tuple[str, str, str, str, str], Flow] = {}
    sent: dict[str, FlowDelta] = {}

    def add(delta: FlowDelta) -> None:
        start = delta.at_s - delta.at_s % bucket_s
        bucket = format_time(datetime.fromtimestamp(start, UTC))
        key = (bucket, *delta.key)
        f = flows.get(key)
        if f is None:
            f = flows[key] = Flow(delta.kind, delta.source, delta.target, bucket, delta.currency)
        f.add(delta)

    for body in chain:
        found = kinds.kind(body.get("kind"))
        if found is None or found.display.flow is None:
            continue
        entry = _parsed(body)
        if isinstance(entry, model.ConvertRefund):
            out = sent.pop(entry.conversion.id, None)
            if out is not None:
                add(refund_of(out))
            continue
        delta = flow_delta(entry)
        if delta is None:
            raise AssertionError(f"no flow rule for {found.name}")  # test_kinds covers each
        if isinstance(entry, model.ConvertOut):
            sent[entry.conversion.id] = delta
        add(delta)
    return [flows[key] for key in sorted(flows)]


def flows_of(totals: Iterable[FlowTotal]) -> list[Flow]:
    """The stored totals of a flows page (``store.flows.flow_page``) as flows."""
    return [
        Flow(
            t.kind,
            t.source,
            t.target,
            format_time(datetime.fromtimestamp(t.bucket, UTC)),
            t.currency,
            t.count,
            t.points_out,
            t.points_in,
            t.value_minor,
            t.refunded,
        )
        for t in totals
    ]


def _parsed(body: JsonObject) -> model.Entry:
    try:
        return model.parse_entry(body)
    except VerificationError as exc:
        raise InvalidArgument(str(exc)) from None
