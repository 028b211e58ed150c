"""The ledger: entries, sealed blocks and stored tree nodes, with their reads and writes.

``entries`` + ``blocks`` + ``tree_nodes`` are the node's truth; every other table is
derived state or a feature's record beside it. Storage contract:

- Every function runs on the caller's ``Connection``, in the caller's transaction: the
  writer commits an entry, the state it changes and its idempotency record together or
  not at all.
- ``entries.log_index`` is the entry's position in the log (the writer takes
  ``next_log_index``); ``entry_id`` and ``idem_key`` are unique. An entry row is never
  updated or deleted, so a stored body is the exact bytes the leaf hash covers.
- ``blocks.height`` and ``blocks.log_size`` are unique. ``insert_block`` writes a block
  and the tree nodes it completes in one transaction; neither changes afterwards, which
  is why ``NodeCache`` never goes stale.
- Tree nodes are stored every ``TREE_STRIDE`` levels; level 0 is read from the entries.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    LargeBinary,
    Text,
    bindparam,
    func,
    insert,
    select,
)
from sqlmodel import Field, SQLModel

from coalition.ledger.blocks import BlockHeader, SignedHeader
from coalition.ledger.canonical import JsonObject
from coalition.ledger.merkle import NodeCoord
from coalition.store.columns import RowId, stored_object


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


entries = EntryRow.__table__  # type: ignore[attr-defined]
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


def find_idempotent(conn: Connection, key: str) -> tuple[str, JsonObject] | None:
    """The request hash and entry stored under an idempotency key, if any."""
    row = conn.execute(
        select(entries.c.request_hash, entries.c.body).where(entries.c.idem_key == key)
    ).first()
    if row is None:
        return None
    return row.request_hash, stored_object(row.body)


def request_hashes(conn: Connection, keys: Sequence[str]) -> dict[str, str]:
    """The request hash stored under each of ``keys`` that was used before."""
    if not keys:
        return {}
    query = select(entries.c.idem_key, entries.c.request_hash).where(entries.c.idem_key.in_(keys))
    return {row.idem_key: row.request_hash for row in conn.execute(query)}


def insert_entries(conn: Connection, rows: Sequence[Mapping[str, object]]) -> None:
    """Bulk insert of entry rows (keys: the ``entries`` columns)."""
    if rows:
        conn.execute(insert(entries), list(rows))


def next_log_index(conn: Connection) -> int:
    value = conn.execute(select(func.max(entries.c.log_index))).scalar()
    return 0 if value is None else int(value) + 1


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


def leaf_hashes_from(conn: Connection, start: int) -> list[bytes]:
    """Stored leaf hashes from ``start`` to the end of the log, in order."""
    query = (
        select(entries.c.leaf_hash)
        .where(entries.c.log_index >= start)
        .order_by(entries.c.log_index)
    )
    return [bytes(row.leaf_hash) for row in conn.execute(query)]


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
    query = select(blocks.c.height, blocks.c.header, blocks.c.signature).order_by(
        blocks.c.height.desc()
    )
    row = conn.execute(query.limit(1)).first()
    return None if row is None else (row.height, row.header, row.signature)


def block_with_log_size(conn: Connection, log_size: int) -> tuple[int, str, str] | None:
    query = select(blocks.c.height, blocks.c.header, blocks.c.signature).where(
        blocks.c.log_size == log_size
    )
    row = conn.execute(query).first()
    return None if row is None else (row.height, row.header, row.signature)
