"""Leases: which process of a node runs its single-runner jobs (sealing first of all).

A lease row names its ``holder`` until ``expires_at`` (integer microseconds since the
epoch, in the database's clock on PostgreSQL, so processes on hosts whose clocks differ
agree); ``token`` grows by one at every change of holder, a fencing token. Storage
contract:

- ``acquire`` takes or renews a lease in one short transaction that locks the row
  (``FOR UPDATE`` on PostgreSQL; SQLite's write transaction): the holder renews, anyone
  takes an expired lease (token + 1), nobody takes a live one.
- ``check_fence`` runs inside a job's own write transaction: it locks the row and says
  whether the caller still holds the lease with the token it was given and unexpired. A
  job that writes only when it returns True, in that transaction, can never write after
  another holder took over, however long it was paused (SIGSTOP): the takeover bumped
  the token, or waits for the row lock until the job's transaction ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Connection, String, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel


class LeaseRow(SQLModel, table=True):
    """One named lease: who holds it, its fencing token, and when it lapses."""

    __tablename__ = "leases"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    holder: str = Field(sa_column=Column(String(128), nullable=False))
    token: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_at: int = Field(sa_column=Column(BigInteger, nullable=False))


leases = LeaseRow.__table__  # type: ignore[attr-defined]

_PG_NOW = text("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)")


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as stored: holder, fencing token and expiry (database microseconds)."""

    holder: str
    token: int
    expires_at: int


def db_now(conn: Connection, sqlite_now_us: int | None = None) -> int:
    """The database's clock in microseconds since the epoch (PostgreSQL's
    ``clock_timestamp()``; on SQLite, one process, this host's clock, or
    ``sqlite_now_us`` when the caller runs on a clock of its own: the simulator's).
    PostgreSQL always answers with its own clock, the one every process shares."""
    if conn.dialect.name == "postgresql":
        return int(conn.execute(_PG_NOW).scalar_one())
    return time.time_ns() // 1000 if sqlite_now_us is None else sqlite_now_us


def _locked(conn: Connection, name: str) -> Lease | None:
    row = conn.execute(
        select(leases.c.holder, leases.c.token, leases.c.expires_at)
        .where(leases.c.name == name)
        .with_for_update()
    ).first()
    return None if row is None else Lease(row.holder, int(row.token), int(row.expires_at))


def acquire(
    conn: Connection, name: str, holder: str, duration_us: int, *, sqlite_now_us: int | None = None
) -> Lease | None:
    """Take or renew lease ``name`` for ``holder`` for ``duration_us`` from now; the lease
    ``holder`` now holds, or None when another holds it unexpired. Runs in the caller's
    transaction, which SHOULD be short and its own (the row stays locked until it ends)."""
    current = _locked(conn, name)
    now = db_now(conn, sqlite_now_us)
    expires = now + duration_us
    if current is None:
        first = insert(leases).values(name=name, holder=holder, token=1, expires_at=expires)
        if conn.dialect.name != "postgresql":  # SQLite: one process, nobody to race
            conn.execute(first)
            return Lease(holder, 1, expires)
        try:
            with conn.begin_nested():
                conn.execute(first)
        except IntegrityError:  # another process inserted it first: not ours this round
            return None
        return Lease(holder, 1, expires)
    if current.holder == holder:
        token = current.token
    elif current.expires_at <= now:
        token = current.token + 1
    else:
        return None
    conn.execute(
        update(leases)
        .where(leases.c.name == name)
        .values(holder=holder, token=token, expires_at=expires)
    )
    return Lease(holder, token, expires)


def check_fence(
    conn: Connection, name: str, holder: str, token: int, *, sqlite_now_us: int | None = None
) -> bool:
    """Lock lease ``name`` in the caller's write transaction: True when ``holder`` still
    holds it with ``token`` and it has not expired (the caller may write), else False."""
    current = _locked(conn, name)
    return (
        current is not None
        and current.holder == holder
        and current.token == token
        and current.expires_at > db_now(conn, sqlite_now_us)
    )


def release(conn: Connection, name: str, holder: str, *, sqlite_now_us: int | None = None) -> None:
    """Let lease ``name`` lapse now if ``holder`` holds it, so another process takes it at
    its next try instead of waiting for the expiry (a clean stop)."""
    conn.execute(
        update(leases)
        .where(leases.c.name == name, leases.c.holder == holder)
        .values(expires_at=db_now(conn, sqlite_now_us))
    )


def current(conn: Connection, name: str) -> Lease | None:
    """Lease ``name`` as committed (no lock): for health reports and tests."""
    row = conn.execute(
        select(leases.c.holder, leases.c.token, leases.c.expires_at).where(leases.c.name == name)
    ).first()
    return None if row is None else Lease(row.holder, int(row.token), int(row.expires_at))
