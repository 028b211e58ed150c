"""The entry envelope and RFC 3339 timestamps.

An entry is one state change of one program, a JSON object whose canonical bytes
(RFC 8785) are a leaf of the program's RFC 9162 log (§2.1.1 leaf hash). This module knows
only the envelope every entry shares; what each ``kind`` means lives in ``points/``.

Timestamps are RFC 3339 (§5.6) in UTC with exactly six fractional digits and a ``Z``, as
``format_time`` writes them, e.g. ``2026-11-24T16:20:03.123456Z``: one spelling per instant,
so hashes are reproducible and strings sort in time order.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone

from coalition.errors import InvalidArgument
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.merkle import leaf_hash

ENTRY_TYPE = "coalition/entry/v1"
PROGRAM_ID = re.compile(r"[a-z][a-z0-9-]{1,31}", re.ASCII)
"""A program id: 2-32 of lowercase letters, digits and '-', letter first (one rule for
configurations, manifests, entries, agreements and partner messages)."""


def check_program_id(program: object, what: str = "program id") -> str:
    """``program`` if it is a valid program id, else InvalidArgument naming ``what``."""
    if not isinstance(program, str) or not PROGRAM_ID.fullmatch(program):
        raise InvalidArgument(f"bad {what} {program!r}: use 2-32 of a-z 0-9 -, letter first")
    return program


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


@functools.lru_cache(maxsize=4096)
def format_time(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; naive datetimes are refused."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidArgument("a naive datetime has no time zone; pass an aware one")
    t = moment.astimezone(UTC)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T"
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}Z"
    )


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 date-time (any offset, up to microseconds) to an aware UTC datetime."""
    if not isinstance(text, str):
        raise InvalidArgument(f"not an RFC 3339 date-time: {text!r}")
    return _parse_time(text)


CANONICAL_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z"
)
_fromisoformat = datetime.fromisoformat


def canonical_time(text: object) -> datetime | None:
    """The instant ``text`` spells when it is in ``format_time``'s canonical form
    (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, a real date-time), else None. For that spelling
    ``fromisoformat`` gives the aware UTC datetime ``parse_time`` gives."""
    return _canonical_time(text) if type(text) is str else None


@functools.lru_cache(maxsize=8192)
def _canonical_time(text: str) -> datetime | None:
    """Cached: the entries of a batch share their few times (an earn's ``at``,
    ``available_at`` and ``expires_at``), each parsed once per batch, not once per entry."""
    if CANONICAL_TIME.fullmatch(text):
        try:
            return _fromisoformat(text)
        except ValueError:
            return None
    return None


@functools.lru_cache(maxsize=8192)
def _parse_time(text: str) -> datetime:
    """Cached: a batch of entries shares a handful of timestamps (datetimes are immutable)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise InvalidArgument(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0").ljust(6, "0"))
    if m.group(8):
        tz = UTC
    else:
        hours, minutes = int(m.group(10)), int(m.group(11))
        if hours > 23 or minutes > 59:
            raise InvalidArgument(f"bad UTC offset in {text!r}")
        sign = 1 if m.group(9) == "+" else -1
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"not a valid date-time: {text!r}") from None


def check_time(text: object, what: str) -> datetime:
    """Parse a timestamp that MUST be in ``format_time``'s canonical form."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be an RFC 3339 string")
    moment = parse_time(text)
    if format_time(moment) != text:
        raise InvalidArgument(f"{what} must be UTC with six fractional digits and Z: {text!r}")
    return moment


def entry_bytes(entry: JsonObject) -> bytes:
    """The canonical bytes of an entry: what is hashed, signed and replicated."""
    return canonical_json(entry)


def entry_leaf_hash(entry: JsonObject) -> bytes:
    """The entry's RFC 9162 leaf hash in the program's log."""
    return leaf_hash(canonical_json(entry))


def check_envelope(entry: JsonObject) -> None:
    """Check the shared envelope: ``type``, and non-empty string ``program``, ``id`` and
    ``kind``, and ``at`` in canonical RFC 3339 UTC form. Raises InvalidArgument."""
    if not isinstance(entry, dict):
        raise InvalidArgument("an entry must be a JSON object")
    if entry.get("type") != ENTRY_TYPE:
        raise InvalidArgument(f"entry type must be {ENTRY_TYPE!r}")
    for name in ("program", "id", "kind"):
        value = entry.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"entry {name} must be a non-empty string")
    check_time(entry.get("at"), "entry at")
