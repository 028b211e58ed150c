"""The patterns and limits of request fields, as OpenAPI states them, taken from the rule
that enforces each (the compiled pattern or the named constant of the core), never a copy.

The core check stays the rule (its refusal is a 400 with its own message, on every
transport); these annotations only state the same rule in the document, so a client
(or schemathesis) knows it before it asks. ``documented`` writes a pattern as JSON
Schema wants it (anchored: JSON Schema patterns match anywhere in a string).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Header, Path, Query
from pydantic import Field, StrictInt

from coalition.ledger.canonical import MAX_SAFE_INTEGER
from coalition.ledger.entries import CANONICAL_TIME, PROGRAM_ID
from coalition.node.features.redemptions import HOLD_ID
from coalition.node.ledger_service import MAX_HEADERS
from coalition.node.paging import MAX_PAGE
from coalition.node.sequencer import ENTRY_ID
from coalition.points.accounts import MAX_MEMBER_ID, MAX_REFERENCE, MEMBER_ID, REFERENCE
from coalition.points.operations import MAX_NOTE


def documented(pattern: re.Pattern[str] | None, max_length: int | None = None) -> dict[str, Any]:
    """The JSON Schema keywords of a non-empty string field: ``pattern`` (anchored) and
    the longest it may be (where the pattern does not say so itself)."""
    keywords: dict[str, Any] = {"minLength": 1}
    if pattern is not None:
        keywords["pattern"] = f"^(?:{pattern.pattern})$"
    if max_length is not None:
        keywords["maxLength"] = max_length
    return keywords


def documented_range(minimum: int, maximum: int = MAX_SAFE_INTEGER) -> dict[str, Any]:
    """The JSON Schema bounds of an integer the core checks (the transport itself only
    bounds it to the I-JSON range, ``deps.QueryInt``)."""
    return {"minimum": minimum, "maximum": maximum}


_MEMBER = documented(MEMBER_ID, MAX_MEMBER_ID)
_REFERENCE = documented(REFERENCE, MAX_REFERENCE)
_PROGRAM = documented(PROGRAM_ID)
_ENTRY = documented(ENTRY_ID)
_HOLD = documented(HOLD_ID)
_TIME = documented(CANONICAL_TIME)
_NOTE = documented(None, MAX_NOTE)

IDEMPOTENCY_KEY_RULE = (
    "Required on every write: in this header or in the body's `idempotency_key` (the same "
    f"value if both), 1-{MAX_REFERENCE} of A-Za-z0-9._:/#-, alphanumeric first. A request "
    "repeated with its key answers 200 with `replayed: true` and the first answer; the key "
    "with another body is 409. Keys are the caller's own: a member key's are its "
    "member's, every operator key of the program shares one scope; another caller's key "
    "of the same text is another key."
)
MEMBER_ID_RULE = f"1-{MAX_MEMBER_ID} of A-Za-z0-9._:@-, alphanumeric first."
REFERENCE_RULE = f"1-{MAX_REFERENCE} of A-Za-z0-9._:/#-, alphanumeric first."
TIME_RULE = "RFC 3339 UTC with six fractional digits, e.g. 2026-11-01T00:00:00.000000Z."

# Body fields.
MemberIdField = Annotated[str, Field(description=MEMBER_ID_RULE, json_schema_extra=_MEMBER)]
ReferenceField = Annotated[str, Field(description=REFERENCE_RULE, json_schema_extra=_REFERENCE)]
ProgramField = Annotated[str, Field(description="A program id.", json_schema_extra=_PROGRAM)]
EntryIdField = Annotated[str, Field(description="An entry id.", json_schema_extra=_ENTRY)]
TimeField = Annotated[str, Field(description=TIME_RULE, json_schema_extra=_TIME)]
NoteField = Annotated[
    str,
    Field(description=f"1-{MAX_NOTE} characters, no control characters.", json_schema_extra=_NOTE),
]
IdempotencyKeyField = Annotated[
    str | None, Field(description=IDEMPOTENCY_KEY_RULE, json_schema_extra=_REFERENCE)
]

# Path, query and header parameters.
MemberId = Annotated[
    str,
    Path(
        description=f"The member's id in this program: {MEMBER_ID_RULE}", json_schema_extra=_MEMBER
    ),
]
EntryId = Annotated[str, Path(description="An entry id (32 hex digits).", json_schema_extra=_ENTRY)]
HoldId = Annotated[
    str, Path(description="The hold id (32 hex digits) of the redemption.", json_schema_extra=_HOLD)
]
ConversionId = Annotated[
    str, Path(description=f"A conversion id: {REFERENCE_RULE}", json_schema_extra=_REFERENCE)
]
ProgramQuery = Annotated[str, Query(description="A program id.", json_schema_extra=_PROGRAM)]
TimeQuery = Annotated[str, Query(description=TIME_RULE, json_schema_extra=_TIME)]
IdempotencyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description=IDEMPOTENCY_KEY_RULE, json_schema_extra=_REFERENCE),
]

_I_JSON = {"ge": -MAX_SAFE_INTEGER, "le": MAX_SAFE_INTEGER}
PositivePoints = Annotated[
    StrictInt,
    Field(
        description="Points, at least 1 and at most the program's `max_points_per_operation` "
        "rule (100,000,000 by default).",
        json_schema_extra=documented_range(1),
        **_I_JSON,
    ),
]
PositiveQuery = Annotated[
    int,
    Query(
        description="Points, at least 1 and at most the program's `max_points_per_operation`.",
        json_schema_extra=documented_range(1),
        **_I_JSON,
    ),
]
OptionalProgramQuery = Annotated[
    str | None, Query(description="A program id.", json_schema_extra=_PROGRAM)
]
OptionalTimeQuery = Annotated[str | None, Query(description=TIME_RULE, json_schema_extra=_TIME)]
HeightPath = Annotated[
    int, Path(description="A block height.", json_schema_extra=documented_range(0), **_I_JSON)
]
HeightQuery = Annotated[
    int, Query(description="A block height.", json_schema_extra=documented_range(0), **_I_JSON)
]
LogIndexQuery = Annotated[
    int, Query(description="A log index.", json_schema_extra=documented_range(0), **_I_JSON)
]
PageLimit = Annotated[
    int,
    Query(
        description=f"Most items in the page (MAX_PAGE, {MAX_PAGE}).",
        json_schema_extra=documented_range(1, MAX_PAGE),
        **_I_JSON,
    ),
]
HeadersLimit = Annotated[
    int,
    Query(
        description=f"Most headers (MAX_HEADERS, {MAX_HEADERS}).",
        json_schema_extra=documented_range(1, MAX_HEADERS),
        **_I_JSON,
    ),
]
