"""The coalition's entry kinds in the pure core: decisions (operations), their effect on
accounts (state.apply_entry) and the cross-entry rules a replay enforces (Replay):
conversions settle once for exactly what left, holds close once, nothing is credited
twice, and points are conserved across any sequence of conversions and holds."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import (
    FailedPrecondition,
    InsufficientPoints,
    InvalidArgument,
    VerificationError,
)
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.ledger.entries import entry_leaf_hash, format_time
from coalition.points import operations
from coalition.points.operations import EntryContext
from coalition.points.rates import Agreement, agreement_from_document, quote
from coalition.points.replay import Replay
from coalition.points.rules import ProgramRules
from coalition.points.state import Account, apply_entry

RULES = ProgramRules(holding_period=timedelta(days=30), expiry_period=timedelta(days=365))
T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
RECEIPT: JsonObject = {"envelope": "{}", "signature": "c2ln"}
ALICE = f"{1:064x}"
BOB = f"{2:064x}"


def make_agreement(**changes: object) -> Agreement:
    doc: JsonObject = {
        "type": "coalition.agreement.v1",
        "id": "skyair-staybright",
        "version": 2,
        "from_program": "skyair",
        "to_program": "staybright",
        "rate": [3, 2],
        "fee_bps": 100,
        "min_points": 100,
        "max_points": 100_000,
        "daily_cap_points": 200_000,
        "point_value": [1, 1],
        "currency": "EUR",
        "valid_from": "2026-11-01T00:00:00.000000Z",
        "valid_until": "2027-11-01T00:00:00.000000Z",
        "proposed_by": "skyair",
    }
    doc.update(changes)  # type: ignore[arg-type]
    return agreement_from_document(doc)


AGREEMENT = make_agreement()
LONG = make_agreement(valid_until="2100-01-01T00:00:00.000000Z")  # outlives any random clock


class Chain:
    """One program's chain: entries applied to accounts as a node does, then replayable."""

    def __init__(self, program: str, members: tuple[str, ...] = (ALICE, BOB)) -> None:
        self.program = program
        self.now = T0
        self.serial = 0
        self.accounts: dict[str, Account] = {}
        self.entries: list[JsonObject] = []
        for member in members:
            self.accounts[member] = Account(member)
            self.record(operations.enroll(self.ctx(), member))

    def ctx(self) -> EntryContext:
        self.serial += 1
        return EntryContext(self.program, f"{self.program}-{self.serial:08d}", self.now)

    def record(self, body: JsonObject) -> JsonObject:
        stored = parse_json(canonical_json(body))
        assert isinstance(stored, dict)
        apply_entry(stored, self.accounts.__getitem__)
        for account in self.accounts.values():
            account.changed.clear()
        self.entries.append(stored)
        return stored

    def earn(self, member: str, amount: int, *, days_valid: int = 365) -> None:
        ctx = self.ctx()
        self.record(
            operations._entry(
                ctx,
                "adjust",
                member,
                amount=amount,
                lot=ctx.entry_id,
                expires_at=format_time(ctx.at + timedelta(days=days_valid)),
                reason={"rule": "adjustment", "operator": "ops", "note": "seed"},
            )
        )

    def replay(self) -> Replay:
        replay = Replay()
        for entry in self.entries:
            replay.apply(entry)
        return replay

    def held(self) -> int:
        return sum(account.held() for account in self.accounts.values())


def _convert_out(chain: Chain, member: str, amount: int, conversion_id: str) -> JsonObject:
    q = quote(AGREEMENT, amount)
    body = operations.convert_out(
        chain.ctx(), RULES, chain.accounts[member], AGREEMENT, q, conversion_id
    )
    return chain.record(body)


def _replay_fails(entries: list[JsonObject], match: str) -> None:
    """All but the last entry replay; the last is refused with ``match``."""
    replay = Replay()
    for entry in entries[:-1]:
        replay.apply(entry)
    with pytest.raises(VerificationError, match=match):
        replay.apply(entries[-1])


# --- conversions on the source program ---------------------------------------------------


