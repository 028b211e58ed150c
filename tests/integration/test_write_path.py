"""The write path's cost contract (SQLite and PostgreSQL): a debit reads and writes only
the lots it consumes, whatever the member holds, and takes the same lots, in the same
order, as a debit that loaded every lot; the prepared statements raise SQLAlchemy's
errors."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from coalition.errors import InsufficientPoints
from coalition.node.service import NodeService
from coalition.points.rules import ProgramRules
from coalition.points.state import Account
from coalition.store import members as members_store

from support.nodes import Clock, temporary_node

RULES = ProgramRules(
    rewards={"referral": 1000},
    holding_period=timedelta(days=30),
    expiry_period=timedelta(days=365),
    max_points_per_operation=10**7,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(database_url: str, clock: Clock) -> Iterator[NodeService]:
    with temporary_node(database_url, rules=RULES, clock=clock) as service:
        yield service


def _lots(svc: NodeService, member: str, count: int) -> None:
    svc.points.enroll(member, idempotency_key=f"enroll-{member}")
    for n in range(count):
        svc.points.earn_reward(member, "referral", f"{member}-{n}", idempotency_key=f"{member}-{n}")


def test_a_debit_with_200_lots_reads_and_saves_only_the_lots_it_consumes(
    svc: NodeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lots(svc, "frequent", 200)
    loaded: list[int] = []
    saved: list[set[str]] = []
    debit_account, save_lots = members_store.debit_account, members_store.save_lots

    def counting_debit(*args: Any) -> Account:
        account = debit_account(*args)
        loaded.append(len(account.lots))
        return account

    def recording_save(conn: Any, touched: Any, known: set[str]) -> None:
        touched = list(touched)
        saved.append({lot for account in touched for lot in account.changed})
        save_lots(conn, touched, known)

    monkeypatch.setattr(members_store, "debit_account", counting_debit)
    monkeypatch.setattr(members_store, "save_lots", recording_save)
    entry = svc.points.redeem("frequent", 1500, "ORDER-1", idempotency_key="r1").entry
    taken = {item["lot"] for item in entry["taken"]}  # type: ignore[index, union-attr]
    assert len(taken) == 2
    assert loaded == [members_store.DEBIT_PREFIX]
    assert saved == [taken]
    # A debit the first range read does not cover reads on, and its refusal names the
    # whole balance, as with every lot loaded.
    with pytest.raises(InsufficientPoints, match="has 198500 spendable points, 10000000 asked"):
        svc.points.redeem("frequent", 10**7, "ORDER-2", idempotency_key="r2")
    assert loaded[1] == 199
    entry = svc.points.redeem("frequent", 20_000, "ORDER-3", idempotency_key="r3").entry
    assert len(entry["taken"]) == 21  # type: ignore[arg-type]
    assert loaded[2] == 199 and len(saved[-1]) == 21
    assert svc.points.balance("frequent").spendable == 200_000 - 21_500


def test_debits_take_the_lots_a_full_load_takes(svc: NodeService, clock: Clock) -> None:
    """Lots of many expiry times, pending ones and expired ones, partly spent: every
    debit takes what ``Account.take`` takes from every lot of the account."""
    rng = random.Random(7)
    svc.points.enroll("mixed", idempotency_key="enroll-mixed")
    for n in range(60):
        if rng.random() < 0.3:
            spend = rng.randrange(100, 5000)
            svc.points.earn_purchase("mixed", f"P{n}", spend, "", idempotency_key=f"p{n}")
        else:
            svc.points.earn_reward("mixed", "referral", f"mixed-{n}", idempotency_key=f"w{n}")
        clock.advance(days=rng.choice([0, 0, 1, 7]), microseconds=rng.choice([0, 1]))
    clock.advance(days=300)  # the first rewards have expired by now
    svc.points.earn_purchase("mixed", "P-late", 2000, "", idempotency_key="p-late")  # pending
    account_id = svc.points.balance("mixed").account
    with svc.sequencer.read() as conn:
        lots = members_store.load_accounts(conn, [account_id])[account_id].lots.values()
    assert any(lot.expires_at <= clock() for lot in lots)
    assert any(lot.pending(clock()) for lot in lots)
    for n in range(40):
        amount = rng.choice([1, 10, 999, 1000, 1001, 4000, 9000])
        with svc.sequencer.read() as conn:
            full = members_store.load_accounts(conn, [account_id])[account_id]
            prefix = members_store.debit_account(conn, account_id, amount, clock())
        try:
            expected = [lot.id for lot in full.take(amount, clock())]
        except InsufficientPoints as exc:
            with pytest.raises(InsufficientPoints, match=str(exc)):
                prefix.take(amount, clock())
            break
        assert [lot.id for lot in prefix.take(amount, clock())] == expected
        svc.points.redeem("mixed", amount, f"O{n}", idempotency_key=f"o{n}")
        clock.advance(days=rng.choice([0, 3]))


def test_a_prepared_write_raises_sqlalchemys_integrity_error(svc: NodeService) -> None:
    svc.points.enroll("alice", idempotency_key="enroll-alice")
    with svc.sequencer.engine.begin() as conn, pytest.raises(IntegrityError):
        members_store.insert_account(conn, "another-account", "alice", svc.sequencer.now())
