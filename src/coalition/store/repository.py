"""Reads and bulk writes of the node's tables, on a caller's connection.

Every function takes an open SQLAlchemy ``Connection`` so the application service decides
the transaction: an entry, the state it changes and its idempotency record commit
together or not at all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from coalition.errors import CoalitionError, CorruptStore
from coalition.ledger.blocks import BlockHeader, SignedHeader
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.ledger.merkle import NodeCoord
from coalition.points.state import Account, Lot
from coalition.store.tables import accounts, blocks, entries, lots, tree_nodes

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


TREE_STRIDE = 4
"""The store keeps the Merkle tree's nodes every ``TREE_STRIDE`` levels
(``ledger.merkle.stored_coords``); the sealer writes and every reader expands them so."""


def stored_object(text: str, what: str = "entry") -> JsonObject:
    """Parse a stored canonical JSON object; CorruptStore when the row was damaged."""
    try:
        value = parse_json(text)
    except CoalitionError as exc:
        raise CorruptStore(f"a stored {what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CorruptStore(f"a stored {what} is not a JSON object")
    return value


def signed_header_from_row(header: str, signature: str) -> SignedHeader:
    """A ``blocks`` row's header text and signature as a signed header (not verified);
    CorruptStore when the text is not JSON."""
    return SignedHeader(BlockHeader.from_json(stored_object(header, "header")), signature)


@functools.lru_cache(maxsize=4096)
def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch (cached: a batch shares a few timestamps)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


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


def accounts_for_members(conn: Connection, member_ids: Iterable[str]) -> dict[str, str]:
    """Map member ids to account ids for the members that are enrolled."""
    wanted = list(set(member_ids))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 5000):
        chunk = wanted[start : start + 5000]
        rows = conn.execute(
            select(accounts.c.member_id, accounts.c.account).where(accounts.c.member_id.in_(chunk))
        )
        found.update({row.member_id: row.account for row in rows})
    return found


def members_with_qualifying(
    conn: Connection, member_ids: Iterable[str], since: datetime
) -> dict[str, tuple[str, int]]:
    """For enrolled members among ``member_ids``: (account, tier-qualifying points earned
    after ``since``), in one query per 5,000 members (the bulk earn's member lookup)."""
    wanted = list(set(member_ids))
    found: dict[str, tuple[str, int]] = {}
    joined = accounts.outerjoin(
        lots, and_(lots.c.account == accounts.c.account, lots.c.earned_at > to_micros(since))
    )
    for start in range(0, len(wanted), 5000):
        query = (
            select(
                accounts.c.member_id,
                accounts.c.account,
                func.coalesce(func.sum(lots.c.qualifying), 0),
            )
            .select_from(joined)
            .where(accounts.c.member_id.in_(wanted[start : start + 5000]))
            .group_by(accounts.c.member_id, accounts.c.account)
        )
        found.update({row[0]: (row[1], int(row[2])) for row in conn.execute(query)})
    return found


def insert_account(conn: Connection, account: str, member_id: str, at: datetime) -> None:
    conn.execute(
        insert(accounts).values(account=account, member_id=member_id, enrolled_at=to_micros(at))
    )


def _lot(row: object) -> Lot:
    return Lot(
        id=row.id,  # type: ignore[attr-defined]
        account=row.account,  # type: ignore[attr-defined]
        amount=row.amount,  # type: ignore[attr-defined]
        remaining=row.remaining,  # type: ignore[attr-defined]
        qualifying=row.qualifying,  # type: ignore[attr-defined]
        earned_at=from_micros(row.earned_at),  # type: ignore[attr-defined]
        available_at=from_micros(row.available_at),  # type: ignore[attr-defined]
        expires_at=from_micros(row.expires_at),  # type: ignore[attr-defined]
        ref=row.ref,  # type: ignore[attr-defined]
        reversed=row.reversed,  # type: ignore[attr-defined]
    )


def load_accounts(
    conn: Connection,
    account_ids: Sequence[str],
    *,
    earned_since: datetime | None = None,
    lot_ids: Sequence[str] = (),
    all_lots: bool = False,
) -> dict[str, Account]:
    """Accounts with the lots a decision needs: those holding points, those earned since
    ``earned_since`` (for tier qualification), the named ``lot_ids``, or every lot."""
    loaded = {account_id: Account(account_id) for account_id in account_ids}
    if not account_ids:
        return loaded
    query = select(lots).where(lots.c.account.in_(list(account_ids)))
    if not all_lots:
        wanted = [lots.c.remaining > 0]
        if earned_since is not None:
            wanted.append(lots.c.earned_at > to_micros(earned_since))
        if lot_ids:
            wanted.append(lots.c.id.in_(list(lot_ids)))
        query = query.where(or_(*wanted))
    for row in conn.execute(query):
        lot = _lot(row)
        loaded[lot.account].lots[lot.id] = lot
    return loaded


def used_refs(conn: Connection, refs: Iterable[str]) -> set[str]:
    """Which purchase or reward references (``purchase:R``) already earned points."""
    wanted = list(set(refs))
    used: set[str] = set()
    for start in range(0, len(wanted), 5000):
        rows = conn.execute(select(lots.c.ref).where(lots.c.ref.in_(wanted[start : start + 5000])))
        used.update(row.ref for row in rows)
    return used


def lot_by_ref(conn: Connection, ref: str) -> tuple[str, str] | None:
    """(lot id, account) of the lot a reference earned, if any."""
    row = conn.execute(select(lots.c.id, lots.c.account).where(lots.c.ref == ref)).first()
    return None if row is None else (row.id, row.account)


def save_lots(conn: Connection, touched: Iterable[Account], known: set[str]) -> None:
    """Write back the lots ``apply_entry`` changed: inserts for new ids, updates otherwise."""
    new_rows: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []
    for account in touched:
        for lot_id in account.changed:
            lot = account.lots[lot_id]
            if lot_id in known:
                updates.append(
                    {
                        "b_id": lot.id,
                        "remaining": lot.remaining,
                        "qualifying": lot.qualifying,
                        "reversed": lot.reversed,
                    }
                )
            else:
                new_rows.append(
                    {
                        "id": lot.id,
                        "account": lot.account,
                        "amount": lot.amount,
                        "remaining": lot.remaining,
                        "qualifying": lot.qualifying,
                        "earned_at": to_micros(lot.earned_at),
                        "available_at": to_micros(lot.available_at),
                        "expires_at": to_micros(lot.expires_at),
                        "ref": lot.ref,
                        "reversed": lot.reversed,
                    }
                )
        account.changed.clear()
    if new_rows:
        conn.execute(insert(lots), new_rows)
    if updates:
        conn.execute(update(lots).where(lots.c.id == bindparam("b_id")), updates)


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


def history(conn: Connection, account: str, limit: int) -> list[tuple[int, JsonObject]]:
    """The newest ``limit`` entries that touch ``account``, newest first."""
    query = (
        select(entries.c.log_index, entries.c.body)
        .where(or_(entries.c.account == account, entries.c.to_account == account))
        .order_by(entries.c.log_index.desc())
        .limit(limit)
    )
    return [(row.log_index, stored_object(row.body)) for row in conn.execute(query)]


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


def due_accounts(conn: Connection, at: datetime, limit: int) -> list[str]:
    """Accounts holding points whose expiry time has come."""
    query = (
        select(lots.c.account)
        .where(lots.c.remaining > 0, lots.c.expires_at <= to_micros(at))
        .group_by(lots.c.account)
        .order_by(lots.c.account)
        .limit(limit)
    )
    return [row.account for row in conn.execute(query)]


def all_lots(conn: Connection) -> list[Lot]:
    return [_lot(row) for row in conn.execute(select(lots).order_by(lots.c.id))]


def all_accounts(conn: Connection) -> list[str]:
    return [row.account for row in conn.execute(select(accounts.c.account))]


def qualifying_points(
    conn: Connection, account_ids: Sequence[str], since: datetime
) -> dict[str, int]:
    """Tier-qualifying points earned after ``since``, per account (0 when none)."""
    totals = dict.fromkeys(account_ids, 0)
    wanted = list(totals)
    for start in range(0, len(wanted), 5000):
        query = (
            select(lots.c.account, func.sum(lots.c.qualifying))
            .where(
                lots.c.account.in_(wanted[start : start + 5000]),
                lots.c.earned_at > to_micros(since),
            )
            .group_by(lots.c.account)
        )
        totals.update({row[0]: int(row[1] or 0) for row in conn.execute(query)})
    return totals