def test_convert_out_debits_soonest_expiring_lots_and_states_the_quote() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 300, days_valid=200)
    sky.earn(ALICE, 300, days_valid=100)
    out = _convert_out(sky, ALICE, 400, "conv-1")
    assert out["kind"] == "convert-out" and out["amount"] == 400
    assert out["conversion"] == {
        "id": "conv-1",
        "to_program": "staybright",
        "agreement": {"id": "skyair-staybright", "version": 2},
        "fee": 4,
        "net": 396,
        "credit": 594,
        "rate": [3, 2],
        "value_minor": 396,
        "currency": "EUR",
    }
    taken = out["taken"]
    assert isinstance(taken, list)
    assert [item["amount"] for item in taken if isinstance(item, dict)] == [300, 100]
    first = taken[0]
    assert isinstance(first, dict)
    assert first["expires_at"] == format_time(T0 + timedelta(days=100))
    assert sky.accounts[ALICE].balance(sky.now) == 200
    replay = sky.replay()
    assert replay.in_flight == {"conv-1": 400}
    assert replay.supply() + replay.in_flight_total() == 600


def test_convert_out_refuses_more_than_spendable_and_a_foreign_quote() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 150)
    with pytest.raises(InsufficientPoints):
        _convert_out(sky, ALICE, 200, "conv-1")
    forged = quote(AGREEMENT, 150)
    forged = type(forged)(150, 0, 150, 225, 150)
    with pytest.raises(InvalidArgument, match="quote does not match"):
        operations.convert_out(sky.ctx(), RULES, sky.accounts[ALICE], AGREEMENT, forged, "c")
    staybright = Chain("staybright")
    with pytest.raises(InvalidArgument, match="converts skyair points"):
        operations.convert_out(
            staybright.ctx(), RULES, Account(ALICE), AGREEMENT, quote(AGREEMENT, 150), "c"
        )
    sky.now = datetime(2028, 1, 1, tzinfo=UTC)
    with pytest.raises(FailedPrecondition, match="not in force"):
        _convert_out(sky, ALICE, 150, "conv-2")


def test_complete_settles_and_refund_restores_points_with_their_expiry() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 500, days_valid=50)
    done = _convert_out(sky, ALICE, 200, "conv-done")
    back = _convert_out(sky, ALICE, 300, "conv-back")
    assert sky.accounts[ALICE].held() == 0
    sky.record(operations.convert_complete(sky.ctx(), ALICE, "conv-done", RECEIPT))
    refund = sky.record(operations.convert_refund(sky.ctx(), back, RECEIPT))
    assert refund["amount"] == 300
    assert refund["restored"] == [
        {
            "lot": f"{refund['id']}:0",
            "amount": 300,
            "expires_at": format_time(T0 + timedelta(days=50)),
        }
    ]
    assert sky.accounts[ALICE].balance(sky.now) == 300
    replay = sky.replay()
    assert replay.in_flight == {} and replay.supply() == 300
    assert replay.points_by_kind["convert-out"] == 500
    assert replay.points_by_kind["convert-refund"] == 300
    assert done["id"] != back["id"]


def test_replay_catches_a_tampered_refund() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 500)
    out = _convert_out(sky, ALICE, 200, "conv-1")
    refund = operations.convert_refund(sky.ctx(), out, RECEIPT)
    bigger = copy.deepcopy(refund)
    bigger["amount"] = 250
    restored = bigger["restored"]
    assert isinstance(restored, list) and isinstance(restored[0], dict)
    restored[0]["amount"] = 250
    _replay_fails([*sky.entries, bigger], "amount 250, sent 200")
    later = copy.deepcopy(refund)
    restored = later["restored"]
    assert isinstance(restored, list) and isinstance(restored[0], dict)
    restored[0]["expires_at"] = "2030-01-01T00:00:00.000000Z"
    _replay_fails([*sky.entries, later], "restored lots differ")
    wrong_sum = copy.deepcopy(refund)
    wrong_sum["amount"] = 199
    with pytest.raises(VerificationError, match="restored lots give 200"):
        apply_entry(wrong_sum, sky.accounts.__getitem__)
    assert sky.accounts[ALICE].held() == 300  # the refused entry changed nothing


