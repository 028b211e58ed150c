"""Settlement statements as signed documents: the id of a pair's statement for a period,
parsing a statement back into its checked parts, and both parties' signatures.

The document itself is ``points.settlement.statement_document``; signing and verifying
are ``ledger.documents``' (one helper with rate agreements). A partner node and the
auditor verify a statement through ``verify_signed_statement`` alone, so both judge it
by one rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.documents import (
    check_signature,
    sign_document,
    signed_document,
    split_signed,
    verify_signatures,
)
from coalition.ledger.entries import check_program_id, check_time, format_time
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.points.settlement import STATEMENT_TYPE, Owed, statement_document

STATEMENT_FIELD = "statement"
"""The recorded form's key for the document (``ledger.documents``)."""


def statement_id(parties: tuple[str, str], start: datetime, end: datetime) -> str:
    """The id of a pair's statement for a period: one statement per pair and period."""
    return f"{parties[0]}:{parties[1]}:{format_time(start)}:{format_time(end)}"


@dataclass(frozen=True, slots=True)
class StatementParts:
    """The checked fields of a statement document."""

    id: str
    parties: tuple[str, str]
    start: datetime
    end: datetime
    currency: str
    owed: dict[tuple[str, str], Owed]


def statement_parts(doc: JsonValue) -> StatementParts:
    """Parse a statement document; InvalidArgument unless it is exactly what
    ``statement_document`` writes for its own fields."""
    if not isinstance(doc, dict) or doc.get("type") != STATEMENT_TYPE:
        raise InvalidArgument(f"a statement is a {STATEMENT_TYPE} object")
    parties, period = doc.get("parties"), doc.get("period")
    if not isinstance(parties, list) or len(parties) != 2:
        raise InvalidArgument("a statement names two parties")
    a, b = (check_program_id(p, "party") for p in parties)
    if not isinstance(period, dict):
        raise InvalidArgument("a statement has a period {start, end}")
    start = check_time(period.get("start"), "statement period start")
    end = check_time(period.get("end"), "statement period end")
    owed_doc, items_doc = doc.get("owed"), doc.get("items")
    if not isinstance(owed_doc, dict) or not isinstance(items_doc, dict):
        raise InvalidArgument("a statement has owed and items per direction")
    owed: dict[tuple[str, str], Owed] = {}
    for debtor, creditor in ((a, b), (b, a)):
        key = f"{debtor}->{creditor}"
        minor, items = owed_doc.get(key), items_doc.get(key)
        for value in (minor, items):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"statement {key}: amounts are non-negative integers")
        assert isinstance(minor, int) and isinstance(items, int)
        owed[(debtor, creditor)] = Owed(minor, items)
    given_id, currency = doc.get("id"), doc.get("currency")
    if not isinstance(given_id, str) or not isinstance(currency, str):
        raise InvalidArgument("a statement has an id and a currency")
    if given_id != statement_id((a, b), start, end):
        raise InvalidArgument(f"a statement's id is {statement_id((a, b), start, end)!r}")
    rebuilt = statement_document(given_id, (a, b), start, end, currency, owed)
    if rebuilt != doc:
        raise InvalidArgument("the statement document has unexpected fields")
    return StatementParts(given_id, (a, b), start, end, currency, owed)


def sign_statement(doc: JsonObject, key: SigningKey) -> str:
    """Hex Ed25519 signature over the statement's canonical JSON."""
    return sign_document(doc, key)


def signed_statement(doc: JsonObject, signatures: Mapping[str, str]) -> JsonObject:
    """The recorded form: ``{"statement": doc, "signatures": {program: hex}}``."""
    return signed_document(STATEMENT_FIELD, doc, signatures)


def check_statement_signature(
    key: VerifyKey, doc: JsonObject, signature: JsonValue, signer: str, parts: StatementParts
) -> None:
    """VerificationError unless ``signature`` is ``signer``'s over the statement ``doc``
    (one party's signature, as a proposal carries it)."""
    check_signature(key, doc, signature, signer, f"statement {parts.id}")


def verify_signed_statement(
    signed: JsonValue, key_of: Callable[[str], VerifyKey]
) -> StatementParts:
    """The statement, once both parties' signatures verify; VerificationError otherwise."""
    doc, signatures = split_signed(signed, STATEMENT_FIELD)
    try:
        parts = statement_parts(doc)
    except InvalidArgument as exc:
        raise VerificationError(f"a malformed statement: {exc}") from None
    verify_signatures(doc, signatures, parts.parties, key_of, f"statement {parts.id}")
    return parts
