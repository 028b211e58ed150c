"""The replay's fast path (``points.replay_fast``) against the reference path
(``Replay.apply_reference``): on random chains made by the real operations, and on the
same chains with hostile changes (fields retyped, deleted, times respelled, entries
repeated or moved), every entry must raise the same error or none, and leave the same
state; also when the entry travels as ``prepare``'s tuple through ``marshal``, as from
an audit worker."""

from __future__ import annotations

import copy
import marshal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kind_samples import two_chains

from coalition.errors import InsufficientPoints
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import CANONICAL_TIME
from coalition.points import operations
from coalition.points.kinds import FAST_KINDS
from coalition.points.operations import EntryContext
from coalition.points.replay import Replay
from coalition.points.replay_fast import apply_prepared, apply_run, prepare
from coalition.points.rules import ProgramRules

RULES = ProgramRules(
    holding_period=timedelta(days=2),
    expiry_period=timedelta(days=20),
    rewards={"signup": 500, "review": 50},
)
START = datetime(2026, 1, 1, tzinfo=UTC)
MEMBERS = [f"{n:064x}" for n in range(1, 5)]

op = st.tuples(
    st.sampled_from(["purchase", "reward", "redeem", "transfer", "adjust", "adjust-", "expire"]),
    st.integers(0, len(MEMBERS) - 1),
    st.integers(0, len(MEMBERS) - 1),
    st.integers(1, 900),
    st.integers(0, 30),
)


def build_chain(ops: list[tuple[str, int, int, int, int]]) -> list[JsonObject]:
    """A chain that replays cleanly: entries made by ``points.operations`` on the state."""
    state = Replay()
    chain: list[JsonObject] = []
    at = START
    for n, account_id in enumerate(MEMBERS):
        body = operations.enroll(EntryContext("p", f"e{n}", at), account_id)
        state.apply(body)
        chain.append(body)
    for n, (kind, who, other, amount, hours) in enumerate(ops):
        at += timedelta(hours=hours)
        ctx = EntryContext("p", f"x{n:04d}", at)
        account = state.accounts[MEMBERS[who]]
        try:
            if kind == "purchase":
                body = operations.earn_purchase(
                    ctx, RULES, account.id, 0, f"P{n}", amount * 100, "", reference_used=False
                )
            elif kind == "reward":
                body = operations.earn_reward(
                    ctx, RULES, account, "review", f"R{n}", reference_used=False
                )
            elif kind == "redeem":
                body = operations.redeem(ctx, RULES, account, amount, f"X{n}")
            elif kind == "transfer":
                if who == other:
                    continue
                body = operations.transfer(ctx, RULES, account, MEMBERS[other], amount, "gift")
            elif kind == "adjust":
                body = operations.adjust(ctx, RULES, account, amount, "ops", "fix")
            elif kind == "adjust-":
                body = operations.adjust(ctx, RULES, account, -amount, "ops", "fix")
            else:
                expired = operations.expire(ctx, account)
                if expired is None:
                    continue
                body = expired
        except InsufficientPoints:
            continue
        state.apply(body)
        chain.append(body)
    return chain


def snapshot(replay: Replay) -> object:
    accounts = {
        key: (
            account.id,
            sorted(account.changed),
            [
                (lot_id, *(getattr(lot, f) for f in lot.__slots__))
                for lot_id, lot in account.lots.items()
            ],
        )
        for key, account in replay.accounts.items()
    }
    return (accounts, sorted(replay.refs), dict(replay.points_by_kind), replay.entries)


def run(chain: list[JsonObject], how: str) -> tuple[list[str | None], object]:
    """Replay ``chain`` one way; each entry's outcome (error type and message) and the end
    state."""
    replay = Replay()
    if how == "run":
        return _run_in_blocks(replay, chain), snapshot(replay)
    outcomes: list[str | None] = []
    for entry in chain:
        try:
            if how == "reference":
                replay.apply_reference(entry)
            elif how == "fast":
                replay.apply(entry)
            else:
                prepared = prepare(entry)
                shipped = None if prepared is None else marshal.loads(marshal.dumps(prepared))  # noqa: S302
                if shipped is None or not apply_prepared(replay, shipped):
                    replay.apply(entry)
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    return outcomes, snapshot(replay)