def test_a_conversion_settles_once_and_only_if_it_exists() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 500)
    out = _convert_out(sky, ALICE, 200, "conv-1")
    complete = operations.convert_complete(sky.ctx(), ALICE, "conv-1", RECEIPT)
    refund = operations.convert_refund(sky.ctx(), out, RECEIPT)
    _replay_fails([*sky.entries, complete, complete], "already settled")
    _replay_fails([*sky.entries, complete, refund], "already settled")
    _replay_fails([*sky.entries, refund, refund], "already settled")
    unknown = operations.convert_complete(sky.ctx(), ALICE, "conv-x", RECEIPT)
    _replay_fails([*sky.entries, unknown], "unknown conversion conv-x")
    other = operations.convert_complete(sky.ctx(), BOB, "conv-1", RECEIPT)
    _replay_fails([*sky.entries, other], "on another account")
    again = copy.deepcopy(out)
    again["id"] = "skyair-again"
    _replay_fails([*sky.entries, again], "started twice")


def test_state_refuses_convert_outs_that_do_not_add_up() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 500)
    body = operations.convert_out(
        sky.ctx(), RULES, sky.accounts[ALICE], AGREEMENT, quote(AGREEMENT, 200), "c"
    )
    fee = copy.deepcopy(body)
    conversion = fee["conversion"]
    assert isinstance(conversion, dict)
    conversion["fee"] = 5
    with pytest.raises(VerificationError, match="fee 5"):
        apply_entry(fee, sky.accounts.__getitem__)
    expiry = copy.deepcopy(body)
    taken = expiry["taken"]
    assert isinstance(taken, list) and isinstance(taken[0], dict)
    taken[0]["expires_at"] = "2031-01-01T00:00:00.000000Z"
    with pytest.raises(VerificationError, match="wrong expiry"):
        apply_entry(expiry, sky.accounts.__getitem__)
    assert sky.accounts[ALICE].balance(sky.now) == 500


def test_convert_out_skips_pending_points() -> None:
    sky = Chain("skyair")
    ctx = sky.ctx()
    sky.record(
        operations.earn_purchase(ctx, RULES, ALICE, 0, "order-1", 50_000, "", reference_used=False)
    )
    assert sky.accounts[ALICE].pending(sky.now) > 0
    with pytest.raises(InsufficientPoints):
        _convert_out(sky, ALICE, 100, "conv-1")


# --- conversions on the target program ---------------------------------------------------


def _out_entry(amount: int = 1000, conversion_id: str = "conv-1") -> tuple[JsonObject, str]:
    sky = Chain("skyair")
    sky.earn(ALICE, amount)
    out = _convert_out(sky, ALICE, amount, conversion_id)
    return out, entry_leaf_hash(out).hex()


def test_convert_in_rederives_the_quote_and_opens_a_lot() -> None:
    out, out_hash = _out_entry()
    stay = Chain("staybright")
    stay.now = T0 + timedelta(minutes=5)
    entry = stay.record(operations.convert_in(stay.ctx(), RULES, BOB, out, out_hash, AGREEMENT))
    assert entry["amount"] == 1485  # 1000 - 10 fee = 990 * 3/2
    assert entry["conversion"] == {
        "id": "conv-1",
        "from_program": "skyair",
        "out_entry": out["id"],
        "out_hash": out_hash,
        "out_at": out["at"],
        "value_minor": 990,
        "currency": "EUR",
        "agreement": {"id": "skyair-staybright", "version": 2},
    }
    assert stay.accounts[BOB].balance(stay.now) == 1485
    lot = stay.accounts[BOB].lots[str(entry["id"])]
    assert lot.expires_at == stay.now + RULES.expiry_period
    assert stay.replay().credited == {"conv-1"}


