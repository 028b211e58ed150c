"""Settlement statements (docs/coalition.md): those recorded on this chain, signed by
both parties. Named like the settlement feature's documents, which these rows are.

Storage contract: a row is written on the caller's ``Connection``, in the transaction of
its ``statement`` entry; the statement id is unique and a row never changes once written.
The parties are stored sorted (``party_a < party_b``); ``signed`` is the document with
both signatures as canonical JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Index, Text, insert, or_, select
from sqlmodel import Field, SQLModel

from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.store.columns import from_micros, stored_object, to_micros


class StatementRow(SQLModel, table=True):
    """A settlement statement both parties signed, as recorded by a ``statement`` entry."""

    __tablename__ = "coalition_statements"
    __table_args__ = (
        # The listing, oldest period first, a page at a time (``statements_page``): of
        # one pair of parties, or of all.
        Index("ix_coalition_statements_pair_start", "party_a", "party_b", "period_start", "id"),
        Index("ix_coalition_statements_start", "period_start", "id"),
    )

    id: str = Field(primary_key=True, max_length=128)
    party_a: str = Field(max_length=32)
    party_b: str = Field(max_length=32)
    """The parties in sorted order (``party_a < party_b``)."""
    period_start: int = Field(sa_column=Column(BigInteger, nullable=False))
    period_end: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(max_length=3)
    signed: str = Field(sa_column=Column(Text, nullable=False))
    """``{"statement": doc, "signatures": {...}}`` as canonical JSON."""
    entry_id: str = Field(max_length=48)


statements = StatementRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Statement:
    """A recorded statement: its parties, period, currency and the signed document."""

    id: str
    parties: tuple[str, str]
    start: datetime
    end: datetime
    currency: str
    signed: JsonObject
    entry_id: str


def _statement(row: Any) -> Statement:
    return Statement(
        id=row.id,
        parties=(row.party_a, row.party_b),
        start=from_micros(row.period_start),
        end=from_micros(row.period_end),
        currency=row.currency,
        signed=stored_object(row.signed, "statement"),
        entry_id=row.entry_id,
    )


def insert_statement(
    conn: Connection,
    *,
    statement_id: str,
    parties: tuple[str, str],
    start: datetime,
    end: datetime,
    currency: str,
    signed: JsonObject,
    entry_id: str,
) -> None:
    conn.execute(
        insert(statements).values(
            id=statement_id,
            party_a=parties[0],
            party_b=parties[1],
            period_start=to_micros(start),
            period_end=to_micros(end),
            currency=currency,
            signed=canonical_json(signed).decode(),
            entry_id=entry_id,
        )
    )


def statement(conn: Connection, statement_id: str) -> Statement | None:
    row = conn.execute(select(statements).where(statements.c.id == statement_id)).first()
    return None if row is None else _statement(row)


def statements_between(
    conn: Connection,
    parties: tuple[str, str] | None = None,
    overlapping: tuple[datetime, datetime] | None = None,
) -> list[Statement]:
    """Recorded statements (of one sorted pair; meeting ``[start, end)``), oldest first."""
    query = select(statements)
    if parties is not None:
        query = query.where(statements.c.party_a == parties[0], statements.c.party_b == parties[1])
    if overlapping is not None:
        start, end = overlapping
        query = query.where(
            statements.c.period_start < to_micros(end), statements.c.period_end > to_micros(start)
        )
    query = query.order_by(statements.c.period_start, statements.c.id)
    return [_statement(row) for row in conn.execute(query)]


def statements_page(
    conn: Connection, parties: tuple[str, str] | None, limit: int, after: str | None = None
) -> list[Statement] | None:
    """Up to ``limit`` recorded statements (of one sorted pair) in (period start, id)
    order, from the one after the statement ``after`` (an id; None: the oldest); None when
    there is no statement ``after``. One ordered range scan of an index (and one primary
    key lookup for the cursor): the page's cost, however many statements there are."""
    c = statements.c
    query = select(statements)
    if parties is not None:
        query = query.where(c.party_a == parties[0], c.party_b == parties[1])
    if after is not None:
        start = conn.execute(select(c.period_start).where(c.id == after)).scalar()
        if start is None:
            return None
        # ``>=`` first: the index's range starts at the cursor (as ``members.lots_page``).
        query = query.where(c.period_start >= start, or_(c.period_start > start, c.id > after))
    query = query.order_by(c.period_start, c.id).limit(limit)
    return [_statement(row) for row in conn.execute(query)]
