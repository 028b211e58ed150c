"""Alembic migrations (``coalition.store.schema``) on SQLite and PostgreSQL: the migrated
schema is the one the table classes declare (and the one ``create_all`` made before
migrations, DDL for DDL); databases at the baseline or made by the old ``create_all``
upgrade; an unknown revision or foreign tables are refused and left as they were; four
upgrades at once are safe; ``coalition migrate`` upgrades and ``--check`` reports."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from sqlmodel import SQLModel

from coalition.cli import main
from coalition.errors import FailedPrecondition
from coalition.store import db as db_module
from coalition.store import ledger as ledger_store
from coalition.store import schema as schema_module
from coalition.store.db import make_engine
from coalition.store.ledger import entries
from coalition.store.members import accounts
from coalition.store.schema import (
    BASELINE,
    VERSION_TABLE,
    alembic_config,
    head_revision,
    schema_state,
    upgrade_schema,
)

from support.databases import postgres_schema
from support.nodes import temporary_node


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, sqlite_synchronous="NORMAL")
    yield engine
    engine.dispose()


def recorded_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def catalog(conn: Connection) -> set[tuple[str, ...]]:
    """Every table, column, index and constraint as the database itself describes them."""
    if conn.dialect.name == "sqlite":
        rows = conn.execute(text("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
        return {(t, n, re.sub(r"\s+", " ", s)) for t, n, s in rows if n != VERSION_TABLE}
    schema = {"schema": conn.execute(text("SELECT current_schema()")).scalar_one()}
    columns = conn.execute(
        text(
            "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,"
            " column_default, ordinal_position FROM information_schema.columns"
            " WHERE table_schema = :schema"
        ),
        schema,
    )
    indexes = conn.execute(
        text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :schema"), schema
    )
    constraints = conn.execute(
        text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = (SELECT oid FROM pg_namespace WHERE nspname = :schema)"
        ),
        schema,
    )
    found = {("column", *map(str, row)) for row in columns}
    found |= {("index", n, d.replace(f"{schema['schema']}.", "")) for n, d in indexes}
    found |= {("constraint", *row) for row in constraints}
    return {row for row in found if VERSION_TABLE not in " ".join(row)}


def test_the_migrated_schema_is_the_tables_schema(engine: Engine, database_url: str) -> None:
    assert upgrade_schema(engine) == head_revision() == recorded_revision(engine)
    with engine.connect() as conn:
        differences = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
        migrated = catalog(conn)
    assert differences == []
    with _other_database(database_url) as other:
        SQLModel.metadata.create_all(other)
        with other.connect() as conn:
            assert catalog(conn) == migrated, "the baseline is what create_all makes"


@contextmanager
def _other_database(database_url: str, name: str = "create-all.db") -> Iterator[Engine]:
    """A second fresh database of ``database_url``'s kind: a SQLite file beside it, or a
    new PostgreSQL schema."""
    with ExitStack() as stack:
        if database_url.startswith("postgres"):
            url = stack.enter_context(postgres_schema())
        else:
            url = database_url.replace("node.db", name)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        yield engine


def test_a_database_at_the_baseline_upgrades(engine: Engine) -> None:
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        conn.commit()
    assert schema_state(engine).revision == BASELINE
    assert upgrade_schema(engine) == head_revision()
    assert schema_state(engine).current


def test_the_log_head_of_an_existing_log_starts_after_its_newest_entry(engine: Engine) -> None:
    """0002_log_order on a database with entries: the head is max(log_index) + 1, so the
    next write takes the next index (an empty log starts at 0)."""
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        conn.commit()
    with engine.begin() as conn:
        for index in range(3):
            conn.execute(
                entries.insert().values(
                    log_index=index,
                    entry_id=f"{index:032x}",
                    kind="enroll",
                    account="a1",
                    body="{}",
                    leaf_hash=bytes(32),
                )
            )
    assert upgrade_schema(engine) == head_revision()
    with engine.begin() as conn:
        assert ledger_store.take_head(conn) == 3
        assert ledger_store.read_head(conn) == 3


def test_a_database_made_by_the_old_create_all_is_stamped_and_keeps_its_rows(
    engine: Engine,
) -> None:
    # What create_schema made before migrations: the baseline's tables (today's table
    # classes have the indexes of later revisions), with no revision recorded.
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    with engine.begin() as conn:
        conn.execute(accounts.insert().values(account="a1", member_id="m1", enrolled_at=1))
    state = schema_state(engine)
    assert state.legacy and state.revision is None and not state.current
    assert upgrade_schema(engine) == head_revision() == recorded_revision(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT member_id FROM accounts")).scalar_one() == "m1"
    with temporary_node(str(engine.url.render_as_string(hide_password=False))) as node:
        assert node.ledger.latest_header() is None


def test_revision_less_tables_that_are_not_the_baseline_are_refused(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (account VARCHAR(64) PRIMARY KEY)"))
    with pytest.raises(FailedPrecondition, match=r"no schema revision.*table blocks is missing"):
        upgrade_schema(engine)
    with pytest.raises(FailedPrecondition, match=r"accounts\.member_id is missing"):
        upgrade_schema(engine)
    assert VERSION_TABLE not in inspect(engine).get_table_names()
    assert inspect(engine).get_table_names() == ["accounts"]


def test_an_unknown_revision_is_refused_by_name_and_nothing_changes(
    engine: Engine, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_from_the_future'"))
    for attempt in (upgrade_schema, schema_state):
        with pytest.raises(FailedPrecondition, match="schema revision '9999_from_the_future'"):
            attempt(engine)
    with pytest.raises(FailedPrecondition, match="does not know"), temporary_node(database_url):
        pass
    config = tmp_path / "node.toml"
    config.write_text(f'[program]\nid = "testair"\n[node]\ndatabase = "{database_url}"\n')
    capsys.readouterr()
    assert main(["migrate", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the database ") and "'9999_from_the_future'" in err
    assert recorded_revision(engine) == "9999_from_the_future"


def _upgrade_at_once(engines: list[Engine]) -> None:
    """Upgrade every engine from its own thread, all released together."""
    start = threading.Barrier(len(engines))
    results: list[str] = []
    errors: list[BaseException] = []

    def upgrade(engine: Engine) -> None:
        start.wait()
        try:
            results.append(upgrade_schema(engine))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and results == [head_revision()] * len(engines)


def test_concurrent_upgrades_of_one_database_all_succeed(database_url: str) -> None:
    engines = [make_engine(database_url) for _ in range(4)]
    _upgrade_at_once(engines)
    for engine in engines:
        engine.dispose()


def test_upgrades_of_several_databases_in_one_process_at_once(database_url: str) -> None:
    """Alembic's globals are shared by the threads of a process (several nodes in one
    test process): upgrades of different databases must not trample each other."""
    with ExitStack() as stack:
        engines = [
            stack.enter_context(_other_database(database_url, f"other-{n}.db")) for n in range(3)
        ]
        _upgrade_at_once(engines)
        for engine in engines:
            assert schema_state(engine).current


def test_the_migrate_command(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[program]\nid = "testair"\n[node]\ndatabase = "{database_url}"\n')
    head = head_revision()
    capsys.readouterr()
    assert main(["migrate", "--config", str(config), "--check"]) == 1
    out = capsys.readouterr().out
    assert "migrating creates it at revision" in out and head in out
    assert not (tmp_path / "node.db").exists(), "--check creates no SQLite file"
    assert main(["migrate", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"schema at revision {head}\n"
    assert main(["migrate", "--config", str(config), "--check"]) == 0
    assert capsys.readouterr().out == f"schema at revision {head}: current\n"


@pytest.mark.postgres
def test_a_slow_migration_is_not_ended_by_the_writers_idle_timeout(
    postgres_available: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (CI on a loaded machine): Alembic's pauses between statements exceeded
    the 4 s idle-in-transaction limit meant for stalled writers and ended the migration."""
    monkeypatch.setattr(db_module, "IDLE_IN_TRANSACTION_MS", 300)
    monkeypatch.setattr(schema_module.command, "upgrade", _slow(schema_module.command.upgrade))
    with postgres_schema() as url:
        engine = make_engine(url)
        try:
            upgrade_schema(engine)
            assert recorded_revision(engine) == head_revision()
        finally:
            engine.dispose()


def _slow(upgrade: Callable[..., None]) -> Callable[..., None]:
    """``upgrade`` after a pause longer than the patched writers' idle limit, inside the
    migrating transaction."""

    def slow(config: Any, revision: str) -> None:
        time.sleep(0.6)
        upgrade(config, revision)

    return slow
