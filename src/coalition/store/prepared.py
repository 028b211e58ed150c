"""Statements of the write path, written once in SQL and run on the driver's own cursor.

Why: a redeem runs five one-row statements inside the writer's transaction, and building,
caching and executing each through SQLAlchemy Core cost 25-130 us of Python (a one-element
``IN`` list is rebuilt and re-expanded on every call), against about 5 us for the
driver's ``execute`` of the same text. The hot statements of ``store.members`` and
``store.ledger`` are therefore ``Statement`` objects: SQL text with ``:name`` binds, one
value per bind, rendered once per dialect (``%(name)s`` for psycopg, which then prepares
a statement it has run five times on the server).

Contract for callers:

- ``run`` and ``run_many`` execute on the DB-API connection underneath the caller's
  ``Connection``, in the caller's transaction (the same one SQLAlchemy's statements
  use), so the sequencer's transaction still decides commit or rollback.
- A driver error is raised as SQLAlchemy's exception for it (``IntegrityError`` ...), as
  ``Connection.execute`` would raise it, so callers catch one family whatever ran; a
  storage failure as its core error (``store.failures``), as the engine's hook does.
- Rows come back as the driver's tuples: SQLite gives booleans as 0/1 and a caller that
  needs ``bool`` converts. Only plain ints, strings, bytes, bools and None are bound,
  and lists of strings made by ``string_list``.
- A lookup of many values binds them as one value (``string_list``), never one bind per
  value: the statement's text is the same for 1 or 50,000 values (nothing rebuilt or
  expanded per call) and the driver binds one parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from coalition.store.failures import storage_error

_BIND = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


class Statement:
    """One SQL statement with ``:name`` binds; its text for each dialect is made once."""

    __slots__ = ("_pyformat", "sql")

    def __init__(self, sql: str, *, postgresql: str | None = None) -> None:
        """``postgresql``: the statement's text on PostgreSQL when it differs (e.g. an
        ORDER BY with ``COLLATE "C"``), with the same binds."""
        self.sql = " ".join(sql.split())
        self._pyformat = _BIND.sub(r"%(\1)s", " ".join((postgresql or sql).split()))

    def text_for(self, dialect: str) -> str:
        """The statement as the dialect's driver takes it (named binds for sqlite3,
        pyformat for psycopg)."""
        return self._pyformat if dialect == "postgresql" else self.sql


def string_list(conn: Connection, values: Sequence[str]) -> object:
    """``values`` as the one bind of a list lookup, written ``column IN (SELECT value FROM
    json_each(:name))`` in the SQLite text and ``column = ANY(:name)`` in the PostgreSQL
    one: a JSON array for SQLite, a list (``text[]`` to psycopg) for PostgreSQL."""
    if conn.dialect.name == "postgresql":
        return list(values)
    return orjson.dumps(list(values)).decode()


def _cursor(conn: Connection) -> Any:
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


def _wrapped(
    conn: Connection,
    stmt: Statement,
    params: Mapping[str, object] | Sequence[Mapping[str, object]],
    exc: Exception,
) -> BaseException:
    """SQLAlchemy's exception for the driver's ``exc`` (``IntegrityError`` for a unique
    violation ...), or the core error of a storage failure, as ``Connection.execute``
    raises it."""
    failure = storage_error(exc, conn.engine)
    if failure is not None:
        return failure
    return DBAPIError.instance(
        stmt.sql, params, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
    )


def run(conn: Connection, stmt: Statement, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
    """Execute ``stmt`` once with ``params``; every row it returns (none for a write)."""
    cursor = _cursor(conn)
    try:
        cursor.execute(stmt.text_for(conn.dialect.name), params)
        return cursor.fetchall() if cursor.description is not None else []
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, stmt, params, exc) from exc
    finally:
        cursor.close()


def run_many(conn: Connection, stmt: Statement, rows: Iterable[Mapping[str, object]]) -> None:
    """Execute the write ``stmt`` once per row of ``rows`` (the driver's ``executemany``)."""
    batch: Sequence[Mapping[str, object]] = rows if isinstance(rows, list) else list(rows)
    if not batch:
        return
    cursor = _cursor(conn)
    try:
        if len(batch) == 1:
            cursor.execute(stmt.text_for(conn.dialect.name), batch[0])
        else:
            cursor.executemany(stmt.text_for(conn.dialect.name), batch)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, stmt, batch, exc) from exc
    finally:
        cursor.close()
