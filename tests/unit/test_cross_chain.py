"""The cross-chain audit on hand-built chains: two honest partners reconcile, and each
planted fault (changed credit, missing or duplicate convert-in, refund without a signed
rejection, forged receipt, rate differing from the agreement, ...) is found and named."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from coalition.errors import NotFound
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import ENTRY_TYPE, entry_leaf_hash, format_time
from coalition.ledger.envelope import sign_message
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.points.rates import sign_agreement
from coalition.verify.cross_chain import CrossChainFault, audit_coalition, check_coalition

A, B = "skyair", "staybright"
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
AGREEMENT: JsonObject = {
    "type": "coalition.agreement.v1",
    "id": "skyair-staybright",
    "version": 2,
    "from_program": A,
    "to_program": B,
    "rate": [3, 2],
    "fee_bps": 100,
    "min_points": 100,
    "max_points": 100000,
    "daily_cap_points": 200000,
    "point_value": [1, 1],
    "currency": "EUR",
    "valid_from": "2026-11-01T00:00:00.000000Z",
    "valid_until": "2027-11-01T00:00:00.000000Z",
    "proposed_by": A,
}
KEYS = {A: SigningKey.generate(), B: SigningKey.generate()}


def key_of(program: str) -> VerifyKey:
    if program not in KEYS:
        raise NotFound(f"no partner {program}")
    return KEYS[program].public_key


def contract_quote(amount: int) -> tuple[int, int, int, int]:
    """fee, net, credit, value_minor as docs/coalition.md defines them (rate 3/2, 1%)."""
    fee = -(-amount * 100 // 10_000)
    net = amount - fee
    return fee, net, net * 3 // 2, net


class Chains:
    """Two partners' chains written the way honest nodes write them."""

    def __init__(self) -> None:
        self.chains: dict[str, list[JsonObject]] = {A: [], B: []}
        self.n = 0
        self.now = T0
        signed: JsonObject = {
            "agreement": AGREEMENT,
            "signatures": {p: sign_agreement(AGREEMENT, KEYS[p]) for p in (A, B)},
        }
        for program in (A, B):
            self.add(program, "agreement", "-", agreement=signed)

    def add(self, program: str, kind: str, account: str, **fields: JsonValue) -> JsonObject:
        self.n += 1
        self.now += timedelta(seconds=1)
        body: JsonObject = {
            "type": ENTRY_TYPE,
            "program": program,
            "id": f"{program[:3]}-{self.n:06d}",
            "kind": kind,
            "at": format_time(self.now),
            "account": account,
            **fields,
        }
        self.chains[program].append(body)
        return body

    def out(self, cid: str, amount: int = 1000) -> JsonObject:
        fee, net, credit, value = contract_quote(amount)
        expiry = format_time(T0 + timedelta(days=365))
        return self.add(
            A,
            "convert-out",
            "acct-a",
            amount=amount,
            taken=[{"lot": "lot-1", "amount": amount, "expires_at": expiry}],
            conversion={
                "id": cid,
                "to_program": B,
                "agreement": {"id": AGREEMENT["id"], "version": AGREEMENT["version"]},
                "fee": fee,
                "net": net,
                "credit": credit,
                "rate": [3, 2],
                "value_minor": value,
                "currency": "EUR",
            },
        )

    def convert_in(self, out: JsonObject) -> JsonObject:
        conv = out["conversion"]
        assert isinstance(conv, dict)
        return self.add(
            B,
            "convert-in",
            "acct-b",
            amount=conv["credit"],
            lot={
                "id": f"in-{conv['id']}",
                "available_at": format_time(self.now),
                "expires_at": format_time(self.now + timedelta(days=365)),
            },
            conversion={
                "id": conv["id"],
                "from_program": A,
                "out_entry": out["id"],
                "out_hash": entry_leaf_hash(out).hex(),
                "out_at": out["at"],
                "value_minor": conv["value_minor"],
                "currency": conv["currency"],
                "agreement": {"id": AGREEMENT["id"], "version": AGREEMENT["version"]},
            },
        )

    def receipt(self, cid: str, convert_in: JsonObject, signer: str = B) -> JsonObject:
        body: JsonObject = {
            "conversion": cid,
            "status": "credited",
            "in_entry": convert_in["id"],
            "in_hash": entry_leaf_hash(convert_in).hex(),
        }
        return sign_message(KEYS[signer], "convert-receipt", B, A, body, self.now).to_json()

    def rejection(self, cid: str, signer: str = B) -> JsonObject:
        body: JsonObject = {"conversion": cid, "status": "rejected", "reason": "not enrolled"}
        return sign_message(KEYS[signer], "convert-rejection", B, A, body, self.now).to_json()

    def completed(self, cid: str, amount: int = 1000) -> tuple[JsonObject, JsonObject]:
        out = self.out(cid, amount)
        convert_in = self.convert_in(out)
        self.add(
            A,
            "convert-complete",
            "-",
            conversion={"id": cid},
            receipt=self.receipt(cid, convert_in),
        )
        return out, convert_in

    def refunded(
        self, cid: str, amount: int = 1000, *, rejection: JsonObject | None = None
    ) -> None:
        self.out(cid, amount)
        self.add(B, "convert-reject", "-", conversion={"id": cid, "from_program": A, "reason": "x"})
        self.refund(cid, amount, rejection or self.rejection(cid))

    def refund(self, cid: str, amount: int, rejection: JsonObject) -> JsonObject:
        expiry = format_time(T0 + timedelta(days=365))
        return self.add(
            A,
            "convert-refund",
            "acct-a",
            amount=amount,
            restored=[{"lot": f"r-{cid}:0", "amount": amount, "expires_at": expiry}],
            conversion={"id": cid},
            rejection=rejection,
        )

    def find(self, program: str, kind: str, cid: str) -> JsonObject:
        for entry in self.chains[program]:
            conv = entry.get("conversion")
            if entry["kind"] == kind and isinstance(conv, dict) and conv["id"] == cid:
                return entry
        raise AssertionError(f"no {kind} for {cid}")

    def faults(self, **kwargs: datetime) -> list[CrossChainFault]:
        return check_coalition(self.chains, key_of, **kwargs)


