"""Ready-made nodes for tests and benchmarks: a real service on a real database."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from coalition.ledger.keys import SigningKey
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.points.rules import ProgramRules
from coalition.store.db import make_engine, normalise_url
from coalition.store.schema import upgrade_schema


class Clock:
    """A settable clock, so holding periods end and points expire within a test."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


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
def temporary_node(
    url: str,
    *,
    program: str = "testair",
    rules: ProgramRules | None = None,
    sealer: SealerConfig | None = None,
    clock: Callable[[], datetime] | None = None,
    key: SigningKey | None = None,
    start: bool = True,
) -> Iterator[NodeService]:
    """A started NodeService on ``url`` with a fresh key; closed (and sealed) afterwards."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{1,31}", program):
        raise ValueError(program)
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    upgrade_schema(engine)
    service = NodeService(
        engine,
        program,
        key or SigningKey.generate(),
        b"test-account-secret-0123456789",
        rules or ProgramRules(rewards={"signup": 500, "review": 50, "referral": 1000}),
        sealer or SealerConfig(max_entries=1000, max_delay_ms=50),
        clock,
    )
    if start:
        service.start()
    try:
        yield service
    finally:
        service.close()
