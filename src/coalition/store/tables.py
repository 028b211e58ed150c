"""The node's tables. The ledger's truth is ``entries`` + ``blocks`` + ``tree_nodes``;
``accounts`` and ``lots`` are the current state, which must always equal the replay of
the entries (``coalition check`` verifies it).

Times are integer microseconds since the Unix epoch (UTC), the same on both databases.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, Integer, LargeBinary, Text
from sqlmodel import Field, SQLModel

# SQLite makes an ``INTEGER PRIMARY KEY`` the rowid itself (no second index); BIGINT would
# not be. PostgreSQL keeps 64-bit keys.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class EntryRow(SQLModel, table=True):
    """One ledger entry: its canonical body, leaf hash and position in the log."""

    __tablename__ = "entries"
    __table_args__ = (
        Index(
            "ix_entries_to_account",
            "to_account",
            sqlite_where=Column("to_account").isnot(None),
            postgresql_where=Column("to_account").isnot(None),
        ),
    )

    log_index: int = Field(sa_column=Column(RowId, primary_key=True, autoincrement=False))
    entry_id: str = Field(max_length=48, unique=True)
    kind: str = Field(max_length=32)  # "redemption-receipt" is 18
    account: str = Field(max_length=64, index=True)
    to_account: str | None = Field(default=None, max_length=64)
    body: str = Field(sa_column=Column(Text, nullable=False))
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    idem_key: str | None = Field(default=None, max_length=128, unique=True)
    request_hash: str | None = Field(default=None, max_length=64)


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
        # Covers the tier query (qualifying points earned since T, per account).
        Index("ix_lots_account_earned", "account", "earned_at", "qualifying"),
        Index("ix_lots_expires_at", "expires_at"),
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
accounts = AccountRow.__table__  # type: ignore[attr-defined]
lots = LotRow.__table__  # type: ignore[attr-defined]
blocks = BlockRow.__table__  # type: ignore[attr-defined]
tree_nodes = TreeNodeRow.__table__  # type: ignore[attr-defined]
