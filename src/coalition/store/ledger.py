"""The ledger: entries, sealed blocks and stored tree nodes, with their reads and writes.

``entries`` + ``blocks`` + ``tree_nodes`` are the node's truth; every other table is
derived state or a feature's record beside it. Storage contract:

- Every function runs on the caller's ``Connection``, in the caller's transaction: the
  writer commits an entry, the state it changes and its idempotency record together or
  not at all.
- ``entries.log_index`` is the entry's position in the log. The log's head (the one
  ``log_head`` row: the next index) is what every write transaction takes: a serial
  writer at its start (``take_head``, after ``lock_all_writes``), a writer by account at
  its end (``insert_at_head``, after ``lock_accounts`` at its start); on PostgreSQL the row
  stays locked until the commit, on SQLite the one process's writer lock serialises its
  writers (``store.db.lock_sqlite_file`` refuses a second process). The writer MUST move
  the head (``advance_head``, or ``insert_at_head`` itself) in the same transaction as the
  entries it wrote, so committed entries are always the dense prefix
  ``0 .. next_index - 1``. ``entry_id`` and ``idem_key`` are unique. An entry row is never
  updated or deleted, so a stored body is the exact bytes the leaf hash covers.
- ``blocks.height`` and ``blocks.log_size`` are unique. ``insert_block`` writes a block
  and the tree nodes it completes in one transaction; neither changes afterwards, which
  is why ``NodeCache`` never goes stale.
- Tree nodes are stored every ``TREE_STRIDE`` levels; level 0 is read from the entries.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    Text,
    bindparam,
    func,
    insert,
    select,
)
from sqlmodel import Field, SQLModel

from coalition.errors import CorruptStore
from coalition.ledger.blocks import BlockHeader, SignedHeader
from coalition.ledger.canonical import JsonObject
from coalition.ledger.merkle import NodeCoord
from coalition.ledger.rotation import ROTATION_KIND
from coalition.store.columns import RowId, stored_object
from coalition.store.prepared import Statement, run, run_many, string_list


class EntryRow(SQLModel, table=True):
    """One ledger entry: its canonical body, leaf hash and position in the log."""

    __tablename__ = "entries"
    __table_args__ = (
        # A member's history, newest first, a page at a time (``history``): one ordered
        # range scan per column, however long the member's history or the log is.
        Index("ix_entries_account_log", "account", "log_index"),
        Index(
            "ix_entries_to_account_log",
            "to_account",
            "log_index",
            sqlite_where=Column("to_account").isnot(None),
            postgresql_where=Column("to_account").isnot(None),
        ),
    )

    log_index: int = Field(sa_column=Column(RowId, primary_key=True, autoincrement=False))
    entry_id: str = Field(max_length=48, unique=True)
    kind: str = Field(max_length=32)  # "redemption-receipt" is 18
    account: str = Field(max_length=64)
    to_account: str | None = Field(default=None, max_length=64)
    body: str = Field(sa_column=Column(Text, nullable=False))
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    idem_key: str | None = Field(default=None, max_length=128, unique=True)
    request_hash: str | None = Field(default=None, max_length=64)


class BlockRow(SQLModel, table=True):
    """A sealed block: its signed header, as canonical JSON, and the signature."""

    __tablename__ = "blocks"

    height: int = Field(sa_column=Column(RowId, primary_key=True, autoincrement=False))
    header: str = Field(sa_column=Column(Text, nullable=False))
    signature: str = Field(max_length=128)
    log_size: int = Field(sa_column=Column(BigInteger, nullable=False, unique=True))


class TreeNodeRow(SQLModel, table=True):
    """A perfect subtree's hash at a stored level (a multiple of the tree stride, > 0)."""

    __tablename__ = "tree_nodes"

    level: int = Field(primary_key=True)
    idx: int = Field(sa_column=Column("idx", BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class LogHeadRow(SQLModel, table=True):
    """The log's head: one row (``id`` 1) holding the index the next entry gets."""

    __tablename__ = "log_head"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    next_index: int = Field(sa_column=Column(BigInteger, nullable=False))


entries = EntryRow.__table__  # type: ignore[attr-defined]
log_head = LogHeadRow.__table__  # type: ignore[attr-defined]
blocks = BlockRow.__table__  # type: ignore[attr-defined]
tree_nodes = TreeNodeRow.__table__  # type: ignore[attr-defined]

ix_entries_kind = Index("ix_entries_kind", entries.c.kind, entries.c.log_index)
"""Settlement's lookups by entry kind (statements, conversions, captures)."""

TREE_STRIDE = 4
"""The store keeps the Merkle tree's nodes every ``TREE_STRIDE`` levels
(``ledger.merkle.stored_coords``); the sealer writes and every reader expands them so."""


def signed_header_from_row(header: str, signature: str) -> SignedHeader:
    """A ``blocks`` row's header text and signature as a signed header (not verified);
    CorruptStore when the text is not JSON."""
    return SignedHeader(BlockHeader.from_json(stored_object(header, "header")), signature)


_FIND_IDEMPOTENT = Statement("SELECT request_hash, body FROM entries WHERE idem_key = :key")


def find_idempotent(conn: Connection, key: str) -> tuple[str, JsonObject] | None:
    """The request hash and entry stored under an idempotency key, if any."""
    rows = run(conn, _FIND_IDEMPOTENT, {"key": key})
    if not rows:
        return None
    return rows[0][0], stored_object(rows[0][1])


_REQUEST_HASHES = Statement(
    "SELECT idem_key, request_hash FROM entries"
    " WHERE idem_key IN (SELECT value FROM json_each(:keys))",
    postgresql="SELECT idem_key, request_hash FROM entries WHERE idem_key = ANY(:keys)",
)


def request_hashes(conn: Connection, keys: Sequence[str]) -> dict[str, str]:
    """The request hash stored under each of ``keys`` that was used before: one statement
    whatever the number of keys (``prepared.string_list``)."""
    if not keys:
        return {}
    rows = run(conn, _REQUEST_HASHES, {"keys": string_list(conn, keys)})
    return {key: req for key, req in rows}


_INSERT_ENTRY = Statement(
    "INSERT INTO entries (log_index, entry_id, kind, account, to_account, body, leaf_hash,"
    " idem_key, request_hash) VALUES (:log_index, :entry_id, :kind, :account, :to_account,"
    " :body, :leaf_hash, :idem_key, :request_hash)"
)


def insert_entries(conn: Connection, rows: Sequence[Mapping[str, object]]) -> None:
    """Insert entry rows; each has every ``entries`` column as a key (None for no
    idempotency key, request hash or ``to`` account)."""
    run_many(conn, _INSERT_ENTRY, list(rows))


def next_log_index(conn: Connection) -> int:
    """The index after the newest stored entry (what ``log_head`` starts from)."""
    value = conn.execute(select(func.max(entries.c.log_index))).scalar()
    return 0 if value is None else int(value) + 1


_HEAD_ID = 1
_READ_HEAD = select(log_head.c.next_index).where(log_head.c.id == _HEAD_ID)
# Once per write transaction, so driver-level SQL (no statement building or compiling:
# about a third of the Core statement's CPU); ``{lock}`` and the bind style per dialect.
_TAKE_HEAD_SQL = "SELECT next_index FROM log_head WHERE id = 1{lock}"
_MOVE_HEAD_SQL = {"sqlite": "UPDATE log_head SET next_index = ? WHERE id = 1"}
_MOVE_HEAD_DEFAULT = "UPDATE log_head SET next_index = %s WHERE id = 1"


def take_head(conn: Connection) -> int:
    """Lock the log's head for this transaction and return the next index. PostgreSQL: a
    row lock (``FOR UPDATE``) held until the transaction ends, which every other writer
    of any process waits for; the caller MUST run at READ COMMITTED so its later
    statements see what the previous holder committed. SQLite: no row lock (the driver
    begins the transaction at the first write); the one process's writer lock
    serialises its writers and ``store.db.lock_sqlite_file`` keeps other processes out.
    CorruptStore when the row is missing."""
    lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE"
    value = conn.exec_driver_sql(_TAKE_HEAD_SQL.format(lock=lock)).scalar()
    if value is None:
        raise CorruptStore("the log_head row is missing: the schema was not migrated")
    return int(value)


_CLAIM_HEAD_SQL = {
    "sqlite": "UPDATE log_head SET next_index = next_index + ? WHERE id = 1"
    " RETURNING next_index - ?"
}
_CLAIM_HEAD_DEFAULT = (
    "UPDATE log_head SET next_index = next_index + %s WHERE id = 1 RETURNING next_index - %s"
)


def claim_head(conn: Connection, count: int) -> int:
    """Take ``count`` indexes at the head in one statement and return the first: the head
    moves by ``count`` and, on PostgreSQL, its row stays locked until this transaction
    ends, so the caller MUST insert exactly those entries before it commits. For a writer
    that takes the head last (``lock_accounts``): the row lock is then held for the
    insert and the commit only. CorruptStore when the row is missing."""
    sql = _CLAIM_HEAD_SQL.get(conn.dialect.name, _CLAIM_HEAD_DEFAULT)
    value = conn.exec_driver_sql(sql, (count, count)).scalar()
    if value is None:
        raise CorruptStore("the log_head row is missing: the schema was not migrated")
    return int(value)


_ENTRY_COLUMNS = (
    "entry_id",
    "kind",
    "account",
    "to_account",
    "body",
    "leaf_hash",
    "idem_key",
    "request_hash",
)


@functools.lru_cache(maxsize=64)
def _insert_at_head(count: int) -> Statement:
    """PostgreSQL: move the head by ``count`` and insert ``count`` entries at the indexes
    it passed over, in one statement (one round trip with the head's row locked)."""
    values = ", ".join(
        "(" + ", ".join([str(n)] + [f":{column}_{n}" for column in _ENTRY_COLUMNS]) + ")"
        for n in range(count)
    )
    names = ", ".join(_ENTRY_COLUMNS)
    return Statement(
        f"WITH head AS (UPDATE log_head SET next_index = next_index + {count} WHERE id = 1"
        f" RETURNING next_index - {count} AS first)"
        f" INSERT INTO entries (log_index, {names})"
        f" SELECT head.first + v.n, {', '.join('v.' + c for c in _ENTRY_COLUMNS)}"
        f" FROM head CROSS JOIN (VALUES {values}) AS v (n, {names})"
        " RETURNING log_index"
    )


def insert_at_head(conn: Connection, rows: Sequence[Mapping[str, object]]) -> int:
    """Take ``len(rows)`` indexes at the head (``claim_head``) and insert ``rows`` there,
    in order; the first index. Each row has every ``entries`` column but ``log_index``
    as a key. On PostgreSQL one statement: the head's row is locked from it to the
    commit, and nothing else."""
    if conn.dialect.name != "postgresql":
        first = claim_head(conn, len(rows))
        insert_entries(conn, [dict(row, log_index=first + n) for n, row in enumerate(rows)])
        return first
    params = {f"{c}_{n}": row[c] for n, row in enumerate(rows) for c in _ENTRY_COLUMNS}
    inserted = run(conn, _insert_at_head(len(rows)), params)
    if len(inserted) != len(rows):
        raise CorruptStore("the log_head row is missing: the schema was not migrated")
    return min(int(index) for (index,) in inserted)


# Transaction-scoped advisory locks in PostgreSQL's two-int4 key space (apart from the
# one-bigint space of the schema lock): the program's writes gate, and one per account.
# Advisory locks are per database, so keys are digests of the program id (and account):
# nodes of other programs on the same database never wait for each other's locks.
_GATE_CLASS = 0x436F_0001
_ACCOUNT_CLASS = 0x436F_0002


def _lock_key(*parts: str) -> int:
    """A signed 32-bit digest (two parts that collide only wait for each other)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def lock_all_writes(conn: Connection, program: str) -> None:
    """Make this transaction the only writer of ``program``'s log until it ends: the
    program's gate, exclusive (it waits for every account writer, ``lock_accounts``, to
    finish, and keeps new ones out). What a write that may read any shared state takes
    first. SQLite: nothing to do (one process, one writer)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_GATE_CLASS}, {_lock_key(program)})")


