"""``store.failures``: the drivers' real storage errors become the core's, mapped once.

These need neither root nor a tmpfs (``test_storage_failures`` fills real disks): SQLite
is made full for real by ``PRAGMA max_page_count`` (the database may not grow past its
pages, and SQLite answers SQLITE_FULL exactly as for a full disk), a file that is not a
database is opened, and PostgreSQL is asked to write in a read-only transaction and to
connect to a port nobody listens on.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from sqlalchemy import event, text

from coalition.api.errors import grpc_status, http_headers, http_status
from coalition.demo.processes import free_ports
from coalition.errors import CorruptDatabase, StorageUnavailable
from coalition.store.db import make_engine
from coalition.store.failures import RETRY_AFTER_S, classify, health_of

from support.databases import postgres_schema
from support.nodes import temporary_node


def test_sqlite_at_its_page_limit_is_storage_unavailable_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    with temporary_node(url) as node:
        node.points.enroll("before", idempotency_key="before")

        @event.listens_for(node.sequencer.engine, "connect")
        def _limit(dbapi_connection: object, _record: object) -> None:
            dbapi_connection.execute("PRAGMA max_page_count = 1")  # type: ignore[attr-defined]

        node.sequencer.engine.dispose()  # every new connection gets the limit
        refused: StorageUnavailable | None = None
        for n in range(5000):  # the pages in hand fill first
            try:
                node.points.enroll(f"m{n}", idempotency_key=f"m{n}")
            except StorageUnavailable as exc:
                refused = exc
                break
        assert refused is not None and "disk is full" in str(refused)
        assert refused.retry_after_s == RETRY_AFTER_S
        assert health_of(node.sequencer.engine).problem() is not None
        event.remove(node.sequencer.engine, "connect", _limit)
        node.sequencer.engine.dispose()
        assert node.points.enroll(f"m{n}", idempotency_key=f"m{n}").replayed is False
        assert health_of(node.sequencer.engine).problem() is None


def test_a_file_that_is_not_a_database_is_corrupt_database(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(b"this is not a SQLite database, only text" * 200)
    engine = make_engine(f"sqlite:///{path}")
    try:
        with pytest.raises(CorruptDatabase, match="damaged") as caught, engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM entries"))
        assert str(tmp_path) not in str(caught.value)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_read_only_transaction_is_storage_unavailable(
    postgres_available: None,
) -> None:
    with postgres_schema() as url:
        engine = make_engine(url + "%20-cdefault_transaction_read_only%3Don")
        try:
            with pytest.raises(StorageUnavailable, match="read-only"), engine.begin() as conn:
                conn.execute(text("CREATE TABLE refused (x int)"))
        finally:
            engine.dispose()


@pytest.mark.postgres
def test_postgres_nobody_listening_is_storage_unavailable_without_the_address() -> None:
    (port,) = free_ports(1)
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{port}/test")
    try:
        with (
            pytest.raises(StorageUnavailable, match="cannot be reached") as caught,
            engine.connect() as conn,
        ):
            conn.execute(text("SELECT 1"))
        assert str(port) not in str(caught.value) and "127.0.0.1" not in str(caught.value)
        assert health_of(engine).problem() is not None
    finally:
        engine.dispose()


def test_storage_failures_map_to_503_and_unavailable_once() -> None:
    full = StorageUnavailable("full", retry_after_s=RETRY_AFTER_S)
    assert http_status(full) == 503
    assert grpc_status(full) == grpc.StatusCode.UNAVAILABLE
    assert http_headers(full) == {"Retry-After": "5"}
    damaged = CorruptDatabase("damaged")
    assert http_status(damaged) == 503
    assert grpc_status(damaged) == grpc.StatusCode.UNAVAILABLE
    assert http_headers(damaged) == {}


def test_unrelated_errors_are_not_storage_failures() -> None:
    assert classify(ValueError("no")) is None
    assert classify(FileNotFoundError(2, "missing")) is None
    assert isinstance(classify(OSError(28, "No space left on device")), StorageUnavailable)
