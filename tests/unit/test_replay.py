"""Property tests of the pure loyalty core: random operations on in-memory accounts, with a
moving clock, conserve points, never overdraw, debit soonest-to-expire lots first, and
replaying the entries they produced rebuilds exactly the same lots."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import InsufficientPoints
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.points import operations
from coalition.points.operations import EntryContext
from coalition.points.replay import Replay
from coalition.points.rules import ProgramRules
from coalition.points.state import Account, Lot, apply_entry

RULES = ProgramRules(
    holding_period=timedelta(days=30),
    expiry_period=timedelta(days=365),
    rewards={"signup": 500, "review": 50},
)
MEMBERS = 4
START = datetime(2026, 1, 1, tzinfo=UTC)

member = st.integers(0, MEMBERS - 1)
points = st.integers(1, 700)
earn = st.one_of(
    st.tuples(st.just("purchase"), member, st.integers(100, 100_000)),
    st.tuples(st.just("reward"), member, st.sampled_from(["signup", "review"])),
)
spend = st.one_of(
    st.tuples(st.just("redeem"), member, points),
    st.tuples(st.just("transfer"), member, member, points),
)
step = st.one_of(
    earn,
    spend,
    spend,
    st.tuples(st.just("advance"), st.integers(1, 45) | st.integers(300, 400)),
    st.tuples(st.just("adjust"), member, st.integers(-500, 1000).filter(bool)),
    st.tuples(st.just("clawback"), member, st.integers(0, 20), st.booleans()),
    st.tuples(st.just("expire")),
)


def _debit_key(lot: Lot) -> tuple[datetime, datetime, str]:
    return (lot.expires_at, lot.earned_at, lot.id)


class World:
    """Accounts as a node holds them, plus what every entry says it moved."""

    def __init__(self) -> None:
        self.now = START
        self.accounts = {f"{n:064x}": Account(f"{n:064x}") for n in range(MEMBERS)}
        self.ids = [*self.accounts]
        self.entries: list[JsonObject] = []
        self.moved: Counter[str] = Counter()
        self.serial = 0

    def ctx(self) -> EntryContext:
        self.serial += 1
        return EntryContext("testair", f"{self.serial:032x}", self.now)

    def record(self, body: JsonObject) -> None:
        """Apply ``body`` as the node does (after a JSON round trip, as stored)."""
        stored = parse_json(canonical_json(body))
        assert isinstance(stored, dict)
        apply_entry(stored, self.accounts.__getitem__)
        for account in self.accounts.values():
            account.changed.clear()
        self.entries.append(stored)
        amount = stored.get("amount", 0)  # an enroll moves no points
        assert isinstance(amount, int)
        kind = str(stored["kind"])
        if kind == "adjust":
            self.moved["adjust+" if amount > 0 else "adjust-"] += abs(amount)
        else:
            self.moved[kind] += amount

    def supply(self) -> int:
        return sum(account.held() for account in self.accounts.values())

    def expected_supply(self) -> int:
        m = self.moved
        gained = m["earn"] + m["adjust+"]
        lost = m["redeem"] + m["expire"] + m["reverse"] + m["revoke"] + m["adjust-"]
        return gained - lost


def check_debit(before: Account, body: JsonObject, at: datetime) -> None:
    """The lots a debit took are the soonest-to-expire spendable ones, in that order."""
    taken = body["taken"]
    assert isinstance(taken, list)
    lots = [before.lots[str(item["lot"])] for item in taken if isinstance(item, dict)]
    assert [_debit_key(lot) for lot in lots] == sorted(_debit_key(lot) for lot in lots)
    for lot, item in zip(lots[:-1], taken[:-1], strict=True):
        assert isinstance(item, dict) and item["amount"] == lot.remaining  # emptied in order
    if lots:
        last = _debit_key(lots[-1])
        skipped = [
            lot
            for lot in before.lots.values()
            if lot.spendable(at) and lot not in lots and _debit_key(lot) < last
        ]
        assert not skipped, "a sooner-to-expire lot was passed over"


def snapshot(account: Account) -> Account:
    return Account(account.id, {lot_id: replace(lot) for lot_id, lot in account.lots.items()})


def run_step(world: World, op: tuple[object, ...]) -> None:
    kind = op[0]
    now = world.now
    if kind == "advance":
        world.now += timedelta(days=int(str(op[1])))
        return
    if kind == "expire":
        for account in world.accounts.values():
            body = operations.expire(world.ctx(), account)
            if body is not None:
                world.record(body)
            assert not account.expired_lots(now)
            assert all(lot.remaining == 0 for lot in account.lots.values() if lot.expires_at <= now)
        return
    account = world.accounts[world.ids[int(str(op[1]))]]
    before = snapshot(account)
    if kind == "purchase":
        ref = f"order-{world.serial}"
        ctx = world.ctx()
        qualifying = account.qualifying_since(ctx.at - RULES.tier_window)
        body = operations.earn_purchase(
            ctx, RULES, account.id, qualifying, ref, int(str(op[2])), "", reference_used=False
        )
        world.record(body)
    elif kind == "reward":
        body = operations.earn_reward(
            world.ctx(), RULES, account, str(op[2]), f"ev-{world.serial}", reference_used=False
        )
        world.record(body)
    elif kind in ("redeem", "transfer"):
        amount = int(str(op[-1]))
        spendable = account.balance(now)
        try:
            if kind == "redeem":
                body = operations.redeem(world.ctx(), RULES, account, amount, "gift")
            else:
                target = world.ids[int(str(op[2]))]
                if target == account.id:
                    return
                body = operations.transfer(world.ctx(), RULES, account, target, amount, "gift")
        except InsufficientPoints:
            assert amount > spendable
            return
        assert amount <= spendable
        supply = world.supply()
        world.record(body)
        check_debit(before, body, now)
        assert account.balance(now) == spendable - amount
        if kind == "transfer":
            assert world.supply() == supply  # a transfer moves points, never makes or loses any
    elif kind == "adjust":
        amount = int(str(op[2]))
        try:
            body = operations.adjust(world.ctx(), RULES, account, amount, "ops-1", "fix")
        except InsufficientPoints:
            assert -amount > account.balance(now)
            return
        world.record(body)
        if amount < 0:
            check_debit(before, body, now)
    elif kind == "clawback":
        earns = [lot for lot in account.lots.values() if lot.id == lot.id.split(":")[0]]
        earns = [lot for lot in earns if not lot.reversed and lot.ref is not None]
        if not earns:
            return
        lot = sorted(earns, key=lambda x: x.id)[int(str(op[2])) % len(earns)]
        clawback_kind = "reverse" if op[3] else "revoke"
        body = operations.clawback(world.ctx(), account, lot.id, clawback_kind, {"rule": "test"})
        world.record(body)
        recovered, written_off = body["amount"], body["written_off"]
        assert isinstance(recovered, int) and isinstance(written_off, int)
        assert recovered + written_off == lot.amount and recovered >= 0 and written_off >= 0


@settings(max_examples=200, deadline=None)
@given(st.lists(step, min_size=5, max_size=80))
def test_random_operations_conserve_points_and_replay_exactly(
    steps: list[tuple[object, ...]],
) -> None:
    world = World()
    for account_id in world.ids:
        world.record(operations.enroll(world.ctx(), account_id))
    for op in steps:
        run_step(world, op)
        for account in world.accounts.values():
            for lot in account.lots.values():
                assert 0 <= lot.remaining <= lot.amount
            assert account.balance(world.now) >= 0
        assert world.supply() == world.expected_supply()

    replay = Replay()
    for entry in world.entries:
        replay.apply(entry)
    assert replay.entries == len(world.entries)
    assert replay.supply() == world.supply()
    assert set(replay.accounts) == set(world.accounts)
    for account_id, account in world.accounts.items():
        assert replay.accounts[account_id].lots == account.lots
    assert replay.points_by_kind["earn"] == world.moved["earn"]
    assert replay.points_by_kind["adjust"] == world.moved["adjust+"] - world.moved["adjust-"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=8), st.integers(1, 800))
def test_expiry_takes_exactly_the_lots_whose_time_has_come(gaps: list[int], wait: int) -> None:
    world = World()
    account = world.accounts[world.ids[0]]
    world.record(operations.enroll(world.ctx(), account.id))
    for gap in gaps:
        world.record(
            operations.earn_reward(
                world.ctx(), RULES, account, "signup", f"r{world.serial}", reference_used=False
            )
        )
        world.now += timedelta(days=gap)
    world.now += timedelta(days=wait)
    due = {lot.id for lot in account.lots.values() if lot.expires_at <= world.now}
    body = operations.expire(world.ctx(), account)
    if not due:
        assert body is None
        return
    assert body is not None
    taken = body["taken"]
    assert isinstance(taken, list)
    assert [item["lot"] for item in taken if isinstance(item, dict)] == sorted(
        due, key=lambda lot_id: _debit_key(account.lots[lot_id])
    )
    world.record(body)
    assert account.held() == 500 * (len(gaps) - len(due))
    assert world.supply() == world.expected_supply()