def test_convert_in_refuses_a_tampered_or_foreign_out_entry() -> None:
    out, out_hash = _out_entry()
    stay = Chain("staybright")
    with pytest.raises(InvalidArgument, match="leaf hash"):
        operations.convert_in(stay.ctx(), RULES, BOB, out, "0" * 64, AGREEMENT)
    inflated = copy.deepcopy(out)
    conversion = inflated["conversion"]
    assert isinstance(conversion, dict)
    conversion["credit"] = 2000
    with pytest.raises(InvalidArgument, match="agreement skyair-staybright gives"):
        operations.convert_in(
            stay.ctx(), RULES, BOB, inflated, entry_leaf_hash(inflated).hex(), AGREEMENT
        )
    other = make_agreement(version=3)
    with pytest.raises(InvalidArgument, match="names agreement"):
        operations.convert_in(stay.ctx(), RULES, BOB, out, out_hash, other)
    elsewhere = Chain("beanhouse")
    with pytest.raises(InvalidArgument, match="not skyair -> beanhouse"):
        operations.convert_in(elsewhere.ctx(), RULES, BOB, out, out_hash, AGREEMENT)
    late = make_agreement(valid_from="2026-11-20T00:00:00.000000Z")
    with pytest.raises(FailedPrecondition, match="not in force"):
        operations.convert_in(stay.ctx(), RULES, BOB, out, out_hash, late)


def test_a_conversion_is_credited_once_and_never_after_a_reject() -> None:
    out, out_hash = _out_entry()
    stay = Chain("staybright")
    credit = operations.convert_in(stay.ctx(), RULES, BOB, out, out_hash, AGREEMENT)
    credit_again = operations.convert_in(stay.ctx(), RULES, ALICE, out, out_hash, AGREEMENT)
    reject = operations.convert_reject(stay.ctx(), "conv-1", "skyair", "aborted")
    assert reject["account"] == "-" and "amount" not in reject
    _replay_fails([*stay.entries, credit, credit_again], "already credited")
    _replay_fails([*stay.entries, reject, credit], "already rejected")
    _replay_fails([*stay.entries, credit, reject], "already credited")
    replay = Replay()
    for entry in [*stay.entries, reject]:
        replay.apply(entry)
    assert replay.rejected == {"conv-1"} and not replay.credited


# --- holds for partner redemptions -------------------------------------------------------


def _hold(chain: Chain, amount: int, hold_id: str = "hold-1", minutes: int = 30) -> JsonObject:
    body = operations.hold(
        chain.ctx(),
        RULES,
        chain.accounts[ALICE],
        hold_id,
        "staybright",
        "room-42",
        amount,
        chain.now + timedelta(minutes=minutes),
        AGREEMENT,
    )
    return chain.record(body)


def test_hold_then_capture_takes_points_for_good() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 500)
    held = _hold(sky, 200)
    assert sky.accounts[ALICE].balance(sky.now) == 300
    assert sky.replay().holds == {"hold-1": 200}
    capture = sky.record(operations.hold_capture(sky.ctx(), held, 200, "EUR"))
    assert capture["hold"] == {"id": "hold-1", "partner": "staybright"}
    replay = sky.replay()
    assert replay.holds == {} and replay.captured == 200 and replay.supply() == 300


def test_hold_release_restores_and_expiry_rules_hold() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 500, days_valid=40)
    held = _hold(sky, 200)
    with pytest.raises(FailedPrecondition, match="expires only at"):
        operations.hold_release(sky.ctx(), held, "expired")
    with pytest.raises(InvalidArgument, match="void or expired"):
        operations.hold_release(sky.ctx(), held, "bored")
    sky.now += timedelta(minutes=31)
    with pytest.raises(FailedPrecondition, match="expired at"):
        operations.hold_capture(sky.ctx(), held, 200, "EUR")
    release = sky.record(operations.hold_release(sky.ctx(), held, "expired"))
    assert release["hold"] == {"id": "hold-1", "partner": "staybright", "why": "expired"}
    assert sky.accounts[ALICE].balance(sky.now) == 500
    restored = sky.accounts[ALICE].lots[f"{release['id']}:0"]
    assert restored.expires_at == T0 + timedelta(days=40)
    assert sky.replay().holds == {}


