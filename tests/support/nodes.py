"""A settable clock and a ready-made service on a real database, for the tests of the
service itself (a whole node, features and transports included, is ``support.coalition``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from coalition.ledger.keys import SigningKey
from coalition.node.config import SealerConfig
from coalition.node.ledger_keys import RotatedKeyLoader
from coalition.node.service import NodeService
from coalition.points.rules import ProgramRules
from coalition.runtime.wiring import open_service

from support.databases import at_current_schema


class Clock:
    """A settable clock, so holding periods end and points expire within a test."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


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
    rotated_keys: RotatedKeyLoader | None = None,
) -> Iterator[NodeService]:
    """A started NodeService on ``url`` (``runtime.wiring.open_service``) with a fresh key
    unless given; closed (and sealed) afterwards. A fresh database starts as a copy of
    the migrated template (``support.databases.at_current_schema``)."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{1,31}", program):
        raise ValueError(program)
    at_current_schema(url)
    service = open_service(
        url,
        program,
        key or SigningKey.generate(),
        b"test-account-secret-0123456789",
        rules or ProgramRules(rewards={"signup": 500, "review": 50, "referral": 1000}),
        sealer or SealerConfig(max_entries=1000, max_delay_ms=50),
        sqlite_synchronous="NORMAL",
        clock=clock,
        rotated_keys=rotated_keys,
    )
    if start:
        service.start()
    try:
        yield service
    finally:
        service.close()
