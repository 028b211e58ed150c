"""Members: their pseudonymous accounts and the lots of points they hold.

``accounts`` and ``lots`` are the current state, not history: they MUST always equal the
replay of the ledger's entries (``coalition check`` verifies it), so a caller writes them
only in the transaction of the entry that changes them (``save_lots`` beside
``ledger.insert_entries``), on its own ``Connection``. Storage contract:

- ``accounts.member_id`` is unique and never leaves this node (entries name the account);
  an account row never changes once written.
- A lot's ``ref`` (``purchase:R``, a reward's reference) is unique, so a reference earns
  once. Only ``remaining``, ``qualifying`` and ``reversed`` change after the insert, and
  ``0 <= remaining <= amount`` always (a CHECK constraint).

Named for the members the rows describe, as the points service speaks of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Index,
    func,
    or_,
    select,
    text,
)
from sqlmodel import Field, SQLModel

from coalition.points.state import Account, Lot
from coalition.store.columns import from_micros, to_micros
from coalition.store.prepared import Statement, run, run_many, string_list


class AccountRow(SQLModel, table=True):
    """A member's pseudonymous account; the member id never leaves this node."""

    __tablename__ = "accounts"

    account: str = Field(primary_key=True, max_length=64)
    member_id: str = Field(max_length=64, unique=True)
    enrolled_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class LotRow(SQLModel, table=True):
    """Points that arrived together; ``remaining`` can never go below zero."""

    __tablename__ = "lots"
    __table_args__ = (
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="ck_lots_remaining"),
        # Covers the tier query (qualifying points earned since T, per account) and serves
        # a member's lots a page at a time in (earned_at, id) order (``lots_page``).
        Index("ix_lots_account_earned_id", "account", "earned_at", "id", "qualifying"),
        Index("ix_lots_expires_at", "expires_at"),
        # A debit's FIFO read: the lots with points left, in debit order, per account.
        Index(
            "ix_lots_debit",
            "account",
            "expires_at",
            "earned_at",
            "id",
            sqlite_where=text("remaining > 0"),
            postgresql_where=text("remaining > 0"),
        ),
        {"sqlite_with_rowid": False},  # the text primary key is the table's own order
    )

    id: str = Field(primary_key=True, max_length=48)
    account: str = Field(max_length=64)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    remaining: int = Field(sa_column=Column(BigInteger, nullable=False))
    qualifying: int = Field(sa_column=Column(BigInteger, nullable=False))
    earned_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    available_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    ref: str | None = Field(default=None, max_length=160, unique=True)
    reversed: bool = False


accounts = AccountRow.__table__  # type: ignore[attr-defined]
lots = LotRow.__table__  # type: ignore[attr-defined]


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


_ACCOUNT_OF_MEMBER = Statement("SELECT account FROM accounts WHERE member_id = :member_id")


def account_of_member(conn: Connection, member_id: str) -> str | None:
    """The account of an enrolled member, None if the member is not enrolled."""
    rows = run(conn, _ACCOUNT_OF_MEMBER, {"member_id": member_id})
    return None if not rows else str(rows[0][0])


_MEMBERS_WITH_QUALIFYING = (
    "SELECT a.member_id, a.account, (SELECT COALESCE(SUM(l.qualifying), 0) FROM lots l"
    " WHERE l.account = a.account AND l.earned_at > :since) FROM accounts a WHERE {}"
)
_MEMBERS_WITH_QUALIFYING_SQL = Statement(
    _MEMBERS_WITH_QUALIFYING.format("a.member_id IN (SELECT value FROM json_each(:ids))"),
    postgresql=_MEMBERS_WITH_QUALIFYING.format("a.member_id = ANY(:ids)"),
)


def members_with_qualifying(
    conn: Connection, member_ids: Iterable[str], since: datetime
) -> dict[str, tuple[str, int]]:
    """For enrolled members among ``member_ids``: (account, tier-qualifying points earned
    after ``since``), in one statement (the bulk earn's member lookup); each sum is one
    range read of ``ix_lots_account_earned_id``, which covers it."""
    wanted = list(set(member_ids))
    if not wanted:
        return {}
    params = {"ids": string_list(conn, wanted), "since": to_micros(since)}
    return {
        member: (account, int(points))
        for member, account, points in run(conn, _MEMBERS_WITH_QUALIFYING_SQL, params)
    }


_INSERT_ACCOUNT = Statement(
    "INSERT INTO accounts (account, member_id, enrolled_at)"
    " VALUES (:account, :member_id, :enrolled_at)"
)


