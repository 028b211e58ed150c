"""Queries of the agreements, conversions and outbox tables, on a caller's connection.

Like ``repository``, every function takes an open ``Connection`` so the feature decides
the transaction: a conversion's row, its outbox row and its ledger entry commit together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, update

from coalition.errors import CoalitionError
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.entries import parse_time
from coalition.store.coalition_tables import agreements, conversion_answers, conversions, outbox
from coalition.store.repository import from_micros, stored_object, to_micros
from coalition.store.tables import entries

# ---------------------------------------------------------------------------- agreements


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


# --------------------------------------------------------------------------- conversions


@dataclass(frozen=True, slots=True)
class ConversionRecord:
    """A row of ``coalition_conversions``."""

    id: str
    account: str
    member_id: str
    to_program: str
    to_member_id: str
    agreement_id: str
    agreement_version: int
    amount: int
    credit: int
    value_minor: int
    created_at: datetime
    out_entry: str
    status: str
    reason: str | None
    final_entry: str | None


def insert_conversion(conn: Connection, record: ConversionRecord) -> None:
    conn.execute(
        insert(conversions).values(
            id=record.id,
            account=record.account,
            member_id=record.member_id,
            to_program=record.to_program,
            to_member_id=record.to_member_id,
            agreement_id=record.agreement_id,
            agreement_version=record.agreement_version,
            amount=record.amount,
            credit=record.credit,
            value_minor=record.value_minor,
            created_at=to_micros(record.created_at),
            out_entry=record.out_entry,
            status=record.status,
            reason=record.reason,
            final_entry=record.final_entry,
        )
    )


def _record(row: object) -> ConversionRecord:
    r = row._mapping  # type: ignore[attr-defined]
    return ConversionRecord(
        id=r["id"],
        account=r["account"],
        member_id=r["member_id"],
        to_program=r["to_program"],
        to_member_id=r["to_member_id"],
        agreement_id=r["agreement_id"],
        agreement_version=int(r["agreement_version"]),
        amount=int(r["amount"]),
        credit=int(r["credit"]),
        value_minor=int(r["value_minor"]),
        created_at=from_micros(int(r["created_at"])),
        out_entry=r["out_entry"],
        status=r["status"],
        reason=r["reason"],
        final_entry=r["final_entry"],
    )


def conversion(conn: Connection, conversion_id: str) -> ConversionRecord | None:
    row = conn.execute(select(conversions).where(conversions.c.id == conversion_id)).first()
    return None if row is None else _record(row)


def conversions_by_id(conn: Connection, ids: Sequence[str]) -> dict[str, ConversionRecord]:
    if not ids:
        return {}
    rows = conn.execute(select(conversions).where(conversions.c.id.in_(list(ids)))).all()
    return {row.id: _record(row) for row in rows}


def converted_between(
    conn: Connection, account: str, agreement_id: str, start: datetime, end: datetime
) -> int:
    """Points ``account`` converted under ``agreement_id`` in ``[start, end)``, refunded
    conversions excepted (they moved nothing)."""
    total = conn.execute(
        select(func.coalesce(func.sum(conversions.c.amount), 0)).where(
            conversions.c.account == account,
            conversions.c.agreement_id == agreement_id,
            conversions.c.created_at >= to_micros(start),
            conversions.c.created_at < to_micros(end),
            conversions.c.status != "refunded",
        )
    ).scalar_one()
    return int(total)


def unsettled_out(conn: Connection, to_program: str, since: datetime | None) -> int:
    """Minor units owed to ``to_program`` for conversions pending or completed since
    ``since`` (the end of the last statement; None: ever)."""
    query = select(func.coalesce(func.sum(conversions.c.value_minor), 0)).where(
        conversions.c.to_program == to_program, conversions.c.status != "refunded"
    )
    if since is not None:
        query = query.where(conversions.c.created_at >= to_micros(since))
    return int(conn.execute(query).scalar_one())


def finish_conversion(
    conn: Connection,
    conversion_id: str,
    status: str,
    reason: str | None,
    entry_id: str,
    at: datetime,
) -> bool:
    """Move a pending conversion to ``status``; False if it was no longer pending."""
    result = conn.execute(
        update(conversions)
        .where(conversions.c.id == conversion_id, conversions.c.status == "pending")
        .values(status=status, reason=reason, final_entry=entry_id, finished_at=to_micros(at))
    )
    return bool(result.rowcount)


def out_entry_body(conn: Connection, entry_id: str) -> JsonObject | None:
    row = conn.execute(select(entries.c.body).where(entries.c.entry_id == entry_id)).first()
    return None if row is None else stored_object(row.body)


def out_entry_bodies(conn: Connection, entry_ids: Sequence[str]) -> dict[str, JsonObject]:
    if not entry_ids:
        return {}
    rows = conn.execute(
        select(entries.c.entry_id, entries.c.body).where(entries.c.entry_id.in_(list(entry_ids)))
    ).all()
    return {row.entry_id: stored_object(row.body) for row in rows}


# ------------------------------------------------------------------- answers (target B)


@dataclass(frozen=True, slots=True)
class Answer:
    """The target's recorded answer to one conversion."""

    status: str
    entry_id: str
    message: JsonObject
    """The signed receipt or rejection, ``{"envelope", "signature"}``."""


def insert_answer(
    conn: Connection,
    from_program: str,
    conversion_id: str,
    answer: Answer,
    *,
    value_minor: int,
    out_at: datetime | None,
    at: datetime,
) -> None:
    conn.execute(
        insert(conversion_answers).values(
            from_program=from_program,
            conversion_id=conversion_id,
            status=answer.status,
            entry_id=answer.entry_id,
            value_minor=value_minor,
            out_at=0 if out_at is None else to_micros(out_at),
            created_at=to_micros(at),
            answer=canonical_json(answer.message).decode(),
        )
    )


