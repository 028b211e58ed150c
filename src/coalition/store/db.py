"""Engines: SQLite in WAL mode by default, PostgreSQL by URL (the schema: ``store.schema``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event

from coalition.store import (  # noqa: F401  (importing a module registers its tables)
    agreements,
    conversions,
    flows,
    ledger,
    members,
    partners,
    redemptions,
    statements,
    witness,
)


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


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """An engine for ``url`` with the settings Coalition relies on.

    SQLite: WAL (readers never block the writer), ``synchronous`` FULL by default so an
    acknowledged entry survives power loss, a busy timeout for the CLI's readers, and a
    64 MiB page cache so index pages stay in memory during bulk ingest.
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
            cursor.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **kwargs)
