"""Databases for tests: a fresh PostgreSQL schema per test, or a SQLite file per node."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from coalition.store.db import normalise_url

POSTGRES_URL = os.environ.get(
    "COALITION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextmanager
def postgres_schema(base_url: str = POSTGRES_URL) -> Iterator[str]:
    """A URL whose connections use a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(base_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in base_url else "?"
        yield f"{base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


@contextmanager
def node_urls(database_url: str, folder: Path, programs: Sequence[str]) -> Iterator[dict[str, str]]:
    """One database per program: SQLite files in ``folder``, or fresh PostgreSQL schemas
    (the first program uses ``database_url`` itself) when it is a PostgreSQL URL."""
    if not database_url.startswith("postgres"):
        yield {p: f"sqlite:///{folder / p}.db" for p in programs}
        return
    with ExitStack() as stack:
        urls = {programs[0]: database_url}
        for program in programs[1:]:
            urls[program] = stack.enter_context(postgres_schema())
        yield urls


@contextmanager
def postgres_databases(
    programs: Sequence[str], base_url: str = POSTGRES_URL
) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database per program on the test server (each a node's whole
    database, as ``coalition run`` processes use it), dropped afterwards (FORCE: a node
    process killed by a failing test may still hold connections)."""
    admin = create_engine(normalise_url(base_url), isolation_level="AUTOCOMMIT")
    suffix = uuid.uuid4().hex[:10]
    names = {p: f"coalition_{p}_{suffix}" for p in programs}
    base = make_url(base_url)
    try:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield {
            p: base.set(database=name).render_as_string(hide_password=False)
            for p, name in names.items()
        }
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