def honest() -> Chains:
    c = Chains()
    c.completed("c1", 1000)
    c.completed("c2", 250)
    c.refunded("c3", 400)
    return c


def kinds(faults: list[CrossChainFault]) -> set[str]:
    return {f.kind for f in faults}


def test_honest_partners_reconcile_and_totals_add_up() -> None:
    c = honest()
    report = audit_coalition(c.chains, key_of, pending_before=c.now + timedelta(hours=1))
    assert report.faults == [], [str(f) for f in report.faults]
    assert report.conversions == 3
    totals = report.totals[(A, B)]
    assert (totals.completed, totals.refunded, totals.pending) == (2, 1, 0)
    assert totals.points_out == 1250 and totals.points_refunded == 400
    assert totals.credited == totals.credit_quoted == 1485 + 370
    assert totals.value_minor == 990 + 247
    assert report.to_json()["ok"] is True
    assert "OK" in report.render()


def test_changed_credit_on_the_target_is_found() -> None:
    c = honest()
    c.find(B, "convert-in", "c1")["amount"] = 1600
    faults = c.faults()
    assert "convert-in-mismatch" in kinds(faults)
    (fault,) = [f for f in faults if f.kind == "convert-in-mismatch"]
    assert fault.program == B and fault.conversion == "c1" and fault.log_index is not None
    assert "1600" in fault.message and "1485" in fault.message
    assert "receipt-mismatch" in kinds(faults)  # the receipt's in_hash no longer matches


def test_missing_convert_in_is_found() -> None:
    c = honest()
    c.chains[B].remove(c.find(B, "convert-in", "c2"))
    faults = c.faults()
    assert kinds(faults) == {"convert-in-missing"}
    assert faults[0].program == A and faults[0].conversion == "c2"


def test_duplicate_convert_in_is_found() -> None:
    c = honest()
    again = copy.deepcopy(c.find(B, "convert-in", "c1"))
    again["id"] = "sta-999999"
    c.chains[B].append(again)
    faults = c.faults()
    assert kinds(faults) == {"convert-in-duplicate"}
    assert faults[0].entry_id == "sta-999999" and faults[0].log_index == len(c.chains[B]) - 1


def test_convert_in_without_convert_out_is_found() -> None:
    c = honest()
    c.chains[A].remove(c.find(A, "convert-out", "c1"))
    c.chains[A].remove(c.find(A, "convert-complete", "c1"))
    assert kinds(c.faults()) == {"convert-in-orphan"}


def test_refund_without_signed_rejection_is_found() -> None:
    c = honest()
    c.out("c4")
    c.add(B, "convert-reject", "-", conversion={"id": "c4", "from_program": A, "reason": "x"})
    c.refund("c4", 1000, c.rejection("c4", signer=A))  # A signs B's rejection itself
    faults = c.faults()
    assert kinds(faults) == {"refund-unsigned"}
    assert "not signed by staybright" in faults[0].message