def answers(conn: Connection, from_program: str, ids: Iterable[str]) -> dict[str, Answer]:
    """The recorded answers to ``from_program``'s conversions among ``ids``."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    rows = conn.execute(
        select(conversion_answers).where(
            conversion_answers.c.from_program == from_program,
            conversion_answers.c.conversion_id.in_(wanted),
        )
    ).all()
    return {
        row.conversion_id: Answer(row.status, row.entry_id, stored_object(row.answer, "answer"))
        for row in rows
    }


def unsettled_in(conn: Connection, from_program: str, since: datetime | None) -> int:
    """Minor units ``from_program`` owes for conversions credited here whose convert-out
    is at or after ``since`` (None: ever)."""
    query = select(func.coalesce(func.sum(conversion_answers.c.value_minor), 0)).where(
        conversion_answers.c.from_program == from_program,
        conversion_answers.c.status == "credited",
    )
    if since is not None:
        query = query.where(conversion_answers.c.out_at >= to_micros(since))
    return int(conn.execute(query).scalar_one())


def _captured(
    conn: Connection, kind: str, partner: str, since: datetime | None, time_key: str
) -> int:
    """Minor units of ``kind`` entries (``hold-capture`` or ``redemption-receipt``) with
    ``partner`` dated at or after ``since`` by ``time_key``."""
    rows = conn.execute(select(entries.c.body).where(entries.c.kind == kind)).all()
    total = 0
    for row in rows:
        body = stored_object(row.body)
        hold, value, at = body.get("hold"), body.get("value_minor"), body.get(time_key)
        if not isinstance(hold, dict) or hold.get("partner") != partner:
            continue
        if not isinstance(value, int) or not isinstance(at, str):
            continue
        if since is None or parse_time(at) >= since:
            total += value
    return total


def owed_to(conn: Connection, program: str, partner: str, since: datetime | None) -> int:
    """What ``program`` owes ``partner`` unsettled, from this (``program``'s) node:
    conversions pending or completed, and holds captured, since ``since``."""
    del program  # every row here is the program's own
    return unsettled_out(conn, partner, since) + _captured(
        conn, "hold-capture", partner, since, "at"
    )


def owed_by(conn: Connection, partner: str, since: datetime | None) -> int:
    """What ``partner`` owes this node unsettled: conversions credited here and
    redemptions of ``partner``'s points captured here, since ``since``."""
    return unsettled_in(conn, partner, since) + _captured(
        conn, "redemption-receipt", partner, since, "captured_at"
    )


# --------------------------------------------------------------------------- statements


def settled_until(conn: Connection, program: str, partner: str) -> datetime | None:
    """The end of the latest period a recorded statement between the two covers, or None.

    Read from the ``statement`` entries themselves (few), so it holds whichever module
    recorded them; a statement that does not parse is skipped (the auditor reports it).
    """
    query = select(entries.c.body).where(entries.c.kind == "statement", entries.c.account == "-")
    rows = conn.execute(query).all()
    latest: datetime | None = None
    for row in rows:
        try:
            document = stored_object(row.body).get("statement")
            statement = document.get("statement") if isinstance(document, dict) else None
            if not isinstance(statement, dict):
                continue
            parties = statement.get("parties")
            period = statement.get("period")
            if not isinstance(parties, list) or {program, partner} - set(map(str, parties)):
                continue
            if not isinstance(period, dict) or not isinstance(period.get("end"), str):
                continue
            end = parse_time(str(period["end"]))
        except CoalitionError:
            continue
        if latest is None or end > latest:
            latest = end
    return latest


# --------------------------------------------------------------------------------- outbox


@dataclass(frozen=True, slots=True)
class OutboxItem:
    conversion_id: str
    to_program: str
    queued_at: int
    """Wall-clock microseconds."""
    attempts: int


def enqueue(conn: Connection, conversion_id: str, to_program: str, now_us: int) -> None:
    conn.execute(
        insert(outbox).values(
            conversion_id=conversion_id,
            to_program=to_program,
            queued_at=now_us,
            next_attempt_at=now_us,
            attempts=0,
        )
    )


def due(conn: Connection, to_program: str, now_us: int, limit: int) -> list[OutboxItem]:
    """Rows for ``to_program`` whose next attempt has come, oldest first."""
    rows = conn.execute(
        select(outbox)
        .where(outbox.c.to_program == to_program, outbox.c.next_attempt_at <= now_us)
        .order_by(outbox.c.queued_at, outbox.c.conversion_id)
        .limit(limit)
    ).all()
    return [
        OutboxItem(row.conversion_id, row.to_program, int(row.queued_at), int(row.attempts))
        for row in rows
    ]


def next_due(conn: Connection, to_program: str) -> int | None:
    """The earliest next attempt for ``to_program`` (wall-clock microseconds), or None."""
    value = conn.execute(
        select(func.min(outbox.c.next_attempt_at)).where(outbox.c.to_program == to_program)
    ).scalar_one()
    return None if value is None else int(value)


def postpone(conn: Connection, ids: Sequence[str], next_us: int, error: str) -> None:
    """Record a failed attempt for ``ids``: try again at ``next_us``."""
    if not ids:
        return
    conn.execute(
        update(outbox)
        .where(outbox.c.conversion_id.in_(list(ids)))
        .values(
            next_attempt_at=next_us,
            attempts=outbox.c.attempts + 1,
            last_error=error[:1000],
        )
    )


def dequeue(conn: Connection, conversion_id: str) -> None:
    conn.execute(delete(outbox).where(outbox.c.conversion_id == conversion_id))


def pending_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(outbox)).scalar_one())