def _run_in_blocks(replay: Replay, chain: list[JsonObject]) -> list[str | None]:
    """As the chain audit replays a block: ``apply_run`` over the shipped tuples (the
    entry itself where ``prepare`` declined), the reference path where it stops."""
    outcomes: list[str | None] = [None] * len(chain)
    items: list[object] = []
    for entry in chain:
        prepared = prepare(entry)
        items.append(entry if prepared is None else marshal.loads(marshal.dumps(prepared)))  # noqa: S302
    n = 0
    while (n := apply_run(replay, items, n)) < len(items):
        try:
            replay.apply(chain[n])
        except Exception as exc:
            outcomes[n] = f"{type(exc).__name__}: {exc}"
        n += 1
    return outcomes


def assert_same(chain: list[JsonObject]) -> None:
    reference = run(copy.deepcopy(chain), "reference")
    assert run(copy.deepcopy(chain), "fast") == reference
    assert run(copy.deepcopy(chain), "prepared") == reference
    assert run(copy.deepcopy(chain), "run") == reference


HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    10**6,
    "",
    "-",
    "x",
    [],
    {},
    [{"lot": "nope", "amount": 1}],
    MEMBERS[0],
    MEMBERS[1],
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00.000000+00:00",
    "2026-02-30T00:00:00.000000Z",
    "2026-01-05T00:00:00.000000Z",
    "2027-01-05T00:00:00.000000Z",
    "2025-01-05T00:00:00.000000Z",
    1.5,
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            out.extend(_paths(item, (*prefix, n)))
    return out


def _fresh(value: Any, old: str, new: str) -> Any:
    """``value`` with every string starting with the id ``old`` respelled with ``new``."""
    if isinstance(value, dict):
        return {k: _fresh(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v, old, new) for v in value]
    return new + value[len(old) :] if isinstance(value, str) and value.startswith(old) else value


def mutate(chain: list[JsonObject], how: tuple[int, int, int, int]) -> None:
    """One hostile change: repeat, move, delete a field, retype a field, repeat under new
    ids (a second earn of one reference, a debit past a lot), or move an entry in time."""
    action, which, where, what = how
    entry = chain[which % len(chain)]
    if action == 0:  # repeat an entry later
        chain.insert(where % (len(chain) + 1), copy.deepcopy(entry))
        return
    if action == 4 and isinstance(entry.get("id"), str):  # the same entry under new ids
        again = _fresh(copy.deepcopy(entry), str(entry["id"]), f"again{where}")
        chain.insert(what % (len(chain) + 1), again)
        return
    if action == 5 and isinstance(entry.get("at"), str) and len(entry["at"]) == 27:
        # the entry earlier or later in time (spendable, expired, ...)
        at = datetime.fromisoformat(str(entry["at"])) + timedelta(hours=what % 1500 - 750)
        entry["at"] = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return
    if action == 1:  # move an entry
        chain.insert(where % len(chain), chain.pop(which % len(chain)))
        return
    paths = _paths(entry)
    path = paths[where % len(paths)]
    parent: Any = entry
    for key in path[:-1]:
        parent = parent[key]
    if action == 2 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(HOSTILE[what % len(HOSTILE)])


@settings(max_examples=150, deadline=None)
@given(st.lists(op, min_size=1, max_size=60))
def test_fast_path_replays_honest_chains_like_the_reference(ops: list[Any]) -> None:
    chain = build_chain(ops)
    assert_same(chain)
    assert run(chain, "fast")[0] == [None] * len(chain)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(op, min_size=1, max_size=40),
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 10**6), st.integers()),
        min_size=1,
        max_size=4,
    ),
)
def test_fast_path_fails_hostile_chains_like_the_reference(
    ops: list[Any], changes: list[tuple[int, int, int, int]]
) -> None:
    chain = build_chain(ops)
    for change in changes:
        mutate(chain, change)
    assert_same(chain)


def test_each_fast_kind_is_taken_and_declines_a_broken_rule() -> None:
    chain = build_chain(
        [
            ("purchase", 0, 0, 500, 0),
            ("reward", 1, 0, 1, 60),
            ("redeem", 0, 0, 100, 1),
            ("transfer", 1, 2, 20, 1),
            ("adjust", 3, 0, 30, 1),
            ("adjust-", 3, 0, 10, 1),
            ("expire", 3, 0, 1, 24 * 30),
        ]
    )
    kinds = [entry["kind"] for entry in chain]
    assert set(kinds) == {"enroll", "earn", "redeem", "transfer", "adjust", "expire"}
    assert all(prepare(entry) is not None for entry in chain)
    assert_same(chain)
    twice = [*chain, chain[4]]  # the purchase again: lot opened twice, reference reused
    outcomes, _ = run(twice, "fast")
    assert outcomes[-1] is not None and outcomes[-1] == run(twice, "reference")[0][-1]


