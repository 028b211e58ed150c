"""Rate agreements: parsing, signatures of both partners, quotes that never create value,
the agreement in force at a time, and the gain-cycle check against a brute force."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import FailedPrecondition, InvalidArgument, NotFound, VerificationError
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.points.rates import (
    Agreement,
    Quote,
    agreement_from_document,
    check_credit_limit,
    check_daily_cap,
    check_no_gain_cycle,
    current_agreements,
    find_gain_cycle,
    quote,
    redemption_value,
    sign_agreement,
    signed_agreement,
    verify_signed_agreement,
)

DOC: JsonObject = {
    "type": "coalition.agreement.v1",
    "id": "skyair-staybright",
    "version": 2,
    "from_program": "skyair",
    "to_program": "staybright",
    "rate": [3, 2],
    "fee_bps": 100,
    "min_points": 100,
    "max_points": 100000,
    "daily_cap_points": 200000,
    "point_value": [1, 1],
    "currency": "EUR",
    "valid_from": "2026-11-01T00:00:00.000000Z",
    "valid_until": "2027-11-01T00:00:00.000000Z",
    "proposed_by": "skyair",
}
BASE = agreement_from_document(DOC)
NOV = datetime(2026, 11, 15, tzinfo=UTC)
KEYS = {name: SigningKey.generate() for name in ("skyair", "staybright", "beanhouse")}


def key_of(program: str) -> VerifyKey:
    if program not in KEYS:
        raise NotFound(f"no partner {program}")
    return KEYS[program].public_key


def test_document_round_trips() -> None:
    assert BASE.document() == DOC
    assert agreement_from_document(BASE.document()) == BASE
    assert BASE.valid_from == datetime(2026, 11, 1, tzinfo=UTC)
    assert (BASE.rate_num, BASE.rate_den, BASE.value_num, BASE.value_den) == (3, 2, 1, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "x"}, "agreement type"),
        ({"version": 0}, "version must be in 1"),
        ({"version": True}, "version must be an integer"),
        ({"rate": [3, 0]}, "rate: .*denominator"),
        ({"rate": [3]}, r"rate must be \[numerator, denominator\]"),
        ({"point_value": [-1, 1]}, "point_value"),
        ({"fee_bps": 10000}, r"fee_bps must be in 0..9999"),
        ({"fee_bps": -1}, "fee_bps"),
        ({"min_points": 500, "max_points": 400}, "min_points 500 > max_points 400"),
        ({"daily_cap_points": 0}, "daily_cap_points"),
        ({"to_program": "skyair"}, "not skyair twice"),
        ({"from_program": "Sky Air"}, "bad from_program"),
        ({"to_program": "s"}, "bad to_program"),
        ({"proposed_by": "beanhouse"}, "neither skyair nor staybright"),
        ({"currency": "eur"}, "currency"),
        ({"valid_until": "2026-11-01T00:00:00.000000Z"}, "valid_from must be before"),
        ({"valid_from": "2026-11-01T00:00:00Z"}, "six fractional digits"),
        ({"id": "bad id"}, "malformed agreement id"),
        ({"extra": 1}, r"unknown \['extra'\]"),
    ],
)
def test_bad_documents_are_refused(change: JsonObject, message: str) -> None:
    doc = {**DOC, **change}
    with pytest.raises(InvalidArgument, match=message):
        agreement_from_document(doc)


def test_missing_fields_are_named() -> None:
    doc = {k: v for k, v in DOC.items() if k != "fee_bps"}
    with pytest.raises(InvalidArgument, match=r"missing \['fee_bps'\]"):
        agreement_from_document(doc)


def _signed(doc: JsonObject, *signers: str) -> JsonObject:
    return signed_agreement(doc, {p: sign_agreement(doc, KEYS[p]) for p in signers})


def test_both_partners_must_sign() -> None:
    assert verify_signed_agreement(_signed(DOC, "skyair", "staybright"), key_of) == BASE
    with pytest.raises(VerificationError, match="exactly"):
        verify_signed_agreement(_signed(DOC, "skyair"), key_of)
    with pytest.raises(VerificationError, match="exactly"):
        verify_signed_agreement(_signed(DOC, "skyair", "staybright", "beanhouse"), key_of)
    forged = _signed(DOC, "skyair", "staybright")
    sigs = forged["signatures"]
    assert isinstance(sigs, dict)
    sigs["staybright"] = sign_agreement(DOC, KEYS["beanhouse"])
    with pytest.raises(VerificationError, match="staybright's signature"):
        verify_signed_agreement(forged, key_of)
    sigs["staybright"] = "zz" * 64
    with pytest.raises(VerificationError, match="128 lowercase hex"):
        verify_signed_agreement(forged, key_of)
    with pytest.raises(VerificationError, match="agreement, signatures"):
        verify_signed_agreement({"agreement": DOC}, key_of)


def test_an_unknown_partner_is_not_found() -> None:
    doc = {**DOC, "to_program": "nowhere", "id": "sky-nowhere"}
    signed = signed_agreement(
        doc, {"skyair": sign_agreement(doc, KEYS["skyair"]), "nowhere": "00" * 64}
    )
    with pytest.raises(NotFound, match="no partner nowhere"):
        verify_signed_agreement(signed, key_of)


def test_a_changed_document_no_longer_verifies() -> None:
    signed = _signed(DOC, "skyair", "staybright")
    tampered = {**DOC, "rate": [2, 1]}
    signed["agreement"] = tampered
    with pytest.raises(VerificationError, match="does not verify"):
        verify_signed_agreement(signed, key_of)


def test_quote_matches_the_contract_formulas() -> None:
    assert quote(BASE, 1000) == Quote(1000, 10, 990, 1485, 990)
    assert quote(BASE, 101) == Quote(101, 2, 99, 148, 99)  # fee rounds up, credit down
    with pytest.raises(InvalidArgument, match="100-100000 points"):
        quote(BASE, 99)
    with pytest.raises(InvalidArgument, match="100-100000 points"):
        quote(BASE, 100001)
    tiny = replace(BASE, rate_num=1, rate_den=1000)
    with pytest.raises(InvalidArgument, match="convert to 0 staybright points"):
        quote(tiny, 500)


@settings(max_examples=300, deadline=None)
@given(
    amount=st.integers(1, 10**7),
    rate=st.tuples(st.integers(1, 10**4), st.integers(1, 10**4)),
    value=st.tuples(st.integers(1, 10**4), st.integers(1, 10**4)),
    fee_bps=st.integers(0, 9999),
)
def test_quotes_never_create_value(
    amount: int, rate: tuple[int, int], value: tuple[int, int], fee_bps: int
) -> None:
    agreement = replace(
        BASE,
        rate_num=rate[0],
        rate_den=rate[1],
        value_num=value[0],
        value_den=value[1],
        fee_bps=fee_bps,
        min_points=1,
        max_points=10**7,
    )
    try:
        q = quote(agreement, amount)
    except InvalidArgument:
        assert (amount - -(-amount * fee_bps // 10000)) * rate[0] < rate[1]
        return
    assert q.fee + q.net == q.amount == amount
    assert q.fee * 10000 >= amount * fee_bps > (q.fee - 1) * 10000
    assert q.credit >= 1
    assert q.credit * rate[1] <= q.net * rate[0] < (q.credit + 1) * rate[1]
    assert q.value_minor * value[1] <= q.net * value[0] < (q.value_minor + 1) * value[1]


def test_redemption_value_rounds_down() -> None:
    assert redemption_value(replace(BASE, value_num=2, value_den=3), 100) == 66
    assert redemption_value(BASE, 801) == 801


def test_daily_cap_and_credit_limit() -> None:
    check_daily_cap(BASE, 199_000, 1000)
    with pytest.raises(FailedPrecondition, match="199000 converted today, 1000 left, 1001"):
        check_daily_cap(BASE, 199_000, 1001)
    check_credit_limit(None, 10**12, 10**12, "skyair", "staybright")
    check_credit_limit(5000, 4000, 1000, "skyair", "staybright")
    with pytest.raises(
        FailedPrecondition, match="would pass the credit limit of skyair at staybright"
    ):
        check_credit_limit(5000, 4000, 1001, "skyair", "staybright")


def test_usable_only_inside_the_validity_window() -> None:
    assert BASE.usable_at(BASE.valid_from)
    assert not BASE.usable_at(BASE.valid_from - timedelta(microseconds=1))
    assert not BASE.usable_at(BASE.valid_until)


def test_current_agreements_pick_the_version_in_force() -> None:
    v3 = replace(
        BASE,
        version=3,
        valid_from=datetime(2026, 12, 1, tzinfo=UTC),
        valid_until=datetime(2027, 1, 1, tzinfo=UTC),
    )
    reverse = replace(BASE, id="back", from_program="staybright", to_program="skyair")
    everything = [v3, BASE, reverse]
    assert current_agreements(everything, NOV) == {
        ("skyair", "staybright"): BASE,
        ("staybright", "skyair"): reverse,
    }
    assert current_agreements(everything, datetime(2026, 12, 5, tzinfo=UTC))[
        ("skyair", "staybright")
    ] == (v3)
    # v3 ended, but it superseded v2 from its start: no skyair -> staybright agreement.
    later = current_agreements(everything, datetime(2027, 2, 1, tzinfo=UTC))
    assert ("skyair", "staybright") not in later
    assert current_agreements(everything, datetime(2030, 1, 1, tzinfo=UTC)) == {}
    other_id = replace(BASE, id="promo", version=5)
    assert current_agreements([BASE, other_id], NOV)[("skyair", "staybright")] == other_id


def edge(source: str, target: str, num: int, den: int, fee_bps: int = 0) -> Agreement:
    return replace(
        BASE,
        id=f"{source}-{target}",
        from_program=source,
        to_program=target,
        rate_num=num,
        rate_den=den,
        fee_bps=fee_bps,
    )


def test_gain_cycle_is_named_with_its_exact_factor() -> None:
    agreements = [
        edge("skyair", "staybright", 3, 2, 100),
        edge("staybright", "beanhouse", 3, 1),
        edge("beanhouse", "skyair", 9, 40),
    ]
    # 3/2 * 0.99 * 3 * 9/40 = 1.002375
    assert find_gain_cycle(agreements) == ["beanhouse", "skyair", "staybright", "beanhouse"]
    assert find_gain_cycle(list(reversed(agreements))) == find_gain_cycle(agreements)
    with pytest.raises(
        FailedPrecondition,
        match=r"beanhouse -> skyair -> staybright -> beanhouse multiplies 1 point into 1.002375",
    ):
        check_no_gain_cycle(agreements)
    fair = [*agreements[:2], edge("beanhouse", "skyair", 2, 9)]
    assert find_gain_cycle(fair) is None
    check_no_gain_cycle(fair)
    exact_one = [edge("skyair", "staybright", 2, 1), edge("staybright", "skyair", 1, 2)]
    assert find_gain_cycle(exact_one) is None  # a factor of exactly 1 creates nothing


def _brute_force_gain(agreements: list[Agreement]) -> Fraction:
    """The largest factor over every cycle of distinct programs (0 if there is none)."""
    gains: dict[tuple[str, str], Fraction] = {}
    for a in agreements:
        gains[a.pair] = max(gains.get(a.pair, Fraction(0)), a.gain)
    programs = sorted({p for a in agreements for p in a.pair})
    best = Fraction(0)
    for size in range(2, len(programs) + 1):
        for order in itertools.permutations(programs, size):
            pairs = zip(order, (*order[1:], order[0]), strict=True)
            factor = Fraction(1)
            for pair in pairs:
                if pair not in gains:
                    break
                factor *= gains[pair]
            else:
                best = max(best, factor)
    return best


NAMES = ["aa", "bb", "cc", "dd", "ee"]
random_edge = st.tuples(
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),
    st.integers(1, 6),
    st.integers(1, 6),
    st.sampled_from([0, 0, 50, 100, 2500]),
).filter(lambda e: e[0] != e[1])


@settings(max_examples=300, deadline=None)
@given(st.lists(random_edge, max_size=12))
def test_cycle_check_agrees_with_brute_force(  # finds a gaining cycle iff one exists
    edges: list[tuple[str, str, int, int, int]],
) -> None:
    agreements = [edge(*e) for e in edges]
    expected = _brute_force_gain(agreements)
    found = find_gain_cycle(agreements)
    if expected <= 1:
        assert found is None
        check_no_gain_cycle(agreements)
        return
    assert found is not None and found[0] == found[-1] == min(found)
    assert len(set(found[:-1])) == len(found) - 1  # a simple cycle
    best: dict[tuple[str, str], Fraction] = {}
    for a in agreements:
        best[a.pair] = max(best.get(a.pair, Fraction(0)), a.gain)
    factor = Fraction(1)
    for pair in itertools.pairwise(found):
        factor *= best[pair]
    assert 1 < factor <= expected
    with pytest.raises(FailedPrecondition, match=" -> ".join(found)):
        check_no_gain_cycle(agreements)
