"""The database schema's revision: Alembic migrations, run under a database lock.

``upgrade_schema`` is what a node runs on start (and ``coalition migrate``): it takes the
schema lock, then brings the database to the newest revision this code knows. The lock
makes concurrent first starts safe: PostgreSQL, a transaction-scoped advisory lock keyed
on the schema, held around the whole upgrade (DDL is transactional there, so an upgrade
is all or nothing); SQLite, an exclusive transaction. The second process waits, then
finds the schema current and does nothing.

A database made before migrations existed (by ``create_all``: the tables, no
``alembic_version``) is stamped at the baseline once its tables and columns are checked
against the baseline's. A database at a revision this code does not know (migrated by a
newer version) is refused with FailedPrecondition naming the revision: nothing is changed.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, inspect, text

from coalition.errors import FailedPrecondition

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"
"""The revision that is the schema as ``create_all`` made it before migrations."""
VERSION_TABLE = "alembic_version"

log = logging.getLogger("coalition.store")

_ONE_AT_A_TIME = threading.RLock()
"""Alembic keeps ``context`` and ``op`` in module globals, so within one process (several
nodes in threads, as tests run them) one Alembic command runs at a time."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands against this code's migrations."""

    revision: str | None
    """The database's revision; None for a fresh database or one made before migrations."""
    head: str
    """The newest revision this code knows."""
    legacy: bool
    """The tables exist but no revision is recorded (made by the old ``create_all``)."""

    @property
    def current(self) -> bool:
        return self.revision == self.head


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for running its commands on ``connection`` (no
    ``alembic.ini``): the shipped migrations, and the connection for ``env.py``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def head_revision() -> str:
    """The newest revision of the migrations shipped with this code."""
    head = _script().get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS}"
    return head


def _where(connection: Connection) -> str:
    return connection.engine.url.render_as_string(hide_password=True)


def _state(connection: Connection) -> SchemaState:
    revisions = MigrationContext.configure(connection).get_current_heads()
    head = head_revision()
    for recorded in revisions:
        try:
            _script().get_revision(recorded)
        except (CommandError, ResolutionError):
            raise FailedPrecondition(
                f"the database {_where(connection)} is at schema revision {recorded!r}, "
                f"which this version of Coalition does not know (its newest is {head!r}): "
                "it was migrated by a newer version; run that version, or restore a backup"
            ) from None
    if len(revisions) > 1:
        raise FailedPrecondition(
            f"the database {_where(connection)} records several schema revisions "
            f"({', '.join(revisions)}); expected one"
        )
    revision = revisions[0] if revisions else None
    tables: set[str] = _tables(connection) if revision is None else set()
    legacy = bool(tables) and bool(tables & set(_baseline_columns()))
    return SchemaState(revision, head, legacy)


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {VERSION_TABLE}


@functools.cache
def _baseline_columns() -> dict[str, frozenset[str]]:
    """Each baseline table's columns, read from the baseline migration itself (run on a
    scratch in-memory SQLite database), so the check never drifts from it."""
    engine = create_engine("sqlite://")
    with _ONE_AT_A_TIME, engine.connect() as connection:
        command.upgrade(alembic_config(connection), BASELINE)
        inspector = inspect(connection)
        columns = {
            table: frozenset(c["name"] for c in inspector.get_columns(table))
            for table in inspector.get_table_names()
            if table != VERSION_TABLE
        }
    engine.dispose()
    return columns


def _check_legacy_tables(connection: Connection) -> None:
    """Refuse a revision-less database whose tables are not the baseline's."""
    inspector = inspect(connection)
    present = _tables(connection)
    problems = [f"table {t} is missing" for t in sorted(set(_baseline_columns()) - present)]
    for table, expected in sorted(_baseline_columns().items()):
        if table in present:
            have = {c["name"] for c in inspector.get_columns(table)}
            problems += [f"{table}.{c} is missing" for c in sorted(expected - have)]
    if problems:
        raise FailedPrecondition(
            f"the database {_where(connection)} has Coalition tables but no schema revision, "
            f"and they are not the schema before migrations ({'; '.join(problems)}): "
            "refusing to migrate it"
        )


_POSTGRES_LOCK = text(
    "SELECT pg_advisory_xact_lock(hashtext('coalition-schema:' || current_schema()))"
)
MIGRATION_IDLE_MS = 120_000
"""How long a migrating transaction may sit between statements: Alembic does Python work
(imports, autogenerated operations) between them, which on a loaded machine exceeded the
writers' ``IDLE_IN_TRANSACTION_MS`` and ended the migration (a CI failure). Still bounded,
so a stalled migrating process cannot hold the schema lock for ever."""


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding the schema lock until the block's transaction commits."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(
                f"SET LOCAL idle_in_transaction_session_timeout = {MIGRATION_IDLE_MS}"
            )
            connection.execute(_POSTGRES_LOCK)
        elif connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN EXCLUSIVE")
        yield connection
        connection.commit()


def schema_state(engine: Engine) -> SchemaState:
    """The database's revision against this code's, changing nothing (``migrate --check``).

    Raises FailedPrecondition for a revision this code does not know.
    """
    with _ONE_AT_A_TIME, engine.connect() as connection:
        return _state(connection)


def upgrade_schema(engine: Engine) -> str:
    """Bring the database to the newest revision under the schema lock; the revision.

    Idempotent and safe to run from several processes at once. MUST run before a node
    reads or writes its tables. Raises FailedPrecondition (and changes nothing) for a
    database at an unknown revision, or with tables that are not the baseline's.
    """
    with _ONE_AT_A_TIME, _schema_lock(engine) as connection:
        state = _state(connection)
        if state.current:
            return state.head
        config = alembic_config(connection)
        if state.legacy:
            _check_legacy_tables(connection)
            command.stamp(config, BASELINE)
            log.info("database %s made before migrations: stamped %s", _where(connection), BASELINE)
        command.upgrade(config, state.head)
        log.info("database %s schema at revision %s", _where(connection), state.head)
        return state.head