# --- expire entries, one rule at a time --------------------------------------------------
# Random chains rarely write ``expire`` entries (only after an expiry period), so each of
# its rules gets a chain of its own: two lots of MEMBERS[0] (a1: 100 points expiring at
# EXPIRES_A1, a2: 70 points five days later), then the expire entries under test.

EXPIRES_A1 = START + RULES.expiry_period
LATER = EXPIRES_A1 + timedelta(hours=1)
"""After a1 expired, before a2 does."""


def expiry_chain() -> list[JsonObject]:
    """Two members enrolled; MEMBERS[0] credited lots a1 and a2 by operator adjustments."""
    state = Replay()
    chain: list[JsonObject] = [
        operations.enroll(EntryContext("p", f"e{n}", START), MEMBERS[n]) for n in range(2)
    ]
    for body in chain:
        state.apply(body)
    for lot_id, amount, at in (("a1", 100, START), ("a2", 70, START + timedelta(days=5))):
        body = operations.adjust(
            EntryContext("p", lot_id, at), RULES, state.accounts[MEMBERS[0]], amount, "ops", "fix"
        )
        state.apply(body)
        chain.append(body)
    return chain


def expire_entry(
    entry_id: str,
    at: datetime,
    *parts: tuple[str, int],
    amount: int | None = None,
    account: str = MEMBERS[0],
) -> JsonObject:
    """An ``expire`` entry shaped as ``operations.expire`` writes it (``amount``: the
    parts' sum unless told)."""
    return {
        "type": "coalition/entry/v1",
        "program": "p",
        "id": entry_id,
        "kind": "expire",
        "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "account": account,
        "amount": sum(part for _, part in parts) if amount is None else amount,
        "taken": [{"lot": lot_id, "amount": part} for lot_id, part in parts],
        "reason": {"rule": "expiry"},
    }


def test_expire_entry_helper_writes_what_operations_expire_writes() -> None:
    state = Replay()
    for body in expiry_chain():
        state.apply(body)
    made = operations.expire(EntryContext("p", "x1", LATER), state.accounts[MEMBERS[0]])
    assert made == expire_entry("x1", LATER, ("a1", 100))


EXPIRE_CASES: dict[str, tuple[list[JsonObject], list[str | None]]] = {
    "valid": ([expire_entry("x1", LATER, ("a1", 100))], [None]),
    "valid at the expiry instant": ([expire_entry("x1", EXPIRES_A1, ("a1", 100))], [None]),
    "valid part of a lot, then the rest": (
        [expire_entry("x1", LATER, ("a1", 40)), expire_entry("x2", LATER, ("a1", 60))],
        [None, None],
    ),
    "valid, both lots once both expired": (
        [expire_entry("x1", LATER + timedelta(days=5), ("a1", 100), ("a2", 70))],
        [None],
    ),
    "premature by a microsecond": (
        [expire_entry("x1", EXPIRES_A1 - timedelta(microseconds=1), ("a1", 100))],
        ["expires lot a1 before its time"],
    ),
    "premature second lot": (
        [expire_entry("x1", LATER, ("a1", 100), ("a2", 70))],
        ["expires lot a2 before its time"],
    ),
    "premature, then valid": (
        [
            expire_entry("x1", START + timedelta(days=1), ("a1", 100)),
            expire_entry("x2", LATER, ("a1", 100)),
        ],
        ["expires lot a1 before its time", None],
    ),
    "over-taking": (
        [expire_entry("x1", LATER, ("a1", 101))],
        ["takes 101 from lot a1 holding 100"],
    ),
    "over-taking after a part": (
        [expire_entry("x1", LATER, ("a1", 60)), expire_entry("x2", LATER, ("a1", 41))],
        [None, "takes 41 from lot a1 holding 40"],
    ),
    "amount other than the parts": (
        [expire_entry("x1", LATER, ("a1", 100), amount=90)],
        ["expired lots do not sum to amount"],
    ),
    "unknown lot": ([expire_entry("x1", LATER, ("nope", 1))], ["lot nope not in account"]),
    "another member's lot": (
        [expire_entry("x1", LATER, ("a1", 100), account=MEMBERS[1])],
        ["lot a1 not in account"],
    ),
    "account never enrolled": (
        [expire_entry("x1", LATER, ("a1", 100), account=MEMBERS[2])],
        ["used before it was enrolled"],
    ),
    "repeated": (
        [expire_entry("x1", LATER, ("a1", 100)), expire_entry("x1", LATER, ("a1", 100))],
        [None, "takes 100 from lot a1 holding 0"],
    ),
    "repeated under a new id": (
        [expire_entry("x1", LATER, ("a1", 100)), expire_entry("x2", LATER, ("a1", 100))],
        [None, "takes 100 from lot a1 holding 0"],
    ),
    "one lot twice in one entry": ([expire_entry("x1", LATER, ("a1", 50), ("a1", 50))], [None]),
    "one lot twice in one entry, over-taking": (
        [expire_entry("x1", LATER, ("a1", 60), ("a1", 60))],
        ["takes 60 from lot a1 holding 40"],
    ),
}


