"""Running totals of the value flowing between brands, kept beside the entries so the
explorer's flows cost a page of rows, not a read of every flow entry in the log.

``flow_totals`` holds, for each stored level (``points.flows.LEVELS_S``: day, hour,
minute), each bucket of that size and each flow (kind, source, target, currency), the sums
the explorer shows. Storage contract:

- The rows are derived state: they MUST always equal the fold of the chain's flow entries
  (``explorer.flows.conversion_flows``, the reference; ``tests/integration/test_reads.py``
  compares them). So ``record_entries`` runs on the writer's ``Connection``, in the
  transaction that inserts the entries, after they are inserted (``Transaction.flush``).
- A ``convert-refund`` subtracts its ``convert-out``'s delta in the convert-out's buckets;
  the convert-out is found through ``coalition_conversions.out_entry``. A refund whose
  convert-out is not on this chain adds nothing (the reference skips it too).
- ``rebuild`` recomputes every row from the entries (the migration that made the table
  runs it; an operator may too); nothing else deletes rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import BigInteger, Column, Connection, Integer, String, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, SQLModel

from coalition.errors import CorruptStore, VerificationError
from coalition.points import kinds, model
from coalition.points.flows import LEVELS_S, FlowDelta, flow_delta, level_for, refund_of
from coalition.store.columns import stored_object
from coalition.store.conversions import conversions
from coalition.store.ledger import entries

CHUNK = 5000
_SUMS = ("count", "points_out", "points_in", "value_minor", "refunded")
_REFUND = model.kind_of(model.ConvertRefund)
_FLOW_KINDS = frozenset(kinds.FLOW_KINDS)


class FlowTotalRow(SQLModel, table=True):
    """The sums of one flow in one bucket of one level (seconds: 86400, 3600 or 60)."""

    __tablename__ = "flow_totals"

    level: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    bucket: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    """The bucket's start, whole seconds since the epoch (UTC), a multiple of ``level``."""
    kind: str = Field(sa_column=Column(String(16), primary_key=True))
    source: str = Field(sa_column=Column(String(32), primary_key=True))
    target: str = Field(sa_column=Column(String(32), primary_key=True))
    currency: str = Field(sa_column=Column(String(8), primary_key=True))
    count: int = Field(sa_column=Column(BigInteger, nullable=False))
    points_out: int = Field(sa_column=Column(BigInteger, nullable=False))
    points_in: int = Field(sa_column=Column(BigInteger, nullable=False))
    value_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    refunded: int = Field(sa_column=Column(BigInteger, nullable=False))


flow_totals: Table = FlowTotalRow.__table__  # type: ignore[attr-defined]
_KEY = ("level", "bucket", "kind", "source", "target", "currency")


def _parsed(text: str) -> model.Entry:
    try:
        return model.parse_entry(stored_object(text))
    except VerificationError as exc:
        raise CorruptStore(f"a stored flow entry does not parse: {exc}") from exc


def _out_delta(conn: Connection, conversion_id: str) -> FlowDelta | None:
    """The delta the convert-out of ``conversion_id`` added, if it is on this chain."""
    row = conn.execute(
        select(entries.c.body)
        .select_from(conversions.join(entries, entries.c.entry_id == conversions.c.out_entry))
        .where(conversions.c.id == conversion_id)
    ).first()
    return None if row is None else flow_delta(_parsed(row.body))


Totals = dict[tuple[int, int, str, str, str, str], list[int]]


def _add(totals: Totals, delta: FlowDelta) -> None:
    sums = (delta.count, delta.points_out, delta.points_in, delta.value_minor, delta.refunded)
    for level in LEVELS_S:
        key = (level, delta.at_s - delta.at_s % level, *delta.key)
        found = totals.setdefault(key, [0] * len(_SUMS))
        for i, value in enumerate(sums):
            found[i] += value