def test_refund_whose_rejection_names_another_conversion_is_found() -> None:
    c = honest()
    c.out("c4")
    c.add(B, "convert-reject", "-", conversion={"id": "c4", "from_program": A, "reason": "x"})
    c.refund("c4", 1000, c.rejection("c3"))  # a genuine rejection, of another conversion
    assert kinds(c.faults()) == {"refund-unsigned"}


def test_refund_without_the_targets_convert_reject_is_found() -> None:
    c = honest()
    c.out("c4")
    c.refund("c4", 1000, c.rejection("c4"))
    assert kinds(c.faults()) == {"convert-reject-missing"}


def test_refund_of_a_credited_conversion_is_found() -> None:
    c = honest()
    out = c.out("c4")
    c.convert_in(out)
    c.add(B, "convert-reject", "-", conversion={"id": "c4", "from_program": A, "reason": "x"})
    c.refund("c4", 1000, c.rejection("c4"))
    assert kinds(c.faults()) == {"credited-and-refunded", "credited-and-rejected"}


def test_completed_and_refunded_is_found() -> None:
    c = honest()
    c.refund("c1", 1000, c.rejection("c1"))
    found = kinds(c.faults())
    assert {"settled-twice", "credited-and-refunded", "convert-reject-missing"} <= found


def test_refund_of_the_wrong_amount_is_found() -> None:
    c = Chains()
    c.out("c5", 1000)
    c.add(B, "convert-reject", "-", conversion={"id": "c5", "from_program": A, "reason": "x"})
    c.refund("c5", 1200, c.rejection("c5"))
    assert kinds(c.faults()) == {"refund-amount"}


def test_forged_receipt_signature_is_found() -> None:
    c = honest()
    complete = c.find(A, "convert-complete", "c2")
    receipt = complete["receipt"]
    assert isinstance(receipt, dict) and isinstance(receipt["signature"], str)
    receipt["signature"] = ("0" if receipt["signature"][0] != "0" else "1") + receipt["signature"][
        1:
    ]
    faults = c.faults()
    assert kinds(faults) == {"receipt-invalid"}
    assert faults[0].program == A and faults[0].entry_id == complete["id"]


def test_receipt_signed_by_the_source_is_found() -> None:
    c = honest()
    complete = c.find(A, "convert-complete", "c1")
    complete["receipt"] = c.receipt("c1", c.find(B, "convert-in", "c1"), signer=A)
    assert kinds(c.faults()) == {"receipt-invalid"}


def test_receipt_naming_another_convert_in_is_found() -> None:
    c = honest()
    complete = c.find(A, "convert-complete", "c1")
    complete["receipt"] = c.receipt("c1", c.find(B, "convert-in", "c2"))
    assert kinds(c.faults()) == {"receipt-mismatch"}


def test_rate_differing_from_the_agreement_is_found() -> None:
    c = Chains()
    out = c.out("c6", 1000)
    conv = out["conversion"]
    assert isinstance(conv, dict)
    conv["rate"], conv["credit"] = [2, 1], 1980  # 2:1 instead of the signed 3:2
    convert_in = c.convert_in(out)
    c.add(A, "convert-complete", "-", conversion={"id": "c6"}, receipt=c.receipt("c6", convert_in))
    faults = c.faults()
    assert kinds(faults) == {"quote-mismatch"}
    assert "rate" in faults[0].message and "credit" in faults[0].message


def test_fee_skipped_is_found() -> None:
    c = Chains()
    out = c.out("c7", 1000)
    conv = out["conversion"]
    assert isinstance(conv, dict)
    conv["fee"], conv["net"] = 0, 1000
    assert kinds(c.faults()) == {"quote-mismatch"}


def test_convert_out_taking_other_than_its_amount_is_found() -> None:
    c = Chains()
    out = c.out("c8", 1000)
    taken = out["taken"]
    assert isinstance(taken, list) and isinstance(taken[0], dict)
    out["taken"] = [{**taken[0], "amount": 900}]
    assert kinds(c.faults()) == {"convert-out-amount"}


def test_agreement_signed_by_one_partner_only_is_found() -> None:
    c = Chains()
    for program in (A, B):
        signed = c.chains[program][0]["agreement"]
        assert isinstance(signed, dict) and isinstance(signed["signatures"], dict)
        signed["signatures"][B] = sign_agreement(AGREEMENT, KEYS[A])
    c.completed("c1")
    found = kinds(c.faults())
    assert "agreement-signature" in found


def test_agreement_missing_on_the_source_is_found() -> None:
    c = Chains()
    c.chains[A].pop(0)
    c.completed("c1")
    assert kinds(c.faults()) == {"agreement-missing", "agreement-one-sided"}