def lock_accounts(conn: Connection, program: str, accounts: Iterable[str]) -> None:
    """Lock ``accounts`` for this transaction: the program's gate shared (so a
    ``lock_all_writes`` writer excludes it), then each account's lock, in key order, so
    two writers of overlapping accounts never deadlock: one waits for the other's commit
    and then reads what it committed (READ COMMITTED). One round trip. SQLite: nothing
    to do."""
    if conn.dialect.name != "postgresql":
        return
    keys = sorted({_lock_key(program, account) for account in accounts})
    statements = [f"SELECT pg_advisory_xact_lock_shared({_GATE_CLASS}, {_lock_key(program)})"]
    statements += [f"SELECT pg_advisory_xact_lock({_ACCOUNT_CLASS}, {key})" for key in keys]
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:  # several statements, no binds: psycopg sends them as one simple query, in order
        cursor.execute("; ".join(statements))
    finally:
        cursor.close()


def read_head(conn: Connection) -> int:
    """The committed next index, without locking (a read session's view)."""
    value = conn.execute(_READ_HEAD).scalar()
    return 0 if value is None else int(value)


def advance_head(conn: Connection, next_index: int) -> None:
    """Move the head to ``next_index`` in the transaction that took it (``take_head``)."""
    sql = _MOVE_HEAD_SQL.get(conn.dialect.name, _MOVE_HEAD_DEFAULT)
    conn.exec_driver_sql(sql, (next_index,))


