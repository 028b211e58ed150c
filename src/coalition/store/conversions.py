"""Conversions between partners (docs/coalition.md): both sides' records and the outbox.

``coalition_conversions`` is the source side's view of each conversion it started
(``pending`` until B's receipt or signed rejection); ``coalition_conversion_answers`` is
the target side's single answer per conversion id, the signed receipt or rejection it
returns on every redelivery. ``coalition_conversion_totals`` keeps running sums of those
rows per partner, so a credit-limit check (``unsettled``, which lives here because it
reads those sums) costs one row however long the history is. ``coalition_outbox`` lists
the conversions still to deliver; it is durable, so a restarted node resumes them.

Storage contract: every function runs on the caller's ``Connection``; a conversion's row,
its outbox row, its totals and its ledger entry commit together. A conversion id is unique
on the source side, and ``(from_program, conversion_id)`` on the target side, so a
conversion is credited at most once. A conversion leaves ``pending`` once, for
``completed`` or ``refunded`` (``finish_conversion`` touches only pending rows); an answer
never changes. An outbox row is deleted when the answer is recorded.

Outbox claims: a row names the process that delivers it (``claimed_by``) until
``claim_until``. ``enqueue`` claims it for its writer in the convert-out's transaction;
``claimed`` lists one holder's due rows; ``take_lapsed`` moves rows nobody holds (claim
lapsed, or none) to a new holder, skipping rows another transaction has locked
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and re-checking the lapse in the UPDATE itself,
so two takers never both get a row. A claim is a division of work, not a lock: delivery
is safe to repeat (the partner answers once per conversion id), so a lapse while its
holder still works sends a row twice at worst, never settles it twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Index,
    Table,
    Text,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlmodel import Field, SQLModel

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.store.columns import from_micros, stored_object, to_micros
from coalition.store.ledger import entries
from coalition.store.redemptions import holds, partner_redemptions
from coalition.store.statements import statements


class ConversionRow(SQLModel, table=True):
    """A conversion this node started (source side): the member's quote and its status."""

    __tablename__ = "coalition_conversions"
    __table_args__ = (
        # The daily cap: one member's conversions under one agreement in a day.
        Index("ix_conversions_cap", "account", "agreement_id", "created_at"),
        # The credit limit: what is unsettled towards one partner.
        Index("ix_conversions_partner", "to_program", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=128)
    account: str = Field(max_length=64)
    member_id: str = Field(max_length=64)
    to_program: str = Field(max_length=32)
    to_member_id: str = Field(max_length=64)
    agreement_id: str = Field(max_length=128)
    agreement_version: int = Field(sa_column=Column(BigInteger, nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    credit: int = Field(sa_column=Column(BigInteger, nullable=False))
    value_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    out_entry: str = Field(max_length=48)
    status: str = Field(max_length=16)
    """``pending``, ``completed`` or ``refunded``."""
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    final_entry: str | None = Field(default=None, max_length=48)
    finished_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class ConversionAnswerRow(SQLModel, table=True):
    """The target side's one answer to a partner's conversion: credited or rejected."""

    __tablename__ = "coalition_conversion_answers"
    __table_args__ = (Index("ix_conversion_answers_partner", "from_program", "created_at"),)

    from_program: str = Field(primary_key=True, max_length=32)
    conversion_id: str = Field(primary_key=True, max_length=128)
    status: str = Field(max_length=16)
    """``credited`` or ``rejected`` (an abort is recorded as ``rejected``)."""
    entry_id: str = Field(max_length=48)
    """The ``convert-in`` or ``convert-reject`` entry."""
    value_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    """What the source owes for a credited conversion (0 when rejected)."""
    out_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    """The time of the source's convert-out (0 when unknown: an abort of an unseen one)."""
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    answer: str = Field(sa_column=Column(Text, nullable=False))
    """The signed receipt or rejection, ``{"envelope", "signature"}`` as JSON."""


class ConversionTotalRow(SQLModel, table=True):
    """The sum of ``value_minor`` over this node's conversion rows of one partner in one
    state, updated in the transaction of every row change; created from the rows the first
    time a writer reads it (so a database from before this table needs no migration)."""

    __tablename__ = "coalition_conversion_totals"

    partner: str = Field(primary_key=True, max_length=32)
    state: str = Field(primary_key=True, max_length=16)
    """``pending`` or ``completed`` (conversions to ``partner``), ``credited`` (answers to
    conversions from ``partner``)."""
    minor: int = Field(sa_column=Column(BigInteger, nullable=False))


class OutboxRow(SQLModel, table=True):
    """A conversion still to deliver to its target; deleted when the answer is recorded."""

    __tablename__ = "coalition_outbox"
    __table_args__ = (Index("ix_outbox_due", "to_program", "next_attempt_at"),)

    conversion_id: str = Field(primary_key=True, max_length=128)
    to_program: str = Field(max_length=32)
    queued_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    """Wall-clock time the conversion was written: the abort deadline counts from it."""
    next_attempt_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    claimed_by: str | None = Field(default=None, max_length=128)
    """The process delivering the row (``Outbox.holder``); None: nobody yet."""
    claim_until: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    """Wall-clock microseconds when the claim lapses and the lease holder may take it."""


conversions = ConversionRow.__table__  # type: ignore[attr-defined]
conversion_answers = ConversionAnswerRow.__table__  # type: ignore[attr-defined]
conversion_totals = ConversionTotalRow.__table__  # type: ignore[attr-defined]
outbox = OutboxRow.__table__  # type: ignore[attr-defined]


# ---------------------------------------------------------- conversions (source side)


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


# The statements of the per-conversion paths are built once with bind parameters, so
# running one costs no expression building or cache-key computation.
_INSERT_CONVERSION = insert(conversions)
_INSERT_ANSWER = insert(conversion_answers)
_ENQUEUE = insert(outbox)
_DEQUEUE = delete(outbox).where(outbox.c.conversion_id == bindparam("conversion_id"))

_FINISH = (
    update(conversions)
    .where(conversions.c.id == bindparam("conversion_id"), conversions.c.status == "pending")
    .values(
        status=bindparam("status"),
        reason=bindparam("reason"),
        final_entry=bindparam("final_entry"),
        finished_at=bindparam("finished_at"),
    )
)

_CONVERTED = select(func.coalesce(func.sum(conversions.c.amount), 0)).where(
    conversions.c.account == bindparam("account"),
    conversions.c.agreement_id == bindparam("agreement_id"),
    conversions.c.created_at >= bindparam("start"),
    conversions.c.created_at < bindparam("end"),
    conversions.c.status != "refunded",
)

_BUMP = (
    update(conversion_totals)
    .where(conversion_totals.c.partner == bindparam("p"))
    .values(
        minor=conversion_totals.c.minor
        + case(
            (conversion_totals.c.state == "pending", bindparam("d_pending")),
            (conversion_totals.c.state == "completed", bindparam("d_completed")),
            (conversion_totals.c.state == "credited", bindparam("d_credited")),
            else_=0,
        )
    )
)

_TOTALS_OF = select(conversion_totals.c.state, conversion_totals.c.minor).where(
    conversion_totals.c.partner == bindparam("p")
)

_HOLDS_CAPTURED = select(func.coalesce(func.sum(holds.c.value_minor), 0)).where(
    holds.c.partner == bindparam("p"), holds.c.status == "captured"
)

_REDEMPTIONS_CAPTURED = select(func.coalesce(func.sum(partner_redemptions.c.value_minor), 0)).where(
    partner_redemptions.c.program == bindparam("p"), partner_redemptions.c.status == "captured"
)

_STATEMENTS_OF = select(statements.c.id, statements.c.entry_id).where(
    statements.c.party_a == bindparam("a"), statements.c.party_b == bindparam("b")
)


def insert_conversion(conn: Connection, record: ConversionRecord) -> None:
    conn.execute(
        _INSERT_CONVERSION,
        dict(
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
            finished_at=None,
        ),
    )
    if record.status in ("pending", "completed"):
        _bump(conn, record.to_program, {record.status: record.value_minor})


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
        _CONVERTED,
        {
            "account": account,
            "agreement_id": agreement_id,
            "start": to_micros(start),
            "end": to_micros(end),
        },
    ).scalar_one()
    return int(total)


def finish_conversion(
    conn: Connection,
    record: ConversionRecord,
    status: str,
    reason: str | None,
    entry_id: str,
    at: datetime,
) -> bool:
    """Move a pending conversion to ``status`` (``completed`` or ``refunded``); False, and
    nothing changed, if it was no longer pending (settled by a concurrent writer)."""
    result = conn.execute(
        _FINISH,
        {
            "conversion_id": record.id,
            "status": status,
            "reason": reason,
            "final_entry": entry_id,
            "finished_at": to_micros(at),
        },
    )
    if not result.rowcount:
        return False
    completed = record.value_minor if status == "completed" else 0
    _bump(conn, record.to_program, {"pending": -record.value_minor, "completed": completed})
    return True


def out_entry_bodies(conn: Connection, entry_ids: Sequence[str]) -> dict[str, JsonObject]:
    if not entry_ids:
        return {}
    rows = conn.execute(
        select(entries.c.entry_id, entries.c.body).where(entries.c.entry_id.in_(list(entry_ids)))
    ).all()
    return {row.entry_id: stored_object(row.body) for row in rows}


# -------------------------------------------------------------- answers (target side)


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
        _INSERT_ANSWER,
        dict(
            from_program=from_program,
            conversion_id=conversion_id,
            status=answer.status,
            entry_id=answer.entry_id,
            value_minor=value_minor,
            out_at=0 if out_at is None else to_micros(out_at),
            created_at=to_micros(at),
            answer=canonical_json(answer.message).decode(),
        ),
    )
    if answer.status == "credited":
        _bump(conn, from_program, {"credited": value_minor})


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


# -------------------------------------------------------------- unsettled obligations


_TOTALS: dict[str, tuple[Table, Column[str]]] = {
    "pending": (conversions, conversions.c.to_program),
    "completed": (conversions, conversions.c.to_program),
    "credited": (conversion_answers, conversion_answers.c.from_program),
}

_statement_owed: dict[tuple[str, str], dict[str, int]] = {}
"""Parsed ``owed`` of recorded statements by (statement id, entry id): they never change."""

_statement_lock = threading.Lock()


def _bump(conn: Connection, partner: str, deltas: dict[str, int]) -> None:
    """Keep the running totals in step with a row change, in one statement (a total not
    created yet is left to be summed from the rows when first read)."""
    if any(deltas.values()):
        conn.execute(
            _BUMP,
            {
                "p": partner,
                "d_pending": deltas.get("pending", 0),
                "d_completed": deltas.get("completed", 0),
                "d_credited": deltas.get("credited", 0),
            },
        )


def _totals(conn: Connection, partner: str, states: Sequence[str], *, keep: bool) -> int:
    """``value_minor`` summed over the rows of ``partner`` in ``states``: the running
    totals, or the rows' sums for a total not created yet (then stored when ``keep``:
    inside the writer's transaction only)."""
    found: dict[str, int] = dict(conn.execute(_TOTALS_OF, {"p": partner}).all())
    total = 0
    for state in states:
        if state in found:
            total += int(found[state])
            continue
        table, partner_column = _TOTALS[state]
        value = int(
            conn.execute(
                select(func.coalesce(func.sum(table.c.value_minor), 0)).where(
                    partner_column == partner, table.c.status == state
                )
            ).scalar_one()
        )
        if keep:
            conn.execute(
                insert(conversion_totals).values(partner=partner, state=state, minor=value)
            )
        total += value
    return total


def _captured(conn: Connection, program: str, debtor: str, creditor: str) -> int:
    """Minor units of partner redemptions captured between the two (``hold-capture`` on
    the debtor's chain, ``redemption-receipt`` on the creditor's)."""
    if program == debtor:
        return int(conn.execute(_HOLDS_CAPTURED, {"p": creditor}).scalar_one())
    return int(conn.execute(_REDEMPTIONS_CAPTURED, {"p": debtor}).scalar_one())


def _settled(conn: Connection, debtor: str, creditor: str) -> int:
    """What the recorded statements between the two settled from ``debtor`` to ``creditor``."""
    pair = sorted((debtor, creditor))
    rows = conn.execute(_STATEMENTS_OF, {"a": pair[0], "b": pair[1]}).all()
    total = 0
    for row in rows:
        key = (row.id, row.entry_id)
        with _statement_lock:
            owed = _statement_owed.get(key)
        if owed is None:
            owed = _owed_of(conn, row.id)
            with _statement_lock:
                _statement_owed[key] = owed
        total += owed.get(f"{debtor}->{creditor}", 0)
    return total


def _owed_of(conn: Connection, statement_id: str) -> dict[str, int]:
    text = conn.execute(
        select(statements.c.signed).where(statements.c.id == statement_id)
    ).scalar_one()
    document = stored_object(text, "statement").get("statement")
    owed = document.get("owed") if isinstance(document, dict) else None
    if not isinstance(owed, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in owed.values()
    ):
        raise VerificationError(f"recorded statement {statement_id} has no valid owed amounts")
    return {str(k): int(v) for k, v in owed.items()}  # type: ignore[arg-type]


def unsettled(
    conn: Connection,
    program: str,
    debtor: str,
    creditor: str,
    *,
    in_flight: bool = False,
    keep: bool = False,
) -> int:
    """Minor units ``debtor`` owes ``creditor`` by ``program``'s chain that no recorded
    statement between them settled: the obligations ``points.settlement.obligations``
    reads from the chain over all time (completed convert-outs, convert-ins, hold-captures,
    redemption-receipts) less each statement's ``owed`` for that direction. ``program``
    is one of the two. With ``in_flight`` the source side adds its pending conversions
    (a credit-limit check counts what may still complete). Pass ``keep`` only inside the
    writer's transaction. Cost: a few indexed reads, whatever the history's length.
    """
    if program == debtor:
        states = ("completed", "pending") if in_flight else ("completed",)
        owed = _totals(conn, creditor, states, keep=keep)
    elif program == creditor:
        owed = _totals(conn, debtor, ("credited",), keep=keep)
    else:
        raise InvalidArgument(f"{program} knows only its own obligations")
    return owed + _captured(conn, program, debtor, creditor) - _settled(conn, debtor, creditor)


# ----------------------------------------------------------------------------- outbox


@dataclass(frozen=True, slots=True)
class OutboxItem:
    conversion_id: str
    to_program: str
    queued_at: int
    """Wall-clock microseconds."""
    attempts: int


def enqueue(
    conn: Connection,
    conversion_id: str,
    to_program: str,
    now_us: int,
    *,
    holder: str | None = None,
    claim_us: int = 0,
) -> None:
    """Queue a conversion for delivery, claimed by ``holder`` for ``claim_us``."""
    conn.execute(
        _ENQUEUE,
        dict(
            conversion_id=conversion_id,
            to_program=to_program,
            queued_at=now_us,
            next_attempt_at=now_us,
            attempts=0,
            last_error=None,
            claimed_by=holder,
            claim_until=None if holder is None else now_us + claim_us,
        ),
    )


def _items(rows: Iterable[object]) -> list[OutboxItem]:
    return [
        OutboxItem(r.conversion_id, r.to_program, int(r.queued_at), int(r.attempts))  # type: ignore[attr-defined]
        for r in rows
    ]


_ITEM_COLUMNS = (outbox.c.conversion_id, outbox.c.to_program, outbox.c.queued_at, outbox.c.attempts)

_CLAIMED = (
    select(*_ITEM_COLUMNS)
    .where(
        outbox.c.to_program == bindparam("to_program"),
        outbox.c.claimed_by == bindparam("holder"),
        outbox.c.next_attempt_at <= bindparam("now"),
    )
    .order_by(outbox.c.queued_at, outbox.c.conversion_id)
    .limit(bindparam("limit"))
)


def _unheld(now_us: int) -> ColumnElement[bool]:
    return or_(outbox.c.claimed_by.is_(None), outbox.c.claim_until <= now_us)


def claimed(
    conn: Connection, to_program: str, holder: str, now_us: int, limit: int
) -> list[OutboxItem]:
    """``holder``'s rows for ``to_program`` whose next attempt has come, oldest first."""
    rows = conn.execute(
        _CLAIMED, {"to_program": to_program, "holder": holder, "now": now_us, "limit": limit}
    ).all()
    return _items(rows)


def lapsed_count(conn: Connection, to_program: str, now_us: int) -> int:
    """Due rows for ``to_program`` that nobody holds: what ``take_lapsed`` would take."""
    query = (
        select(func.count())
        .select_from(outbox)
        .where(
            outbox.c.to_program == to_program,
            outbox.c.next_attempt_at <= now_us,
            _unheld(now_us),
        )
    )
    return int(conn.execute(query).scalar_one())


def take_lapsed(
    conn: Connection, to_program: str, holder: str, now_us: int, claim_us: int, limit: int
) -> int:
    """Claim for ``holder`` up to ``limit`` due rows for ``to_program`` that nobody holds
    (oldest first); how many it took."""
    candidates = (
        select(outbox.c.conversion_id)
        .where(
            outbox.c.to_program == to_program,
            outbox.c.next_attempt_at <= now_us,
            _unheld(now_us),
        )
        .order_by(outbox.c.queued_at, outbox.c.conversion_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = conn.execute(
        update(outbox)
        .where(outbox.c.conversion_id.in_(candidates.scalar_subquery()), _unheld(now_us))
        .values(claimed_by=holder, claim_until=now_us + claim_us)
    )
    return int(result.rowcount)


def release(conn: Connection, holder: str) -> None:
    """Give up ``holder``'s claims (a clean stop): the lease holder takes them at once."""
    conn.execute(
        update(outbox)
        .where(outbox.c.claimed_by == holder)
        .values(claimed_by=None, claim_until=None)
    )


def next_due(conn: Connection, to_program: str, holder: str | None = None) -> int | None:
    """The earliest next attempt for ``to_program`` (of ``holder``'s rows when given;
    wall-clock microseconds), or None."""
    query = select(func.min(outbox.c.next_attempt_at)).where(outbox.c.to_program == to_program)
    if holder is not None:
        query = query.where(outbox.c.claimed_by == holder)
    value = conn.execute(query).scalar_one()
    return None if value is None else int(value)


def postpone(
    conn: Connection, ids: Sequence[str], next_us: int, error: str, claim_us: int = 0
) -> None:
    """Record a failed attempt for ``ids``: try again at ``next_us``, the claim kept until
    ``claim_us`` after that."""
    if not ids:
        return
    conn.execute(
        update(outbox)
        .where(outbox.c.conversion_id.in_(list(ids)))
        .values(
            next_attempt_at=next_us,
            attempts=outbox.c.attempts + 1,
            last_error=error[:1000],
            claim_until=case((outbox.c.claimed_by.is_(None), None), else_=next_us + claim_us),
        )
    )


def dequeue(conn: Connection, conversion_id: str) -> None:
    conn.execute(_DEQUEUE, {"conversion_id": conversion_id})


def pending_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(outbox)).scalar_one())