@pytest.mark.parametrize("case", list(EXPIRE_CASES))
def test_expire_entries_replay_alike_on_every_route(case: str) -> None:
    extra, expected = EXPIRE_CASES[case]
    chain = [*expiry_chain(), *extra]
    assert_same(chain)
    outcomes, _ = run(copy.deepcopy(chain), "fast")
    head = len(chain) - len(extra)
    assert outcomes[:head] == [None] * head
    for outcome, want in zip(outcomes[head:], expected, strict=True):
        if want is None:
            assert outcome is None
        else:
            assert outcome is not None and outcome.startswith("VerificationError: entry x")
            assert want in outcome


def test_fast_path_takes_an_expired_lot_and_declines_an_unexpired_one() -> None:
    """Direct: the fast path itself applies a due expiry and leaves a premature one (or
    one over-taking, or naming an unknown lot) untouched for the reference path."""
    replay = Replay()
    for body in expiry_chain():
        replay.apply_reference(body)
    before = snapshot(replay)
    for refused in (
        expire_entry("x1", EXPIRES_A1 - timedelta(microseconds=1), ("a1", 100)),
        expire_entry("x1", LATER, ("a1", 100), ("a2", 70)),
        expire_entry("x1", LATER, ("a1", 101)),
        expire_entry("x1", LATER, ("nope", 1)),
    ):
        prepared = prepare(refused)
        assert prepared is not None
        assert not apply_prepared(replay, prepared)
        assert snapshot(replay) == before
    prepared = prepare(expire_entry("x1", EXPIRES_A1, ("a1", 100)))
    assert prepared is not None and apply_prepared(replay, prepared)
    assert replay.accounts[MEMBERS[0]].lots["a1"].remaining == 0
    assert replay.points_by_kind["expire"] == 100


def test_an_impossible_date_anywhere_is_declined_and_named_by_the_reference() -> None:
    """The fast path matches a time's spelling and parses it only when it applies; a
    well-spelt impossible date must still leave the state alone and fail as the
    reference path says, in every time field of every fast kind."""
    sky, _ = two_chains()
    chain = sky.entries
    checked = 0
    for n, entry in enumerate(chain):
        if entry["kind"] not in FAST_KINDS:
            continue
        for path in _paths(entry):
            if not (
                isinstance(_at(entry, path), str) and CANONICAL_TIME.fullmatch(_at(entry, path))
            ):
                continue
            broken = copy.deepcopy(chain[: n + 1])
            _put(broken[n], path, "2026-02-30T00:00:00.000000Z")
            assert_same(broken)
            outcomes, _ = run(copy.deepcopy(broken), "prepared")
            assert outcomes[-1] is not None and "date" in outcomes[-1]
            checked += 1
    assert checked > 20


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _put(value: Any, path: tuple[Any, ...], new: Any) -> None:
    for key in path[:-1]:
        value = value[key]
    value[path[-1]] = new


def test_apply_run_stops_at_what_it_does_not_take() -> None:
    """``apply_run`` applies tuples until one is declined or is no tuple, and returns
    that position with nothing of it applied."""
    chain = expiry_chain()
    items: list[object] = [prepare(entry) for entry in chain]
    assert all(isinstance(item, tuple) for item in items)
    replay = Replay()
    assert apply_run(replay, items, 0) == len(items)
    again = Replay()
    assert apply_run(again, [items[0], None, *items[1:]], 0) == 1
    before = snapshot(again)
    assert apply_run(again, [items[0]], 0) == 0  # enrolled twice: declined, unchanged
    assert snapshot(again) == before
    assert apply_run(again, [None, *items[1:]], 1) == len(items)
    assert snapshot(again) == snapshot(replay)
    assert apply_run(Replay(), [("no-such-kind", "x")], 0) == 0
