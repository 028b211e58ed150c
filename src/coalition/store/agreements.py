"""Rate agreements (docs/coalition.md, "Rate agreements"): every version both partners
signed, as its ``agreement`` entry recorded it.

Storage contract: a row is written on the caller's ``Connection``, in the transaction of
its ``agreement`` entry; ``(id, version)`` is unique, so a new version is a new row; a row
never changes once written, and ``signed`` is the document with both signatures as
canonical JSON.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Connection, Text, insert, select
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