def test_conversion_outside_the_agreements_validity_is_found() -> None:
    c = Chains()
    c.now = datetime(2028, 1, 1, tzinfo=UTC)
    c.completed("c1")
    assert kinds(c.faults()) == {"agreement-unusable"}


def test_pending_is_a_fault_only_before_the_cut_off() -> None:
    c = honest()
    out = c.out("c9")
    c.convert_in(out)  # credited by B, receipt not yet recorded by A
    assert c.faults() == []
    report = audit_coalition(c.chains, key_of)
    assert report.totals[(A, B)].pending == 1
    written = datetime.fromisoformat(str(out["at"]))
    assert c.faults(pending_before=written) == []
    late = c.faults(pending_before=written + timedelta(seconds=1))
    assert kinds(late) == {"pending"} and late[0].conversion == "c9"


def test_unknown_partner_key_is_a_fault_not_a_crash() -> None:
    c = Chains()
    out = c.out("c1")
    conv = out["conversion"]
    assert isinstance(conv, dict)
    conv["to_program"] = "nowhere"
    body: JsonObject = {"conversion": "c1", "status": "credited", "in_entry": "x", "in_hash": "y"}
    forged = sign_message(KEYS[A], "convert-receipt", "nowhere", A, body, c.now).to_json()
    c.add(A, "convert-complete", "-", conversion={"id": "c1"}, receipt=forged)
    found = kinds(c.faults())
    assert {"receipt-invalid", "agreement-direction"} <= found


def test_malformed_entries_are_reported_not_raised() -> None:
    c = honest()
    c.add(A, "convert-out", "acct-a", amount="lots", conversion="c10")
    c.add(B, "convert-in", "acct-b", amount=5, conversion={"id": "c11"})
    c.add(A, "hold", "acct-a", amount=5, hold=[])
    faults = c.faults()
    assert kinds(faults) == {"entry-malformed"} and len(faults) == 3


def test_an_entry_off_its_kinds_shape_is_malformed_once_and_not_read_further() -> None:
    """Entries are parsed once, strictly (points.model): a field the kind does not declare
    or an impossible date is reported where it is, and the audit goes on."""
    c = honest()
    out = c.out("c12")
    out["note"] = "not a convert-out field"
    late = c.out("c13")
    late["at"] = "2026-02-30T12:00:00.000000Z"
    faults = c.faults()
    malformed = {f.entry_id: f for f in faults if f.kind == "entry-malformed"}
    assert set(malformed) == {out["id"], late["id"]}
    assert "note" in malformed[out["id"]].message
    assert malformed[late["id"]].conversion == "c13"


def _hold(c: Chains, hold_id: str, amount: int, expires: datetime) -> None:
    c.add(
        A,
        "hold",
        "acct-a",
        amount=amount,
        taken=[{"lot": "lot-1", "amount": amount, "expires_at": format_time(expires)}],
        hold={
            "id": hold_id,
            "partner": B,
            "reference": "R1",
            "expires_at": format_time(expires),
            "agreement": {"id": AGREEMENT["id"], "version": AGREEMENT["version"]},
        },
    )


def _capture(c: Chains, hold_id: str, amount: int, *, acknowledged: bool = True) -> None:
    """A captures the hold (1 minor unit per point); B records A's signed receipt."""
    c.add(
        A,
        "hold-capture",
        "acct-a",
        amount=amount,
        hold={"id": hold_id, "partner": B},
        value_minor=amount,
        currency="EUR",
    )
    if not acknowledged:
        return
    body: JsonObject = {"hold": hold_id, "status": "captured"}
    receipt = sign_message(KEYS[A], "hold-capture-reply", A, B, body, c.now).to_json()
    c.add(
        B,
        "redemption-receipt",
        "-",
        hold={"id": hold_id, "partner": A, "amount": amount},
        value_minor=amount,
        currency="EUR",
        captured_at=format_time(c.now),
        receipt=receipt,
    )


def _release(c: Chains, hold_id: str, amount: int) -> None:
    c.add(
        A,
        "hold-release",
        "acct-a",
        amount=amount,
        restored=[{"lot": f"{hold_id}:0", "amount": amount, "expires_at": format_time(T0)}],
        hold={"id": hold_id, "partner": B, "why": "void"},
    )