def test_replay_catches_a_bad_capture_or_release() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 500)
    held = _hold(sky, 200)
    capture = operations.hold_capture(sky.ctx(), held, 200, "EUR")
    bigger = copy.deepcopy(capture)
    bigger["amount"] = 150
    _replay_fails([*sky.entries, bigger], "amount 150, held 200")
    release = operations.hold_release(sky.ctx(), held, "void")
    _replay_fails([*sky.entries, capture, release], "already captured or released")
    late = copy.deepcopy(capture)
    late["at"] = format_time(T0 + timedelta(hours=1))
    _replay_fails([*sky.entries, late], "captured after it expired")
    early = operations.hold_release(sky.ctx(), held, "void")
    hold_spec = early["hold"]
    assert isinstance(hold_spec, dict)
    hold_spec["why"] = "expired"
    _replay_fails([*sky.entries, early], "released as expired before its time")


def test_hold_needs_an_agreement_for_that_partner() -> None:
    sky = Chain("skyair")
    sky.earn(ALICE, 500)
    with pytest.raises(InvalidArgument, match="not skyair -> beanhouse"):
        operations.hold(
            sky.ctx(),
            RULES,
            sky.accounts[ALICE],
            "h",
            "beanhouse",
            "r",
            100,
            sky.now + timedelta(minutes=1),
            AGREEMENT,
        )


# --- program-level entries ---------------------------------------------------------------


def _no_lookup(account: str) -> Account:
    raise AssertionError(f"looked up {account}")


def test_program_entries_touch_no_account() -> None:
    ctx = EntryContext("staybright", "e-1", T0)
    doc = AGREEMENT.document()
    entries = [
        operations.agreement_entry(ctx, {"agreement": doc, "signatures": {}}),
        operations.statement_entry(ctx, {"statement": {"id": "s"}, "signatures": {}}),
        operations.convert_reject(ctx, "conv-1", "skyair", "member not enrolled"),
        operations.redemption_receipt(ctx, "hold-1", "skyair", 200, 200, "EUR", T0, RECEIPT),
    ]
    for entry in entries:
        assert entry["account"] == "-"
        apply_entry(entry, _no_lookup)
    replay = Replay()
    for entry in entries:
        replay.apply(entry)
    assert replay.supply() == 0 and sum(replay.points_by_kind.values()) == 0
    disguised = copy.deepcopy(entries[0])
    disguised["account"] = ALICE
    with pytest.raises(VerificationError, match="account '-'"):
        apply_entry(disguised, _no_lookup)
    member_kind = operations.convert_complete(ctx, ALICE, "conv-1", RECEIPT)
    member_kind["account"] = "-"
    with pytest.raises(VerificationError, match="needs a member account"):
        apply_entry(member_kind, _no_lookup)


def test_bad_arguments_are_refused_with_clear_errors() -> None:
    ctx = EntryContext("skyair", "e-1", T0)
    with pytest.raises(InvalidArgument, match="conversion id"):
        operations.convert_complete(ctx, ALICE, "bad id!", RECEIPT)
    with pytest.raises(InvalidArgument, match="envelope, signature"):
        operations.convert_complete(ctx, ALICE, "conv-1", {"envelope": "x"})
    with pytest.raises(InvalidArgument, match="from_program"):
        operations.convert_reject(ctx, "conv-1", "Sky Air", "no")
    with pytest.raises(InvalidArgument, match="note"):
        operations.convert_reject(ctx, "conv-1", "skyair", "")
    with pytest.raises(InvalidArgument, match="signed agreement"):
        operations.agreement_entry(ctx, {"agreement": {}})
    with pytest.raises(InvalidArgument, match="agreement type"):
        operations.agreement_entry(ctx, {"agreement": {}, "signatures": {}})
    with pytest.raises(InvalidArgument, match="signed statement"):
        operations.statement_entry(ctx, {"statement": []})
    with pytest.raises(InvalidArgument, match="positive"):
        operations.redemption_receipt(ctx, "h", "staybright", 0, 1, "EUR", T0, RECEIPT)


# --- conservation over random sequences --------------------------------------------------

