"""The application service on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction

import pytest

from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    IdempotencyConflict,
    InsufficientPoints,
    InvalidArgument,
    NotFound,
)
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.node.views import PurchaseRow
from coalition.points.rules import ProgramRules, Tier

from support.nodes import Clock, temporary_node

RULES = ProgramRules(
    points_per_unit=Fraction(1),
    categories={"flights": Fraction(3), "dining": Fraction(3, 2)},
    tiers=(Tier("blue", 0, Fraction(1)), Tier("gold", 1000, Fraction(2))),
    holding_period=timedelta(days=30),
    expiry_period=timedelta(days=365),
    max_points_per_purchase=50_000,
    max_points_per_operation=100_000,
    rewards={"signup": 500, "review": 50},
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(database_url: str, clock: Clock) -> Iterator[NodeService]:
    with temporary_node(
        database_url, rules=RULES, clock=clock, sealer=SealerConfig(max_entries=7, max_delay_ms=20)
    ) as service:
        yield service


def _state(svc: NodeService, member: str) -> tuple[object, int]:
    return svc.points.balance(member), len(svc.points.history(member, limit=1000))


def _members(svc: NodeService, *names: str) -> None:
    for name in names:
        svc.points.enroll(name, idempotency_key=f"enroll-{name}")


def test_points_move_with_pending_tiers_and_expiry(svc: NodeService, clock: Clock) -> None:
    _members(svc, "alice", "bob")
    svc.points.earn_reward("alice", "signup", "alice", idempotency_key="su-alice")
    earn = svc.points.earn_purchase("alice", "P-1", 20_000, "flights", idempotency_key="p1").entry
    assert earn["amount"] == 600  # 200.00 EUR x 3 (flights), blue tier x 1
    balance = svc.points.balance("alice")
    assert (balance.spendable, balance.pending, balance.held) == (500, 600, 1100)
    with pytest.raises(InsufficientPoints):
        svc.points.redeem("alice", 600, "ORDER-1", idempotency_key="r0")
    clock.advance(days=31)
    assert svc.points.balance("alice").spendable == 1100
    # P-2 (earned at blue) brings 1,200 qualifying points: gold, so P-3 earns double.
    svc.points.earn_purchase("alice", "P-2", 20_000, "flights", idempotency_key="p2")
    assert svc.points.balance("alice").tier == "gold"
    third = svc.points.earn_purchase("alice", "P-3", 10_000, "", idempotency_key="p3").entry
    assert third["amount"] == 200
    assert ["tier:gold", "2"] in third["reason"]["multipliers"]  # type: ignore[index, operator]
    svc.points.redeem("alice", 700, "ORDER-2", idempotency_key="r1")
    svc.points.transfer("alice", "bob", 300, "birthday gift", idempotency_key="t1")
    assert svc.points.balance("bob").spendable == 300
    # The two oldest lots (signup and P-1, 1,100 points) were spent first.
    lots = {lot.ref: lot.remaining for lot in svc.points.lots("alice")}
    assert lots["signup:alice"] + lots["purchase:P-1"] == 100
    assert (lots["purchase:P-2"], lots["purchase:P-3"]) == (600, 200)
    clock.advance(days=340)  # past the first lots' expiry (and bob's, which kept it)
    result = svc.points.run_expiry()
    assert result.entries == 2 and result.points == 100 + 300
    assert svc.points.balance("bob").held == 0
    assert svc.points.balance("alice").spendable == 800
    assert svc.points.run_expiry().entries == 0


def test_expiry_takes_oldest_lots_first(svc: NodeService, clock: Clock) -> None:
    _members(svc, "carol")
    svc.points.earn_reward("carol", "signup", "carol", idempotency_key="a")
    clock.advance(days=100)
    svc.points.earn_reward("carol", "review", "rev-1", idempotency_key="b")
    clock.advance(days=266)  # the signup lot is now 366 days old, the review lot 266
    result = svc.points.run_expiry()
    assert (result.entries, result.points) == (1, 500)
    assert svc.points.balance("carol").spendable == 50


def test_clawback_of_spent_points_recovers_then_writes_off(svc: NodeService, clock: Clock) -> None:
    _members(svc, "dave")
    svc.points.earn_purchase("dave", "P-9", 50_000, "", idempotency_key="e")
    svc.points.earn_reward("dave", "review", "rv", idempotency_key="rv")
    clock.advance(days=31)
    svc.points.redeem("dave", 520, "ORD", idempotency_key="spend")  # 500 + 20 of the review lot
    entry = svc.points.reverse_purchase("dave", "P-9", idempotency_key="refund").entry
    assert (entry["amount"], entry["written_off"]) == (30, 470)
    assert svc.points.balance("dave").held == 0
    with pytest.raises(FailedPrecondition):
        svc.points.reverse_purchase("dave", "P-9", idempotency_key="refund-again")


def test_revocation_and_adjustment_name_the_operator(svc: NodeService) -> None:
    _members(svc, "erin")
    reward = svc.points.earn_reward("erin", "review", "r-77", idempotency_key="rw").entry
    svc.points.adjust("erin", 25, "op-7", "goodwill for delay", idempotency_key="adj")
    revoked = svc.points.revoke(
        "erin", str(reward["id"]), "op-7", "fake review", idempotency_key="rv"
    )
    assert revoked.entry["reason"] == {
        "rule": "revocation",
        "operator": "op-7",
        "note": "fake review",
        "earn": reward["id"],
    }
    assert svc.points.balance("erin").spendable == 25
    svc.points.adjust("erin", -25, "op-7", "correction", idempotency_key="adj2")
    assert svc.points.balance("erin").held == 0


def test_idempotency_replays_and_refuses_other_bodies(svc: NodeService) -> None:
    _members(svc, "frank")
    first = svc.points.earn_reward("frank", "signup", "frank", idempotency_key="k1")
    again = svc.points.earn_reward("frank", "signup", "frank", idempotency_key="k1")
    assert again.replayed and again.entry == first.entry
    before = _state(svc, "frank")
    with pytest.raises(IdempotencyConflict):
        svc.points.redeem("frank", 10, "X", idempotency_key="k1")
    assert _state(svc, "frank") == before
    assert svc.points.enroll("frank", idempotency_key="enroll-frank").replayed


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.redeem("gina", -5, "R", idempotency_key="x1"), InvalidArgument),
        (lambda s: s.redeem("gina", 0, "R", idempotency_key="x2"), InvalidArgument),
        (lambda s: s.redeem("gina", 2.5, "R", idempotency_key="x3"), InvalidArgument),
        (lambda s: s.redeem("gina", True, "R", idempotency_key="x4"), InvalidArgument),
        (lambda s: s.redeem("gina", 10**12, "R", idempotency_key="x5"), InvalidArgument),
        (lambda s: s.redeem("gina", 10_000, "R", idempotency_key="x6"), InsufficientPoints),
        (lambda s: s.redeem("nobody", 5, "R", idempotency_key="x7"), NotFound),
        (lambda s: s.redeem("bad id!", 5, "R", idempotency_key="x8"), InvalidArgument),
        (lambda s: s.redeem("gina", 5, "R", idempotency_key="bad key!"), InvalidArgument),
        (lambda s: s.earn_purchase("gina", "P", -100, idempotency_key="x9"), InvalidArgument),
        (lambda s: s.earn_purchase("gina", "P", 10**15, idempotency_key="xa"), InvalidArgument),
        (
            lambda s: s.earn_purchase("gina", "P", 100, "toys", idempotency_key="xb"),
            InvalidArgument,
        ),
        (
            lambda s: s.earn_reward("gina", "signup", "gina", idempotency_key="xc"),
            FailedPrecondition,
        ),
        (lambda s: s.earn_reward("gina", "bribe", "g", idempotency_key="xd"), InvalidArgument),
        (lambda s: s.transfer("gina", "gina", 5, "self", idempotency_key="xe"), InvalidArgument),
        (lambda s: s.transfer("gina", "bad id!", 5, "n", idempotency_key="xf"), InvalidArgument),
        (lambda s: s.adjust("gina", 0, "op", "zero", idempotency_key="xg"), InvalidArgument),
        (lambda s: s.adjust("gina", 5, "op", "", idempotency_key="xh"), InvalidArgument),
        (lambda s: s.revoke("gina", "not-an-id", "op", "n", idempotency_key="xi"), InvalidArgument),
        (lambda s: s.revoke("gina", "0" * 32, "op", "n", idempotency_key="xj"), NotFound),
        (lambda s: s.reverse_purchase("gina", "P-404", idempotency_key="xk"), NotFound),
        (lambda s: s.enroll("gina", idempotency_key="xl"), FailedPrecondition),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    svc: NodeService, call: object, error: type[CoalitionError]
) -> None:
    _members(svc, "gina")
    svc.points.earn_reward("gina", "signup", "gina", idempotency_key="su")
    before = _state(svc, "gina")
    size_before = svc.ledger.flush()
    with pytest.raises(error) as raised:
        call(svc.points)  # type: ignore[operator]
    assert str(raised.value)
    assert _state(svc, "gina") == before
    assert svc.ledger.flush() == size_before


def test_concurrent_redemptions_never_overdraw(svc: NodeService) -> None:
    _members(svc, "hana")
    svc.points.earn_reward("hana", "signup", "hana", idempotency_key="su")  # 500 points
    outcomes: list[str] = []
    lock = threading.Lock()

    def spend(n: int) -> None:
        try:
            svc.points.redeem("hana", 30, f"ORD-{n}", idempotency_key=f"spend-{n}")
            result = "ok"
        except InsufficientPoints:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 16  # 16 x 30 = 480 <= 500 < 510
    assert outcomes.count("refused") == 24
    assert svc.points.balance("hana").spendable == 20


def test_bulk_earn_reports_bad_rows_and_commits_the_rest(svc: NodeService) -> None:
    _members(svc, "ivan", "jo")
    rows = [
        PurchaseRow("ivan" if n % 2 else "jo", f"B-{n}", 1000 + n, "", f"bulk-{n}")
        for n in range(500)
    ]
    rows[10] = PurchaseRow("nobody", "B-x", 1000, "", "bulk-x")
    rows[20] = PurchaseRow("ivan", "B-y", -1, "", "bulk-y")
    rows[30] = PurchaseRow("ivan", "B-1", 1000, "", "bulk-dup-ref")  # reference B-1 repeats
    result = svc.points.earn_bulk(rows, batch_size=64)
    assert result.accepted == 497 and result.replayed == 0
    assert sorted(err.row for err in result.rejected) == [11, 21, 31]
    again = svc.points.earn_bulk(rows, batch_size=100)
    assert again.accepted == 0 and again.replayed == 497
    expected = {"ivan": 0, "jo": 0}
    for n in range(500):  # members turn gold (x2) once they hold 1,000 qualifying points
        if n not in (10, 20, 30):
            member = "ivan" if n % 2 else "jo"
            expected[member] += (1000 + n) * (2 if expected[member] >= 1000 else 1) // 100
    assert svc.points.balance("ivan").held == expected["ivan"]
    assert svc.points.balance("jo").held == expected["jo"]


def test_proofs_verify_at_every_sealed_size(database_url: str, clock: Clock) -> None:
    # Blocks cut by count or flush only: sizes 7, 14, ..., 56, 60 on every run (a timed
    # seal under load could seal size 59, the size below that no block may have).
    sealer = SealerConfig(max_entries=7, max_delay_ms=3_600_000)
    with temporary_node(database_url, rules=RULES, clock=clock, sealer=sealer) as svc:
        _members(svc, *(f"m{n}" for n in range(30)))
        for n in range(30):
            svc.points.earn_reward(f"m{n}", "signup", f"m{n}", idempotency_key=f"su{n}")
        last = svc.ledger.flush()
        assert last is not None and last.header.log_size == 60
        headers = svc.ledger.headers(0)
        assert [h.header.height for h in headers] == list(range(last.header.height + 1))
        assert [h.header.log_size for h in headers] == [*range(7, 60, 7), 60]
        for signed in headers:
            _, entries = svc.ledger.block(signed.header.height)
            for entry in entries:
                doc = svc.ledger.inclusion_proof(str(entry["id"]), signed.header.log_size)
                verify_inclusion_document(doc, svc.public_key)
        for first in range(0, len(headers), 3):
            for second in range(first, len(headers), 2):
                verify_consistency_document(
                    svc.ledger.consistency_proof(first, second), svc.public_key
                )
        with pytest.raises(NotFound):
            svc.ledger.inclusion_proof("f" * 32)
        with pytest.raises(NotFound):  # 59 is a size no block has
            svc.ledger.inclusion_proof(str(entries[0]["id"]), 59)


def test_acknowledged_entries_survive_a_crash(database_url: str) -> None:
    with temporary_node(database_url, start=False) as first:
        first.points.enroll("kim", idempotency_key="e")
        written = first.points.earn_reward("kim", "signup", "kim", idempotency_key="s").entry
        key = first.signing_key  # the same node restarting with its own key
        first.sequencer.engine.dispose()  # no flush: the entries are committed, not yet sealed
        first.sealer.flush = lambda: None  # type: ignore[method-assign]
    with temporary_node(database_url, key=key) as second:
        header = second.ledger.flush()
        assert header is not None and header.header.log_size == 2
        assert second.ledger.entry(str(written["id"])).log_index == 1
        verify_inclusion_document(
            second.ledger.inclusion_proof(str(written["id"])), second.public_key
        )
