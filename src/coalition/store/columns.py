"""How values sit in columns, the same on SQLite and PostgreSQL: every store module
encodes them with these, so one rule lives in one place.

Row ids are 64-bit (``RowId``: SQLite's own rowid there). Times are integer microseconds
since the Unix epoch (UTC): ``from_micros(to_micros(t)) == t`` for an aware ``t`` with
microsecond precision. JSON documents are stored as canonical JSON text and read back with
``stored_object``, which raises CorruptStore for a damaged row, never a parse error.
(Named for what it describes, the column encoding, not for a table: it holds none.)
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Integer

from coalition.errors import CoalitionError, CorruptStore
from coalition.ledger.canonical import JsonObject, parse_json

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# SQLite makes an ``INTEGER PRIMARY KEY`` the rowid itself (no second index); BIGINT would
# not be. PostgreSQL keeps 64-bit keys.
RowId = BigInteger().with_variant(Integer(), "sqlite")


def stored_object(text: str, what: str = "entry") -> JsonObject:
    """Parse a stored canonical JSON object; CorruptStore when the row was damaged."""
    try:
        value = parse_json(text)
    except CoalitionError as exc:
        raise CorruptStore(f"a stored {what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CorruptStore(f"a stored {what} is not a JSON object")
    return value


@functools.lru_cache(maxsize=4096)
def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch (cached: a batch shares a few timestamps)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
