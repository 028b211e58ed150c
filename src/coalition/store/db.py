"""Engines: SQLite in WAL mode by default, PostgreSQL by URL (the schema: ``store.schema``)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, create_engine, event

from coalition.errors import FailedPrecondition
from coalition.store import (  # noqa: F401  (importing a module registers its tables)
    agreements,
    api_keys,
    conversions,
    flows,
    leases,
    ledger,
    members,
    partners,
    redemptions,
    statements,
    witness,
)
from coalition.store.failures import handle_error


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other databases and memory."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or ":memory:" in url:
        return None
    return Path(url[len(prefix) :].split("?", 1)[0])


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite database file if it is missing."""
    file = sqlite_file(url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)


class SqliteWriterLock:
    """The one-writing-process lock of a SQLite database: an exclusive ``flock`` on
    ``<database>.lock`` beside it, held until ``release`` (or the process's end, which
    the kernel sees to even after SIGKILL)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        """Unlock; idempotent."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def lock_sqlite_file(url: str) -> SqliteWriterLock | None:
    """Take the writer lock of a SQLite database file (None for PostgreSQL and memory).

    A node on SQLite is one process: its log order, lease and group commit rely on it.
    Raises FailedPrecondition, naming the lock file and what to do instead, when another
    process (or another node in this one) already writes the file. Read-only tools
    (``audit``, ``check``, ``verify``, bundle export) do not take it.
    """
    file = sqlite_file(normalise_url(url))
    if file is None:
        return None
    path = file.with_name(file.name + ".lock")
    handle = path.open("a", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FailedPrecondition(
            f"the SQLite database {file} is already used by another running node "
            f"(its lock {path} is held): a node on SQLite is one process. Stop the other "
            "one, or use PostgreSQL (a postgresql:// database URL) to serve one node "
            "from several processes"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return SqliteWriterLock(path, handle)


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """An engine for ``url`` with the settings Coalition relies on.

    SQLite: WAL (readers never block the writer), ``synchronous`` FULL by default so an
    acknowledged entry survives power loss, a busy timeout for the CLI's readers, and a
    64 MiB page cache so index pages stay in memory during bulk ingest, and no memory
    mapping of the database file (``mmap_size=0``, stated: a mapped page that the full or
    failing disk cannot back kills the process with SIGBUS instead of returning an error).
    PostgreSQL: READ COMMITTED (the writers' ordering relies on it, see
    ``store.ledger.take_head``) and ``IDLE_IN_TRANSACTION_MS``, so a stalled process
    cannot hold the node's locks. Both: storage failures raise the core errors of
    ``store.failures`` (the engine's ``handle_error`` hook).
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: keeps hot index pages
            cursor.execute("PRAGMA wal_autocheckpoint=16384")  # checkpoint every ~64 MiB
            cursor.execute("PRAGMA mmap_size=0")
            cursor.close()

        event.listen(engine, "handle_error", handle_error)
        return engine
    # READ COMMITTED, stated rather than assumed: a writer that waited for the log head's
    # row lock (``ledger.take_head``) MUST see, in its next statements, what the previous
    # holder committed (its idempotency keys, balances, members).
    kwargs.setdefault("isolation_level", "READ COMMITTED")
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **kwargs)

    @event.listens_for(engine, "connect")
    def _session(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
        cursor.close()
        dbapi_connection.commit()

    event.listen(engine, "handle_error", handle_error)
    return engine


IDLE_IN_TRANSACTION_MS = 4000
"""PostgreSQL ends a session that sits this long inside a transaction without a statement.
Our transactions make no network call and no pause, so only a stalled process (SIGSTOP,
a debugger) gets there; without this its transaction would hold the log head's row lock
or the lease row for ever and stop every other process of the node. Ended, its work is
rolled back (never acknowledged) and the others go on."""