def insert_account(conn: Connection, account: str, member_id: str, at: datetime) -> None:
    run(
        conn,
        _INSERT_ACCOUNT,
        {"account": account, "member_id": member_id, "enrolled_at": to_micros(at)},
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


_REF_USED = Statement("SELECT 1 FROM lots WHERE ref = :ref")


def ref_used(conn: Connection, ref: str) -> bool:
    """Whether the purchase or reward reference ``ref`` (``purchase:R``) already earned."""
    return bool(run(conn, _REF_USED, {"ref": ref}))


def lots_page(
    conn: Connection, account: str, limit: int, after: str | None = None
) -> list[Lot] | None:
    """Up to ``limit`` lots of ``account`` in (earned_at, id) order, from the one after the
    lot ``after`` (an id; None: from the first); None when ``account`` has no lot
    ``after``. One ordered range scan of ``ix_lots_account_earned_id`` (and one primary
    key lookup for the cursor): the page's cost, not the member's lots'."""
    query = select(lots).where(lots.c.account == account)
    if after is not None:
        at = conn.execute(
            select(lots.c.earned_at).where(lots.c.id == after, lots.c.account == account)
        ).scalar()
        if at is None:
            return None
        # ``>=`` first: the index's range starts at the cursor (PostgreSQL filters an OR
        # alone along the whole range before it).
        query = query.where(lots.c.earned_at >= at, or_(lots.c.earned_at > at, lots.c.id > after))
    query = query.order_by(lots.c.earned_at, lots.c.id).limit(limit)
    return [_lot(row) for row in conn.execute(query)]


_USED_REFS = Statement(
    "SELECT ref FROM lots WHERE ref IN (SELECT value FROM json_each(:refs))",
    postgresql="SELECT ref FROM lots WHERE ref = ANY(:refs)",
)


def used_refs(conn: Connection, refs: Iterable[str]) -> set[str]:
    """Which purchase or reward references (``purchase:R``) already earned points: one
    statement whatever the number of references."""
    wanted = list(set(refs))
    if not wanted:
        return set()
    return {row[0] for row in run(conn, _USED_REFS, {"refs": string_list(conn, wanted)})}


_LOT_BY_REF = Statement("SELECT id, account FROM lots WHERE ref = :ref")


def lot_by_ref(conn: Connection, ref: str) -> tuple[str, str] | None:
    """(lot id, account) of the lot a reference earned, if any."""
    rows = run(conn, _LOT_BY_REF, {"ref": ref})
    return None if not rows else (str(rows[0][0]), str(rows[0][1]))


_LOT_COLUMNS = (
    "id, account, amount, remaining, qualifying, earned_at, available_at, expires_at, ref, reversed"
)
_SPENDABLE = (
    f"SELECT {_LOT_COLUMNS} FROM lots WHERE account = :account AND remaining > 0"
    " AND expires_at > :at AND available_at <= :at ORDER BY expires_at, earned_at, id{}"
)
# PostgreSQL orders text by the database's collation; debit order is code point order.
_DEBIT_FIRST = Statement(
    _SPENDABLE.format(" LIMIT :limit"), postgresql=_SPENDABLE.format(' COLLATE "C" LIMIT :limit')
)
_DEBIT_ALL = Statement(_SPENDABLE.format(""), postgresql=_SPENDABLE.format(' COLLATE "C"'))
DEBIT_PREFIX = 8
"""Lots a debit reads in its first range read (most debits take one or two)."""


def _lot_of(row: Sequence[object]) -> Lot:
    return Lot(
        id=row[0],  # type: ignore[arg-type]
        account=row[1],  # type: ignore[arg-type]
        amount=row[2],  # type: ignore[arg-type]
        remaining=row[3],  # type: ignore[arg-type]
        qualifying=row[4],  # type: ignore[arg-type]
        earned_at=from_micros(row[5]),  # type: ignore[arg-type]
        available_at=from_micros(row[6]),  # type: ignore[arg-type]
        expires_at=from_micros(row[7]),  # type: ignore[arg-type]
        ref=row[8],  # type: ignore[arg-type]
        reversed=bool(row[9]),
    )


def debit_account(conn: Connection, account_id: str, amount: object, at: datetime) -> Account:
    """The account with the spendable lots at ``at`` that a debit of ``amount`` takes, in
    debit order: the first ``DEBIT_PREFIX`` of them, or every spendable lot when those do
    not cover ``amount`` (so ``Account.take`` and its refusal see the same lots, and
    the same balance, as with every lot loaded). Its other lots are not loaded: a caller
    MUST use the result for ``take`` and for entries that only debit or open lots, never
    for balances beyond what it took."""
    account = Account(account_id)
    params = {"account": account_id, "at": to_micros(at), "limit": DEBIT_PREFIX}
    rows = run(conn, _DEBIT_FIRST, params)
    if len(rows) == DEBIT_PREFIX and not (
        isinstance(amount, int) and sum(int(row[3]) for row in rows) >= amount
    ):
        rows = run(conn, _DEBIT_ALL, params)
    for row in rows:
        lot = _lot_of(row)
        account.lots[lot.id] = lot
    return account


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
    run_many(conn, _INSERT_LOT, new_rows)
    run_many(conn, _UPDATE_LOT, updates)


_INSERT_LOT = Statement(
    f"INSERT INTO lots ({_LOT_COLUMNS}) VALUES (:id, :account, :amount, :remaining,"
    " :qualifying, :earned_at, :available_at, :expires_at, :ref, :reversed)"
)
_UPDATE_LOT = Statement(
    "UPDATE lots SET remaining = :remaining, qualifying = :qualifying, reversed = :reversed"
    " WHERE id = :b_id"
)


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


_QUALIFYING = Statement(
    "SELECT COALESCE(SUM(qualifying), 0) FROM lots WHERE account = :account AND earned_at > :since"
)


def qualifying_of(conn: Connection, account_id: str, since: datetime) -> int:
    """Tier-qualifying points of one account earned after ``since``."""
    rows = run(conn, _QUALIFYING, {"account": account_id, "since": to_micros(since)})
    return int(rows[0][0])


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
