"""Rate agreements (docs/coalition.md, "Rate agreements"): every version both partners
signed, as its ``agreement`` entry recorded it.

Storage contract: a row is written on the caller's ``Connection``, in the transaction of
its ``agreement`` entry; ``(id, version)`` is unique, so a new version is a new row; a row
never changes once written, and ``signed`` is the document with both signatures as
canonical JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import BigInteger, Column, Connection, Text, and_, insert, or_, select, tuple_
from sqlmodel import Field, SQLModel

from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.store.columns import stored_object, to_micros


class AgreementRow(SQLModel, table=True):
    """One version of a rate agreement signed by both partners."""

    __tablename__ = "coalition_agreements"

    id: str = Field(primary_key=True, max_length=128)
    version: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    from_program: str = Field(max_length=32)
    to_program: str = Field(max_length=32)
    signed: str = Field(sa_column=Column(Text, nullable=False))
    """``{"agreement": doc, "signatures": {...}}`` as canonical JSON."""
    valid_from: int = Field(sa_column=Column(BigInteger, nullable=False))
    valid_until: int = Field(sa_column=Column(BigInteger, nullable=False))
    entry_id: str = Field(max_length=48)


agreements = AgreementRow.__table__  # type: ignore[attr-defined]


def insert_agreement(
    conn: Connection,
    signed: JsonObject,
    *,
    agreement_id: str,
    version: int,
    pair: tuple[str, str],
    valid: tuple[datetime, datetime],
    entry_id: str,
) -> None:
    conn.execute(
        insert(agreements).values(
            id=agreement_id,
            version=version,
            from_program=pair[0],
            to_program=pair[1],
            signed=canonical_json(signed).decode(),
            valid_from=to_micros(valid[0]),
            valid_until=to_micros(valid[1]),
            entry_id=entry_id,
        )
    )


def agreement(conn: Connection, agreement_id: str, version: int) -> JsonObject | None:
    """The signed agreement recorded under ``(id, version)``, if any."""
    row = conn.execute(
        select(agreements.c.signed).where(
            agreements.c.id == agreement_id, agreements.c.version == version
        )
    ).first()
    return None if row is None else stored_object(row.signed, "agreement")


def all_agreements(conn: Connection) -> list[JsonObject]:
    """Every recorded signed agreement, by id then version."""
    rows = conn.execute(
        select(agreements.c.signed).order_by(agreements.c.id, agreements.c.version)
    ).all()
    return [stored_object(row.signed, "agreement") for row in rows]


def agreements_page(
    conn: Connection, limit: int, after: tuple[str, int] | None = None
) -> list[JsonObject]:
    """Up to ``limit`` signed agreements in (id, version) order, from the one after
    ``after`` (an (id, version); None: the first): one range scan of the primary key."""
    c = agreements.c
    query = select(c.signed)
    if after is not None:
        # ``>=`` first: the key's range starts at the cursor (as ``members.lots_page``).
        query = query.where(
            c.id >= after[0], or_(c.id > after[0], and_(c.id == after[0], c.version > after[1]))
        )
    rows = conn.execute(query.order_by(c.id, c.version).limit(limit)).all()
    return [stored_object(row.signed, "agreement") for row in rows]


def agreements_related(
    conn: Connection, ids: Iterable[str], pairs: Iterable[tuple[str, str]]
) -> list[JsonObject]:
    """Every agreement between the ``pairs`` (from, to), and every version of those and
    of the agreements ``ids`` (a new version may name another pair): what deciding which
    agreements of those pairs are in force needs (``points.rates.current_agreements``)."""
    c = agreements.c
    wanted_pairs = sorted(set(pairs))
    if not wanted_pairs:
        return []
    rivals = select(c.id).where(tuple_(c.from_program, c.to_program).in_(wanted_pairs))
    wanted_ids = sorted(set(ids) | set(conn.execute(rivals).scalars()))
    if not wanted_ids:
        return []
    query = select(c.signed).where(c.id.in_(wanted_ids)).order_by(c.id, c.version)
    return [stored_object(row.signed, "agreement") for row in conn.execute(query)]