@functools.cache
def _upsert_statement(dialect_name: str) -> Any:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET sum = sum + excluded.sum``, built once
    per dialect (building it costs far more than running it)."""
    dialect: Any = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(flow_totals)
    return statement.on_conflict_do_update(
        index_elements=[flow_totals.c[k] for k in _KEY],
        set_={s: flow_totals.c[s] + statement.excluded[s] for s in _SUMS},
    )


def _upsert(conn: Connection, totals: Totals) -> None:
    if not totals:
        return
    conn.execute(
        _upsert_statement(conn.dialect.name),
        [
            dict(zip(_KEY, key, strict=True)) | dict(zip(_SUMS, sums, strict=True))
            for key, sums in totals.items()
        ],
    )


def record_entries(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add the flow entries among ``rows`` (staged ``entries`` rows: ``kind``, ``body``
    text) to the totals. MUST run in the transaction that inserted them, after the insert;
    rows of other kinds cost one set lookup each."""
    totals: Totals = {}
    for row in rows:
        if row["kind"] not in _FLOW_KINDS:
            continue
        # Bytes the writer has just encoded: parsed without the stored-text checks.
        entry = model.parse_entry(msgspec.json.decode(row["body"]))
        if isinstance(entry, model.ConvertRefund):
            out = _out_delta(conn, entry.conversion.id)
            if out is not None:
                _add(totals, refund_of(out))
            continue
        delta = flow_delta(entry)
        if delta is not None:
            _add(totals, delta)
    _upsert(conn, totals)


def flow_entry_bodies(conn: Connection) -> Iterator[str]:
    """The body text of every flow entry, in log order (``ix_entries_kind``)."""
    query = (
        select(entries.c.body)
        .where(entries.c.kind.in_(sorted(_FLOW_KINDS)))
        .order_by(entries.c.log_index)
        .execution_options(stream_results=True, yield_per=CHUNK)
    )
    for row in conn.execute(query):
        yield row.body


def fold(bodies: Iterable[str]) -> Totals:
    """The totals of a chain's flow entries (body texts in log order), folded in memory:
    a refund finds its convert-out among those before it. What the writer's running
    totals MUST equal (``coalition check`` compares them)."""
    sent: dict[str, FlowDelta] = {}
    totals: Totals = {}
    for text in bodies:
        entry = _parsed(text)
        if isinstance(entry, model.ConvertRefund):
            out = sent.pop(entry.conversion.id, None)
            if out is not None:
                _add(totals, refund_of(out))
            continue
        delta = flow_delta(entry)
        if delta is None:
            continue
        if isinstance(entry, model.ConvertOut):
            sent[entry.conversion.id] = delta
        _add(totals, delta)
    return totals


def stored_totals(conn: Connection) -> Totals:
    """Every stored row, by key."""
    rows = conn.execute(select(flow_totals))
    return {tuple(r[k] for k in _KEY): [int(r[s]) for s in _SUMS] for r in rows.mappings()}


def rebuild(conn: Connection) -> None:
    """Recompute every total from the chain's flow entries. For the migration that made
    the table, or a repair; on the writer's connection."""
    conn.execute(delete(flow_totals))
    _upsert(conn, fold(flow_entry_bodies(conn)))


@dataclass(frozen=True, slots=True)
class FlowTotal:
    """One flow's sums in one bucket of the size asked for."""

    bucket: int
    """The bucket's start, seconds since the epoch (UTC)."""
    kind: str
    source: str
    target: str
    currency: str
    count: int
    points_out: int
    points_in: int
    value_minor: int
    refunded: int


def _newest_rows(conn: Connection, level: int, before: int | None) -> Iterator[Any]:
    query = select(flow_totals).where(flow_totals.c.level == level)
    if before is not None:
        query = query.where(flow_totals.c.bucket < before)
    query = query.order_by(flow_totals.c.bucket.desc()).execution_options(
        stream_results=True, yield_per=500
    )
    yield from conn.execute(query)


def flow_page(
    conn: Connection, bucket_s: int, limit: int, before: int | None = None
) -> tuple[list[FlowTotal], int | None]:
    """The flows of the newest ``limit`` non-empty buckets of ``bucket_s`` seconds that
    start before ``before`` (seconds; None: the newest), sorted by bucket, kind and
    direction, and the cursor of the next older page (None when there is none). Reads
    the rows of those buckets only, from the coarsest stored level dividing ``bucket_s``
    (the caller checks that one does: ``points.flows.level_for``)."""
    level = level_for(bucket_s)
    sums: dict[tuple[int, str, str, str, str], list[int]] = {}
    buckets: list[int] = []
    more = False
    for row in _newest_rows(conn, level, before):
        start = row.bucket - row.bucket % bucket_s
        if not buckets or buckets[-1] != start:
            if len(buckets) == limit:
                more = True
                break
            buckets.append(start)
        found = sums.setdefault((start, row.kind, row.source, row.target, row.currency), [0] * 5)
        for i, name in enumerate(_SUMS):
            found[i] += int(getattr(row, name))
    page = [FlowTotal(*key, *values) for key, values in sorted(sums.items())]
    return page, (buckets[-1] if more else None)
