"""A recorded statement must be exactly what ``statement_document`` writes for its pair
and period, id included, so one pair and period has one statement whichever party wrote
it (the audit compares statements by id and by sorted pair)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coalition.errors import InvalidArgument
from coalition.points.settlement import Owed, statement_document
from coalition.points.statements import statement_id, statement_parts

START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
OWED = {("air", "hotel"): Owed(300, 2), ("hotel", "air"): Owed(5, 1)}


def test_a_statement_as_written_parses() -> None:
    doc = statement_document(
        statement_id(("air", "hotel"), START, END), ("air", "hotel"), START, END, "EUR", OWED
    )
    parts = statement_parts(doc)
    assert parts.parties == ("air", "hotel") and parts.owed[("air", "hotel")] == Owed(300, 2)


def test_reversed_parties_or_another_id_are_refused() -> None:
    doc = statement_document(
        statement_id(("air", "hotel"), START, END), ("air", "hotel"), START, END, "EUR", OWED
    )
    with pytest.raises(InvalidArgument):
        statement_parts({**doc, "parties": ["hotel", "air"]})
    with pytest.raises(InvalidArgument, match="id is"):
        statement_parts({**doc, "id": "air:hotel:another"})