def set_head_to_log(conn: Connection) -> int:
    """Set the head after the newest stored entry (tools that bulk-load entry rows
    directly, then hand them to the sealer); the new next index."""
    head = next_log_index(conn)
    advance_head(conn, head)
    return head


def entry_by_id(conn: Connection, entry_id: str) -> tuple[int, JsonObject] | None:
    row = conn.execute(
        select(entries.c.log_index, entries.c.body).where(entries.c.entry_id == entry_id)
    ).first()
    if row is None:
        return None
    return row.log_index, stored_object(row.body)


def history(
    conn: Connection, account: str, limit: int, before: int | None = None
) -> list[tuple[int, JsonObject]]:
    """The newest ``limit`` entries that touch ``account`` (as ``account`` or ``to``) with a
    log index below ``before`` (None: the newest), newest first. Two ordered range scans
    of ``limit`` rows each (``ix_entries_account_log``, ``ix_entries_to_account_log``),
    merged: the cost is the page's, not the member's history's."""
    found: dict[int, str] = {}
    for column in (entries.c.account, entries.c.to_account):
        query = select(entries.c.log_index, entries.c.body).where(column == account)
        if before is not None:
            query = query.where(entries.c.log_index < before)
        query = query.order_by(entries.c.log_index.desc()).limit(limit)
        found.update((row.log_index, row.body) for row in conn.execute(query))
    newest = sorted(found, reverse=True)[:limit]
    return [(index, stored_object(found[index])) for index in newest]


