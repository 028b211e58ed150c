"""Group commit: concurrent writers share transactions without losing or mixing anything."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from coalition.errors import CoalitionError, InsufficientPoints
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.points.replay import Replay
from coalition.store import columns as columns_store
from coalition.store import ledger as ledger_store
from coalition.store.ledger import entries

from support.nodes import Clock, temporary_node

WRITERS = 8
WRITES = 25


@pytest.fixture
def svc(database_url: str) -> Iterator[NodeService]:
    with temporary_node(
        database_url, clock=Clock(), sealer=SealerConfig(max_entries=50, max_delay_ms=20)
    ) as service:
        yield service


def test_concurrent_writes_are_all_committed_once_in_a_dense_log(svc: NodeService) -> None:
    members = [f"m{n}" for n in range(WRITERS)]
    for member in members:
        svc.points.enroll(member, idempotency_key=f"enroll-{member}")
        svc.points.adjust(member, 1000, "op", "opening", idempotency_key=f"open-{member}")
    errors: list[BaseException] = []
    replayed: list[bool] = []

    def work(member: str) -> None:
        try:
            for n in range(WRITES):
                # every key is sent twice, by this thread: the second is a replay
                for _ in range(2):
                    result = svc.points.redeem(member, 1, f"r{n}", idempotency_key=f"{member}-{n}")
                    replayed.append(result.replayed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert replayed.count(True) == replayed.count(False) == WRITERS * WRITES
    svc.ledger.flush()
    with svc.sequencer.read() as conn:
        count, top = conn.execute(select(func.count(), func.max(entries.c.log_index))).one()
        bodies = [
            columns_store.stored_object(b) for _, b, _ in ledger_store.entry_bodies(conn, 0, count)
        ]
    assert top == count - 1 == WRITERS * (2 + WRITES) - 1
    replay = Replay()
    for body in bodies:
        replay.apply(body)
    for member in members:
        assert svc.points.balance(member).spendable == 1000 - WRITES


def test_a_refusal_in_a_batch_fails_only_its_caller(svc: NodeService) -> None:
    svc.points.enroll("rich", idempotency_key="e-rich")
    svc.points.enroll("poor", idempotency_key="e-poor")
    svc.points.adjust("rich", 100, "op", "opening", idempotency_key="open-rich")
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(20)

    def spend(n: int) -> None:
        member = "poor" if n % 2 else "rich"
        barrier.wait()
        try:
            svc.points.redeem(member, 1, f"x{n}", idempotency_key=f"k{n}")
            outcomes[f"k{n}"] = "ok"
        except CoalitionError as exc:
            outcomes[f"k{n}"] = exc

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for n in range(20):
        if n % 2:
            assert isinstance(outcomes[f"k{n}"], InsufficientPoints)
        else:
            assert outcomes[f"k{n}"] == "ok"
    assert svc.points.balance("rich").spendable == 90
    assert svc.points.balance("poor").spendable == 0
