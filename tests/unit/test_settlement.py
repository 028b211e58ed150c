"""Settlement: both partners derive the same statement from their own chains, and
netting gives positions that sum to zero and the fewest payments that settle them."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import FailedPrecondition, InvalidArgument, VerificationError
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.ledger.entries import entry_leaf_hash, format_time
from coalition.points import operations
from coalition.points.operations import EntryContext
from coalition.points.rates import agreement_from_document, quote
from coalition.points.rules import ProgramRules
from coalition.points.settlement import (
    Netting,
    Owed,
    Payment,
    net,
    netting_csv,
    netting_json,
    obligations,
    pending_conversions,
    statement_document,
)
from coalition.points.state import Account, apply_entry

RULES = ProgramRules(holding_period=timedelta(days=30), expiry_period=timedelta(days=365))
RECEIPT: JsonObject = {"envelope": "{}", "signature": "c2ln"}
MEMBER = f"{7:064x}"
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
AGREEMENT = agreement_from_document(
    {
        "type": "coalition.agreement.v1",
        "id": "sky-stay",
        "version": 1,
        "from_program": "skyair",
        "to_program": "staybright",
        "rate": [3, 2],
        "fee_bps": 100,
        "min_points": 100,
        "max_points": 100000,
        "daily_cap_points": 200000,
        "point_value": [1, 2],
        "currency": "EUR",
        "valid_from": "2026-10-01T00:00:00.000000Z",
        "valid_until": "2027-11-01T00:00:00.000000Z",
        "proposed_by": "skyair",
    }
)


class Chain:
    def __init__(self, program: str) -> None:
        self.program = program
        self.serial = 0
        self.account = Account(MEMBER)
        self.entries: list[JsonObject] = []
        self.add(operations.enroll(self.ctx(NOV - timedelta(days=20)), MEMBER))

    def ctx(self, at: datetime) -> EntryContext:
        self.serial += 1
        return EntryContext(self.program, f"{self.program}-{self.serial}", at)

    def add(self, body: JsonObject) -> JsonObject:
        stored = parse_json(canonical_json(body))
        assert isinstance(stored, dict)
        apply_entry(stored, {MEMBER: self.account}.__getitem__)
        self.entries.append(stored)
        return stored


def _two_chains() -> tuple[Chain, Chain]:
    """skyair converts to staybright three times and lets staybright redeem twice."""
    sky, stay = Chain("skyair"), Chain("staybright")
    seed = sky.ctx(NOV - timedelta(days=10))
    sky.add(
        operations._entry(
            seed,
            "adjust",
            MEMBER,
            amount=100_000,
            lot=seed.entry_id,
            expires_at=format_time(seed.at + timedelta(days=400)),
            reason={"rule": "adjustment", "operator": "ops", "note": "seed"},
        )
    )

    def convert(amount: int, at: datetime, outcome: str) -> None:
        out = sky.add(
            operations.convert_out(
                sky.ctx(at), RULES, sky.account, AGREEMENT, quote(AGREEMENT, amount), f"c{at:%d%H}"
            )
        )
        if outcome == "credited":
            stay.add(
                operations.convert_in(
                    stay.ctx(at + timedelta(seconds=1)),
                    RULES,
                    MEMBER,
                    out,
                    entry_leaf_hash(out).hex(),
                    AGREEMENT,
                )
            )
            conversion = out["conversion"]
            assert isinstance(conversion, dict)
            sky.add(
                operations.convert_complete(
                    sky.ctx(at + timedelta(seconds=2)), MEMBER, str(conversion["id"]), RECEIPT
                )
            )
        elif outcome == "rejected":
            sky.add(operations.convert_refund(sky.ctx(at + timedelta(seconds=2)), out, RECEIPT))

    def redeem(amount: int, at: datetime) -> None:
        hold_id = f"h{at:%d%H}"
        held = sky.add(
            operations.hold(
                sky.ctx(at),
                RULES,
                sky.account,
                hold_id,
                "staybright",
                "room",
                amount,
                at + timedelta(hours=1),
                AGREEMENT,
            )
        )
        capture_at = at + timedelta(minutes=5)
        value = amount // 2
        sky.add(operations.hold_capture(sky.ctx(capture_at), held, value, "EUR"))
        stay.add(
            operations.redemption_receipt(
                stay.ctx(capture_at + timedelta(seconds=1)),
                hold_id,
                "skyair",
                amount,
                value,
                "EUR",
                capture_at,
                RECEIPT,
            )
        )

    convert(1000, NOV + timedelta(days=1), "credited")  # 990 net -> 495 EUR cents
    convert(2000, NOV + timedelta(days=2), "rejected")
    convert(3001, NOV + timedelta(days=3), "credited")  # fee 31, net 2970 -> 1485
    convert(500, NOV + timedelta(days=4), "pending")
    convert(400, DEC - timedelta(microseconds=1), "credited")  # last instant of November
    convert(600, DEC, "credited")  # December
    redeem(801, NOV + timedelta(days=5))  # 400
    redeem(99, DEC + timedelta(days=1))
    return sky, stay


def test_both_partners_derive_the_same_obligations() -> None:
    sky, stay = _two_chains()
    expected = {("skyair", "staybright"): Owed(495 + 1485 + 198 + 400, 4)}
    assert obligations("skyair", sky.entries, NOV, DEC) == expected
    assert obligations("staybright", stay.entries, NOV, DEC) == expected
    december = {("skyair", "staybright"): Owed(297 + 49, 2)}
    end = DEC + timedelta(days=31)
    assert obligations("skyair", sky.entries, DEC, end) == december
    assert obligations("staybright", stay.entries, DEC, end) == december
    assert pending_conversions(sky.entries, NOV, DEC) == ["c0500"]
    assert pending_conversions(sky.entries, DEC, end) == []


def test_a_completion_after_the_period_still_counts_for_it() -> None:
    sky, _ = _two_chains()
    out = next(e for e in sky.entries if e["kind"] == "convert-out" and "c0500" in str(e))
    before = obligations("skyair", sky.entries, NOV, DEC)[("skyair", "staybright")]
    sky.add(operations.convert_complete(sky.ctx(DEC), MEMBER, "c0500", RECEIPT))
    after = obligations("skyair", sky.entries, NOV, DEC)[("skyair", "staybright")]
    conversion = out["conversion"]
    assert isinstance(conversion, dict)
    assert after == Owed(before.minor + int(str(conversion["value_minor"])), before.items + 1)
    assert pending_conversions(sky.entries, NOV, DEC) == []


def test_statements_match_between_partners() -> None:
    sky, stay = _two_chains()
    parties = ("skyair", "staybright")
    mine = statement_document(
        "nov", parties, NOV, DEC, "EUR", obligations("skyair", sky.entries, NOV, DEC)
    )
    theirs = statement_document(
        "nov", parties, NOV, DEC, "EUR", obligations("staybright", stay.entries, NOV, DEC)
    )
    assert (
        mine
        == theirs
        == {
            "type": "coalition.statement.v1",
            "id": "nov",
            "parties": ["skyair", "staybright"],
            "period": {
                "start": "2026-11-01T00:00:00.000000Z",
                "end": "2026-12-01T00:00:00.000000Z",
            },
            "currency": "EUR",
            "owed": {"skyair->staybright": 2578, "staybright->skyair": 0},
            "items": {"skyair->staybright": 4, "staybright->skyair": 0},
        }
    )


def test_statement_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="two sorted programs"):
        statement_document("s", ("staybright", "skyair"), NOV, DEC, "EUR", {})
    with pytest.raises(InvalidArgument, match="two sorted programs"):
        statement_document("s", ("skyair", "skyair"), NOV, DEC, "EUR", {})
    with pytest.raises(InvalidArgument, match="starts before it ends"):
        statement_document("s", ("a1", "b1"), DEC, NOV, "EUR", {})
    with pytest.raises(InvalidArgument, match="statement id"):
        statement_document("bad id", ("a1", "b1"), NOV, DEC, "EUR", {})


def test_mixed_currencies_and_malformed_entries_are_refused() -> None:
    sky, _ = _two_chains()
    capture = next(e for e in sky.entries if e["kind"] == "hold-capture")
    dollars = {**capture, "id": "x", "currency": "USD"}
    with pytest.raises(FailedPrecondition, match="in EUR and USD"):
        obligations("skyair", [*sky.entries, dollars], NOV, DEC)
    broken = {**capture, "id": "y", "value_minor": -5}
    with pytest.raises(VerificationError, match="value_minor"):
        obligations("skyair", [*sky.entries, broken], NOV, DEC)


def test_net_three_way() -> None:
    netting = net({("a1", "b1"): 100, ("b1", "c1"): 100, ("c1", "a1"): 30})
    assert netting.positions == {"a1": -70, "b1": 0, "c1": 70}
    assert netting.payments == [Payment("a1", "c1", 70)]
    assert netting_csv(netting) == "payer,payee,amount\na1,c1,70\n"
    assert netting_json(netting) == {
        "positions": {"a1": -70, "b1": 0, "c1": 70},
        "payments": [{"payer": "a1", "payee": "c1", "amount": 70}],
    }


def test_net_finds_zero_sum_groups() -> None:
    # Two independent pairs hidden among four parties: 2 payments, not 3.
    pairwise = {("a1", "c1"): 5, ("b1", "d1"): 7, ("a1", "d1"): 0}
    assert len(net(pairwise).payments) == 2
    # -3 -4 +7 with -5 +5: greedy by size would pair -5 with +7; the optimum is 3.
    pairwise = {("a1", "c1"): 3, ("b1", "c1"): 4, ("d1", "e1"): 5}
    assert len(net(pairwise).payments) == 3
    with pytest.raises(InvalidArgument, match="owe itself"):
        net({("a1", "a1"): 1})
    with pytest.raises(InvalidArgument, match="not a whole amount"):
        net({("a1", "b1"): -1})


def _check(netting: Netting, pairwise: dict[tuple[str, str], int]) -> None:
    assert sum(netting.positions.values()) == 0
    replayed = dict.fromkeys(netting.positions, 0)
    for payment in netting.payments:
        assert payment.amount > 0 and payment.payer != payment.payee
        replayed[payment.payer] -= payment.amount
        replayed[payment.payee] += payment.amount
    assert replayed == netting.positions
    active = [p for p, v in netting.positions.items() if v]
    assert len(netting.payments) <= max(len(active) - 1, 0)
    assert netting == net(dict(reversed(list(pairwise.items()))))  # order does not matter


def _fewest(values: list[int]) -> int:
    """Brute force: fewest payments = n minus the most zero-sum blocks of a partition."""
    best = 0

    def blocks(rest: list[int], count: int) -> None:
        nonlocal best
        if not rest:
            best = max(best, count)
            return
        first, others = rest[0], rest[1:]
        for size in range(len(others) + 1):
            for chosen in itertools.combinations(range(len(others)), size):
                if first + sum(others[i] for i in chosen) == 0:
                    left = [v for i, v in enumerate(others) if i not in chosen]
                    blocks(left, count + 1)

    blocks(values, 0)
    return len(values) - best


PARTIES = [f"p{n}" for n in range(7)]
pairs = st.dictionaries(
    st.tuples(st.sampled_from(PARTIES), st.sampled_from(PARTIES)).filter(lambda p: p[0] != p[1]),
    st.sampled_from([0, 1, 2, 3, 5, 8, 10, 20]),
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(pairs)
def test_netting_is_exact_and_settles_every_position(pairwise: dict[tuple[str, str], int]) -> None:
    netting = net(pairwise)
    _check(netting, pairwise)
    active = [v for v in netting.positions.values() if v]
    assert len(netting.payments) == _fewest(active)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.integers(0, 24), st.integers(0, 24)).filter(lambda p: p[0] != p[1]),
        st.integers(0, 10**9),
        min_size=20,
        max_size=60,
    )
)
def test_large_coalitions_fall_back_to_greedy(pairwise: dict[tuple[int, int], int]) -> None:
    named = {(f"q{a:02d}", f"q{b:02d}"): amount for (a, b), amount in pairwise.items()}
    _check(net(named), named)
