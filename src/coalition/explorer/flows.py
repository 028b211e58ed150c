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

from coalition.errors import InvalidArgument
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import format_time, parse_time

FLOW_KINDS = ("convert-out", "convert-refund", "convert-in", "hold-capture", "redemption-receipt")
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


def _object(entry: JsonObject, key: str) -> JsonObject:
    value = entry.get(key)
    if not isinstance(value, dict):
        raise InvalidArgument(f"entry {entry.get('id')}: {key} is not an object")
    return value


def _int(obj: JsonObject, key: str) -> int:
    value: JsonValue = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{key} is not an integer")
    return value


def _str(obj: JsonObject, key: str) -> str:
    value: JsonValue = obj.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} is not a string")
    return value


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

    for entry in chain:
        kind, at = entry.get("kind"), _str(entry, "at")
        if kind == "convert-out":
            conversion = _object(entry, "conversion")
            target = _str(conversion, "to_program")
            f = flow("conversion", program, target, at, _str(conversion, "currency"))
            points, credit = _int(entry, "amount"), _int(conversion, "credit")
            value = _int(conversion, "value_minor")
            f.count += 1
            f.points_out += points
            f.points_in += credit
            f.value_minor += value
            sent[_str(conversion, "id")] = (f, points, credit, value)
        elif kind == "convert-refund":
            found = sent.pop(_str(_object(entry, "conversion"), "id"), None)
            if found is not None:
                f, points, credit, value = found
                f.count -= 1
                f.refunded += 1
                f.points_out -= points
                f.points_in -= credit
                f.value_minor -= value
        elif kind == "convert-in":
            conversion = _object(entry, "conversion")
            source = _str(conversion, "from_program")
            f = flow("conversion", source, program, at, _str(conversion, "currency"))
            f.count += 1
            f.points_in += _int(entry, "amount")
            f.value_minor += _int(conversion, "value_minor")
        elif kind == "hold-capture":
            partner = _str(_object(entry, "hold"), "partner")
            f = flow("redemption", program, partner, at, _str(entry, "currency"))
            f.count += 1
            f.points_out += _int(entry, "amount")
            f.value_minor += _int(entry, "value_minor")
        elif kind == "redemption-receipt":
            hold = _object(entry, "hold")
            f = flow("redemption", _str(hold, "partner"), program, at, _str(entry, "currency"))
            f.count += 1
            f.points_out += _int(hold, "amount")
            f.value_minor += _int(entry, "value_minor")
    return [flows[key] for key in sorted(flows)]