def entry_bodies(conn: Connection, start: int, end: int) -> list[tuple[int, str, bytes]]:
    """(log index, canonical body, stored leaf hash) for ``start <= index < end``."""
    query = (
        select(entries.c.log_index, entries.c.body, entries.c.leaf_hash)
        .where(entries.c.log_index >= start, entries.c.log_index < end)
        .order_by(entries.c.log_index)
    )
    return [(row.log_index, row.body, bytes(row.leaf_hash)) for row in conn.execute(query)]


_LEAF_HASHES_FROM = Statement(
    "SELECT leaf_hash FROM entries WHERE log_index >= :start ORDER BY log_index"
)
_LEAF_HASHES_FROM_LIMIT = Statement(
    "SELECT leaf_hash FROM entries WHERE log_index >= :start ORDER BY log_index LIMIT :limit"
)


def leaf_hashes_from(conn: Connection, start: int, limit: int | None = None) -> list[bytes]:
    """Stored leaf hashes from ``start`` to the end of the log (at most ``limit``), in
    order. The committed entries are a dense prefix of the log (``take_head``), so these
    are the entries ``start, start + 1, ...`` with no gap."""
    if limit is None:
        rows = run(conn, _LEAF_HASHES_FROM, {"start": start})
    else:
        rows = run(conn, _LEAF_HASHES_FROM_LIMIT, {"start": start, "limit": limit})
    return [bytes(row[0]) for row in rows]


def bodies_of_kinds(conn: Connection, kinds: Collection[str]) -> list[JsonObject]:
    """Bodies of every entry of ``kinds`` (a set from ``points.kinds``) in log order
    (uses ``ix_entries_kind``)."""
    query = (
        select(entries.c.body)
        .where(entries.c.kind.in_(sorted(kinds)))
        .order_by(entries.c.log_index)
    )
    return [stored_object(row.body) for row in conn.execute(query)]


_LEAF_RANGE = select(entries.c.log_index, entries.c.leaf_hash).where(
    entries.c.log_index.between(bindparam("lo"), bindparam("hi"))
)

_NODE_RANGE = select(tree_nodes.c.idx, tree_nodes.c.hash).where(
    tree_nodes.c.level == bindparam("level"),
    tree_nodes.c.idx.between(bindparam("lo"), bindparam("hi")),
)

_CLUSTER_GAP = 16