@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        (lambda c: None, set()),
        (lambda c: _capture(c, "h1", 300), {"hold-settled-twice", "redemption-receipt-duplicate"}),
        (lambda c: _release(c, "h1", 300), {"hold-settled-twice"}),
        (lambda c: _capture(c, "h9", 300), {"hold-orphan"}),
        (lambda c: c.chains[B].pop(), {"redemption-receipt-missing"}),
        (lambda c: c.chains[B][-1].update(value_minor=301), {"redemption-receipt-mismatch"}),
        (
            lambda c: c.chains[A][-1].update(value_minor=299),
            {"capture-value", "redemption-receipt-mismatch"},
        ),
        (lambda c: c.chains[A].pop(), {"redemption-receipt-orphan"}),
    ],
)
def test_holds(plant: Callable[[Chains], None], expected: set[str]) -> None:
    c = Chains()
    _hold(c, "h2", 200, c.now + timedelta(minutes=5))
    _release(c, "h2", 200)
    _hold(c, "h1", 300, c.now + timedelta(minutes=5))
    _capture(c, "h1", 300)
    plant(c)
    assert kinds(c.faults(pending_before=c.now + timedelta(seconds=1))) == expected


def test_late_capture_and_open_hold_are_found() -> None:
    c = Chains()
    _hold(c, "h1", 300, c.now + timedelta(seconds=1))
    c.now += timedelta(minutes=1)
    _capture(c, "h1", 300)
    _hold(c, "h2", 100, c.now + timedelta(seconds=10))
    assert kinds(c.faults()) == {"hold-capture-late"}
    assert kinds(c.faults(pending_before=c.now + timedelta(hours=1))) == {
        "hold-capture-late",
        "pending",
    }


def test_chains_written_by_the_real_operations_replay_and_reconcile() -> None:
    """Entries built by ``points.operations`` (as the nodes build them) replay on each
    chain and reconcile across the two: guards against drift between writer and auditor."""
    from coalition.points import operations
    from coalition.points.operations import EntryContext
    from coalition.points.rates import agreement_from_document, quote, signed_agreement
    from coalition.points.replay import Replay
    from coalition.points.rules import ProgramRules

    rules = ProgramRules(holding_period=timedelta(0), expiry_period=timedelta(days=365))
    agreement = agreement_from_document(AGREEMENT)
    signed = signed_agreement(AGREEMENT, {p: sign_agreement(AGREEMENT, KEYS[p]) for p in (A, B)})
    chains: dict[str, list[JsonObject]] = {A: [], B: []}
    replays = {A: Replay(), B: Replay()}
    clock = [T0]

    def write(program: str, make: Callable[[EntryContext], JsonObject]) -> JsonObject:
        clock[0] += timedelta(seconds=1)
        body = make(EntryContext(program, f"{len(chains[program]):032x}", clock[0]))
        replays[program].apply(body)
        chains[program].append(body)
        return body

    for program in (A, B):
        write(program, lambda ctx: operations.agreement_entry(ctx, signed))
        write(program, lambda ctx: operations.enroll(ctx, "acct"))
    write(
        A,
        lambda ctx: operations.adjust(ctx, rules, replays[A].accounts["acct"], 5000, "op", "seed"),
    )

    def out(cid: str) -> JsonObject:
        return write(
            A,
            lambda ctx: operations.convert_out(
                ctx, rules, replays[A].accounts["acct"], agreement, quote(agreement, 1000), cid
            ),
        )

    credited = out("c1")
    convert_in = write(
        B,
        lambda ctx: operations.convert_in(
            ctx, rules, "acct", credited, entry_leaf_hash(credited).hex(), agreement
        ),
    )
    receipt = sign_message(
        KEYS[B],
        "convert-receipt",
        B,
        A,
        {
            "conversion": "c1",
            "status": "credited",
            "in_entry": convert_in["id"],
            "in_hash": entry_leaf_hash(convert_in).hex(),
            "credit": convert_in["amount"],
        },
        clock[0],
    ).to_json()
    write(A, lambda ctx: operations.convert_complete(ctx, "acct", "c1", receipt))
    refused = out("c2")
    write(B, lambda ctx: operations.convert_reject(ctx, "c2", A, "not enrolled"))
    rejection = sign_message(
        KEYS[B],
        "convert-rejection",
        B,
        A,
        {"conversion": "c2", "status": "rejected", "reason": "not enrolled"},
        clock[0],
    ).to_json()
    write(A, lambda ctx: operations.convert_refund(ctx, refused, rejection))

    report = audit_coalition(chains, key_of, pending_before=clock[0] + timedelta(seconds=1))
    assert report.faults == [], [str(f) for f in report.faults]
    totals = report.totals[(A, B)]
    assert (totals.completed, totals.refunded, totals.credited) == (1, 1, 1485)
    assert replays[A].supply() == 4000 and replays[B].supply() == 1485
    assert replays[A].in_flight == {}
