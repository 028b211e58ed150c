"""API keys issued at run time (``coalition keys issue`` or the operator API) and the
version counter every process of a node polls to notice a change.

Storage contract:

- ``api_keys`` holds a key's name, role, member id, the hex SHA-256 of its secret (never
  the secret), and its issue, expiry and revocation times (integer microseconds since the
  epoch, UTC). A revoked key's row stays, so a refusal can say it was revoked.
- ``api_keys_version`` is one row whose ``version`` grows by one in the transaction of
  every change (``bump_version``, first, so it also locks the row: changes to the key set
  are serialized on PostgreSQL, and a check such as "not the last operator key" made in
  that transaction after the bump cannot race another). A reader that saw version ``v``
  and still reads ``v`` has the current key set without reading it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Connection, Integer, String, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel


class ApiKeyRow(SQLModel, table=True):
    """One issued API key: the digest of its secret, its role and life times."""

    __tablename__ = "api_keys"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    digest: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    role: str = Field(sa_column=Column(String(16), nullable=False))
    member_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    revoked_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class ApiKeysVersionRow(SQLModel, table=True):
    """The one row counting changes to ``api_keys`` (id 1)."""

    __tablename__ = "api_keys_version"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    version: int = Field(sa_column=Column(BigInteger, nullable=False))


api_keys = ApiKeyRow.__table__  # type: ignore[attr-defined]
api_keys_version = ApiKeysVersionRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An ``api_keys`` row (times in microseconds since the epoch, UTC)."""

    name: str
    digest: str
    role: str
    member_id: str | None
    created_at: int
    expires_at: int | None
    revoked_at: int | None


def current_version(conn: Connection) -> int:
    """The change counter; 0 before the first key was ever issued."""
    value = conn.execute(
        select(api_keys_version.c.version).where(api_keys_version.c.id == 1)
    ).scalar()
    return 0 if value is None else int(value)


def bump_version(conn: Connection) -> int:
    """Count one change, in the caller's write transaction, and lock the counter row
    until it ends; returns the new version. Call it before reading what the change
    depends on."""
    step = update(api_keys_version).where(api_keys_version.c.id == 1)
    if conn.execute(step.values(version=api_keys_version.c.version + 1)).rowcount:
        return current_version(conn)
    try:
        with conn.begin_nested():
            conn.execute(insert(api_keys_version).values(id=1, version=1))
    except IntegrityError:  # another process made the row first: count on it
        conn.execute(step.values(version=api_keys_version.c.version + 1))
        return current_version(conn)
    return 1


def all_keys(conn: Connection) -> list[StoredKey]:
    """Every issued key, revoked and expired ones included, by name."""
    rows = conn.execute(select(api_keys).order_by(api_keys.c.name))
    return [
        StoredKey(
            r.name, r.digest, r.role, r.member_id, int(r.created_at), r.expires_at, r.revoked_at
        )
        for r in rows
    ]


def insert_key(conn: Connection, key: StoredKey) -> bool:
    """Add ``key``; False (nothing written) when its name or digest is taken."""
    try:
        with conn.begin_nested():
            conn.execute(
                insert(api_keys).values(
                    name=key.name,
                    digest=key.digest,
                    role=key.role,
                    member_id=key.member_id,
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                    revoked_at=key.revoked_at,
                )
            )
    except IntegrityError:
        return False
    return True


def mark_revoked(conn: Connection, name: str, at: int) -> bool:
    """Revoke key ``name`` at ``at``; False when no such key is unrevoked."""
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=at)
    )
    return bool(result.rowcount)