step = st.one_of(
    st.tuples(st.just("out"), st.sampled_from([ALICE, BOB]), st.integers(100, 900)),
    st.tuples(st.just("hold"), st.sampled_from([ALICE, BOB]), st.integers(1, 900)),
    st.tuples(st.just("settle"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("settle"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("advance"), st.integers(1, 5) | st.integers(20, 130)),
    st.tuples(st.just("earn"), st.sampled_from([ALICE, BOB]), st.integers(1, 1500)),
)


def _open(replay: Replay, kind: str) -> list[str]:
    return sorted(replay.in_flight if kind == "out" else replay.holds)


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=3, max_size=60))
def test_points_are_conserved_across_conversions_and_holds(
    steps: list[tuple[object, ...]],
) -> None:
    sky = Chain("skyair")
    live = Replay()
    for entry in sky.entries:
        live.apply(entry)
    outs: dict[str, JsonObject] = {}
    holds: dict[str, JsonObject] = {}
    earned = 0
    lost = 0  # completed, captured and expired points
    for member in (ALICE, BOB):
        sky.earn(member, 3000, days_valid=200)
        live.apply(sky.entries[-1])
        earned += 3000

    def record(body: JsonObject) -> JsonObject:
        stored = sky.record(body)
        live.apply(stored)
        return stored

    for n, op in enumerate(steps):
        kind = op[0]
        if kind == "earn":
            member, amount = str(op[1]), int(str(op[2]))
            sky.earn(member, amount, days_valid=120)
            live.apply(sky.entries[-1])
            earned += amount
        elif kind == "advance":
            sky.now += timedelta(days=int(str(op[1])))
            for account in sky.accounts.values():
                expired = operations.expire(sky.ctx(), account)
                if expired is not None:
                    record(expired)
                    amount = expired["amount"]
                    assert isinstance(amount, int)
                    lost += amount
        elif kind == "out":
            member, amount = str(op[1]), int(str(op[2]))
            try:
                q = quote(LONG, amount)
                body = operations.convert_out(
                    sky.ctx(), RULES, sky.accounts[member], LONG, q, f"c{n}"
                )
            except (InsufficientPoints, InvalidArgument):
                continue
            outs[f"c{n}"] = record(body)
        elif kind == "hold":
            member, amount = str(op[1]), int(str(op[2]))
            expires = sky.now + timedelta(days=10)
            try:
                body = operations.hold(
                    sky.ctx(),
                    RULES,
                    sky.accounts[member],
                    f"h{n}",
                    "staybright",
                    "r",
                    amount,
                    expires,
                    LONG,
                )
            except InsufficientPoints:
                continue
            holds[f"h{n}"] = record(body)
        else:
            pick, positive = int(str(op[1])), bool(op[2])
            pending = [("out", c) for c in _open(live, "out")]
            pending += [("hold", h) for h in _open(live, "hold")]
            if not pending:
                continue
            which, key = pending[pick % len(pending)]
            if which == "out":
                out = outs[key]
                if positive:
                    record(
                        operations.convert_complete(sky.ctx(), str(out["account"]), key, RECEIPT)
                    )
                    amount = out["amount"]
                    assert isinstance(amount, int)
                    lost += amount
                else:
                    record(operations.convert_refund(sky.ctx(), out, RECEIPT))
            else:
                held = holds[key]
                amount = held["amount"]
                assert isinstance(amount, int)
                if positive:
                    try:
                        record(operations.hold_capture(sky.ctx(), held, amount, "EUR"))
                        lost += amount
                    except FailedPrecondition:
                        record(operations.hold_release(sky.ctx(), held, "expired"))
                else:
                    record(operations.hold_release(sky.ctx(), held, "void"))
        assert live.supply() == sky.held()
        assert live.supply() + live.in_flight_total() + live.held_for_partners() == earned - lost
    replayed = sky.replay()
    assert replayed.in_flight == live.in_flight and replayed.holds == live.holds
    assert replayed.supply() == sky.held()
    assert all(replayed.accounts[a].lots == sky.accounts[a].lots for a in (ALICE, BOB))