def _clusters(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted indexes grouped into [lo, hi] ranges whose members lie within 16 of each
    other: a proof's nodes sit in a few tight clusters, each one indexed range scan."""
    ranges: list[tuple[int, int]] = []
    for index in sorted(indexes):
        if ranges and index - ranges[-1][1] <= _CLUSTER_GAP:
            ranges[-1] = (ranges[-1][0], index)
        else:
            ranges.append((index, index))
    return ranges


class NodeCache:
    """Stored tree nodes kept in memory. A stored node never changes once its subtree is
    complete, so entries never go stale; the cache is cleared when it reaches ``limit``."""

    def __init__(self, limit: int = 500_000) -> None:
        self._nodes: dict[NodeCoord, bytes] = {}
        self._limit = limit

    def get(self, coord: NodeCoord) -> bytes | None:
        return self._nodes.get(coord)

    def put(self, nodes: Iterable[tuple[NodeCoord, bytes]]) -> None:
        if len(self._nodes) >= self._limit:
            self._nodes.clear()
        self._nodes.update(nodes)


def read_nodes(
    conn: Connection, coords: Iterable[NodeCoord], cache: NodeCache | None = None
) -> dict[NodeCoord, bytes]:
    """Stored hashes for ``coords`` (and possibly a few neighbours): level 0 from the
    entries, higher levels from ``cache`` or the tree table, in a few range scans."""
    found: dict[NodeCoord, bytes] = {}
    missing: dict[int, list[int]] = {}
    for level, index in set(coords):
        cached = cache.get((level, index)) if cache is not None and level > 0 else None
        if cached is None:
            missing.setdefault(level, []).append(index)
        else:
            found[(level, index)] = cached
    for level, indexes in missing.items():
        fetched: list[tuple[NodeCoord, bytes]] = []
        for lo, hi in _clusters(indexes):
            if level == 0:
                rows = conn.execute(_LEAF_RANGE, {"lo": lo, "hi": hi})
            else:
                rows = conn.execute(_NODE_RANGE, {"level": level, "lo": lo, "hi": hi})
            fetched.extend(((level, row[0]), bytes(row[1])) for row in rows)
        found.update(fetched)
        if cache is not None and level > 0:
            cache.put(fetched)
    return found


def insert_block(
    conn: Connection,
    height: int,
    header: str,
    signature: str,
    log_size: int,
    nodes: Sequence[tuple[NodeCoord, bytes]],
) -> None:
    conn.execute(
        insert(blocks).values(height=height, header=header, signature=signature, log_size=log_size)
    )
    if nodes:
        conn.execute(
            insert(tree_nodes),
            [{"level": level, "idx": index, "hash": digest} for (level, index), digest in nodes],
        )


def block_rows(conn: Connection, start: int, limit: int) -> list[tuple[int, str, str]]:
    """(height, canonical header, signature) for heights ``start..start+limit-1``."""
    query = (
        select(blocks.c.height, blocks.c.header, blocks.c.signature)
        .where(blocks.c.height >= start)
        .order_by(blocks.c.height)
        .limit(limit)
    )
    return [(row.height, row.header, row.signature) for row in conn.execute(query)]


def last_block(conn: Connection) -> tuple[int, str, str] | None:
    """The newest stored block (height, header, signature), if any."""
    query = select(blocks.c.height, blocks.c.header, blocks.c.signature).order_by(
        blocks.c.height.desc()
    )
    row = conn.execute(query.limit(1)).first()
    return None if row is None else (row.height, row.header, row.signature)


def last_height(conn: Connection) -> int | None:
    """The newest stored block's height (a cheap poll of what others sealed)."""
    value = conn.execute(select(func.max(blocks.c.height))).scalar()
    return None if value is None else int(value)


def sealed_size(conn: Connection) -> int:
    """How many entries the stored blocks cover (0 before the first): whichever process
    sealed them, so a reader of any process learns what is sealed from here."""
    value = conn.execute(select(func.max(blocks.c.log_size))).scalar()
    return 0 if value is None else int(value)


def block_with_log_size(conn: Connection, log_size: int) -> tuple[int, str, str] | None:
    query = select(blocks.c.height, blocks.c.header, blocks.c.signature).where(
        blocks.c.log_size == log_size
    )
    row = conn.execute(query).first()
    return None if row is None else (row.height, row.header, row.signature)


def key_rotations_after(conn: Connection, after_index: int) -> list[tuple[int, bytes]]:
    """(log index, canonical body) of every ``key-rotation`` entry after ``after_index``,
    in log order (uses ``ix_entries_kind``): the node's key schedule
    (``node.ledger_keys``)."""
    query = (
        select(entries.c.log_index, entries.c.body)
        .where(entries.c.kind == ROTATION_KIND, entries.c.log_index > after_index)
        .order_by(entries.c.log_index)
    )
    return [(row.log_index, row.body.encode()) for row in conn.execute(query)]
