"""Conversions A -> B between real nodes: mutual-TLS gRPC on 127.0.0.1, one database per
node (SQLite files, or PostgreSQL schemas), the real outbox thread.

Every test ends with both chains replayed: each node's tables equal the replay of its
own entries, and no point is in flight once every conversion is settled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from coalition.audit.db_check import check_database
from coalition.errors import CoalitionError, FailedPrecondition, InsufficientPoints
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import entry_leaf_hash, format_time
from coalition.ledger.envelope import SignedMessage, open_message, sign_message
from coalition.node.auth import Authenticator
from coalition.node.features.conversions import RECEIPT, ConversionView
from coalition.points.replay import Replay
from coalition.runtime.wiring import member_app, serve_member_api
from coalition.store import conversions as conversions_store
from coalition.store.conversions import outbox
from coalition.v1 import conversions_pb2, conversions_pb2_grpc

from support.coalition import (
    PartnerNode,
    RunningCoalition,
    agreement_doc,
    coalition_nodes,
    entry_kinds,
    ledger_entries,
    wait_for,
)
from support.databases import node_urls

Factory = Callable[..., RunningCoalition]
A, B, C = "skyair", "staybright", "beanhouse"
CREDIT = 1485  # 1000 points at 3:2 after a 1 % fee: net 990, floor(990 * 3 / 2)


@pytest.fixture
def make(tmp_path: Path, database_url: str) -> Iterator[Factory]:
    """Start real nodes, propose the skyair -> staybright agreement, enroll alice (10,000
    skyair points) and bob at staybright."""
    with ExitStack() as stack:

        def factory(
            programs: tuple[str, ...] = (A, B), agreement: dict[str, Any] | None = None, **kw: Any
        ) -> RunningCoalition:
            urls = stack.enter_context(node_urls(database_url, tmp_path, programs))
            c = stack.enter_context(coalition_nodes(tmp_path, urls, **kw))
            c[A].agr.propose(agreement_doc(A, B, **(agreement or {})))
            c[A].service.points.enroll("alice", idempotency_key="enroll-alice")
            c[A].service.points.adjust(
                "alice", 10_000, "ops", "opening", idempotency_key="seed-alice"
            )
            c[B].service.points.enroll("bob", idempotency_key="enroll-bob")
            return c

        yield factory


def spendable(node: PartnerNode, member: str) -> int:
    return node.service.points.balance(member).spendable


def settled(node: PartnerNode, view: ConversionView, timeout: float = 20.0) -> ConversionView:
    """The conversion once it is no longer pending."""
    wait_for(
        lambda: node.conv.status(view.member_id, view.id).status != "pending",
        timeout,
        f"conversion {view.id} to settle",
    )
    return node.conv.status(view.member_id, view.id)


def replay(node: PartnerNode) -> Replay:
    state = Replay()
    for entry in ledger_entries(node.service):
        state.apply(entry)
    return state


def assert_consistent(c: RunningCoalition) -> None:
    """Each node's tables equal the replay of its chain; nothing is left in flight."""
    for node in c.nodes.values():
        node.service.ledger.flush()
        report = check_database(node.url)
        assert report.ok, report.render()
        assert replay(node).in_flight == {}
        # The running totals the credit limits read agree with the chain's own reading
        # of what is unsettled (``Settlement.unsettled``), in every direction.
        chain = node.settlement
        for other in c.nodes:
            for debtor, creditor in ((node.program, other), (other, node.program)):
                if debtor != creditor:
                    expected = chain.unsettled(debtor, creditor)
                    assert unsettled_here(node, debtor, creditor, in_flight=True) == expected


def outbox_rows(node: PartnerNode) -> list[Any]:
    with node.service.sequencer.read() as conn:
        return list(conn.execute(select(outbox)).all())


def test_conversion_completes_with_exact_amounts_on_both_chains(make: Factory) -> None:
    c = make()
    a, b = c[A], c[B]
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="conv-1")
    assert (view.status, view.amount, view.fee, view.net, view.credit) == (
        "pending",
        1000,
        10,
        990,
        CREDIT,
    )
    assert view.value_minor == 990 and view.currency == "EUR"
    done = settled(a, view)
    assert done.status == "completed" and done.reason is None
    assert spendable(a, "alice") == 9000
    assert spendable(b, "bob") == CREDIT

    [out] = ledger_entries(a.service, "convert-out")
    [complete] = ledger_entries(a.service, "convert-complete")
    [credit] = ledger_entries(b.service, "convert-in")
    assert out["amount"] == 1000 and out["conversion"]["credit"] == CREDIT  # type: ignore[index]
    assert credit["amount"] == CREDIT
    assert credit["conversion"]["out_hash"] == entry_leaf_hash(out).hex()  # type: ignore[index]
    assert credit["conversion"]["id"] == view.id  # type: ignore[index]
    # The receipt A embedded verifies alone with the manifest and names B's entry.
    receipt = open_message(SignedMessage.from_json(complete["receipt"]), c.manifest.public_key)
    assert (receipt.kind, receipt.sender, receipt.to) == (RECEIPT, B, A)
    assert receipt.body["in_entry"] == credit["id"]
    assert receipt.body["in_hash"] == entry_leaf_hash(credit).hex()
    assert outbox_rows(a) == []
    # The same idempotency key returns the same conversion and moves nothing more.
    again = a.conv.convert("alice", B, "bob", 1000, idempotency_key="conv-1")
    assert again.id == view.id and spendable(a, "alice") == 9000
    assert_consistent(c)


def test_a_rejected_conversion_is_refunded_with_the_target_signed_rejection(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = make(credit_limits={(B, A): 500, (A, B): 10**9})  # running totals kept both ways
    a, b = c[A], c[B]
    monkeypatch.setattr(a.conv, "manifest", _NoLimits(c.manifest))  # only B refuses
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="conv-x")
    done = settled(a, view)
    assert done.status == "refunded"
    assert done.reason is not None and "the credit limit of" in done.reason
    assert spendable(a, "alice") == 10_000
    [refund] = ledger_entries(a.service, "convert-refund")
    rejection = open_message(SignedMessage.from_json(refund["rejection"]), c.manifest.public_key)
    assert rejection.kind == "convert-rejection" and rejection.body["status"] == "rejected"
    [reject] = ledger_entries(b.service, "convert-reject")
    assert reject["conversion"]["id"] == view.id  # type: ignore[index]
    assert entry_kinds(b.service)["convert-in"] == 0
    assert_consistent(c)


def test_a_conversion_to_an_id_not_enrolled_at_the_target_enrolls_it(make: Factory) -> None:
    """Issue 11, class 9: a member converting to an id that nobody enrolled at the target
    sees what a conversion to an enrolled member shows (it was refunded with "not
    enrolled" before: an oracle of the target's members); the points wait there."""
    c = make()
    a, b = c[A], c[B]
    known = settled(a, a.conv.convert("alice", B, "bob", 1000, idempotency_key="to-bob"))
    unknown = settled(a, a.conv.convert("alice", B, "newbie", 1000, idempotency_key="to-new"))
    assert (known.status, known.reason, known.credit) == ("completed", None, CREDIT)
    assert (unknown.status, unknown.reason, unknown.credit) == ("completed", None, CREDIT)
    assert spendable(b, "newbie") == CREDIT and spendable(a, "alice") == 8000
    newbie = b.service.points.account_for("newbie")
    kinds = [e["kind"] for e in ledger_entries(b.service) if e["account"] == newbie]
    assert kinds == ["enroll", "convert-in"]  # enrolled by the credit, in its transaction
    with pytest.raises(FailedPrecondition, match="already enrolled"):
        b.service.points.enroll("newbie", idempotency_key="enroll-newbie")
    assert_consistent(c)


def test_target_down_stays_pending_then_completes(make: Factory) -> None:
    c = make(abort_after_s=60.0)
    a, b = c[A], c[B]
    b.stop_partner_server()
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="conv-down")
    wait_for(lambda: any(row.attempts >= 2 for row in outbox_rows(a)), 20, "failed attempts")
    assert a.conv.status("alice", view.id).status == "pending"  # no refund on a timeout
    assert spendable(a, "alice") == 9000
    assert entry_kinds(a.service)["convert-refund"] == 0
    b.start_partner_server()
    a.conv.outbox.wake()
    assert settled(a, view, 40).status == "completed"
    assert spendable(b, "bob") == CREDIT
    assert_consistent(c)


def test_one_partner_down_does_not_hold_up_another(make: Factory) -> None:
    c = make(programs=(A, B, C), abort_after_s=60.0)
    a, h = c[A], c[C]
    a.agr.propose(agreement_doc(A, C, rate=(1, 1), fee_bps=0))
    h.service.points.enroll("carol", idempotency_key="enroll-carol")
    h.stop_partner_server()
    to_c = a.conv.convert("alice", C, "carol", 1000, idempotency_key="to-c")
    to_b = a.conv.convert("alice", B, "bob", 1000, idempotency_key="to-b")
    assert settled(a, to_b).status == "completed"
    assert a.conv.status("alice", to_c.id).status == "pending"
    h.start_partner_server()
    a.conv.outbox.wake()
    assert settled(a, to_c, 40).status == "completed"
    assert spendable(h, "carol") == 1000 and spendable(a, "alice") == 8000
    assert_consistent(c)


def test_abort_after_deadline_refunds_and_late_delivery_never_credits(make: Factory) -> None:
    c = make(abort_after_s=1.0, credit_limits={(B, A): 10**9})
    a, b = c[A], c[B]
    b.stop_partner_server()
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="conv-abort")
    wait_for(lambda: outbox_rows(a)[0].attempts >= 1, 20, "a failed attempt")
    threading.Event().wait(1.2)  # past abort_after_s while B is down
    assert a.conv.status("alice", view.id).status == "pending"
    b.start_partner_server()
    a.conv.outbox.wake()
    done = settled(a, view, 40)
    assert (done.status, done.reason) == ("refunded", "aborted")
    assert spendable(a, "alice") == 10_000
    [reject] = ledger_entries(b.service, "convert-reject")
    assert reject["conversion"] == {"id": view.id, "from_program": A, "reason": "aborted"}

    # The convert message arriving late (a delayed or replayed delivery) gets the stored
    # rejection again; B never credits an aborted conversion.
    [out] = ledger_entries(a.service, "convert-out")
    assert a.client is not None
    _, reply = a.client.call(
        B, "convert", {"conversions": [{"out_entry": out, "to_member_id": "bob"}]}
    )
    [answer] = reply["receipts"]  # type: ignore[misc]
    late = open_message(SignedMessage.from_json(answer), c.manifest.public_key)
    assert late.body == {"conversion": view.id, "status": "rejected", "reason": "aborted"}
    assert entry_kinds(b.service)["convert-in"] == 0 and spendable(b, "bob") == 0
    assert_consistent(c)


def test_duplicate_and_out_of_order_deliveries_credit_once(make: Factory) -> None:
    c = make(start_features=False)
    a, b = c[A], c[B]
    views = [a.conv.convert("alice", B, "bob", 1000, idempotency_key=f"conv-{n}") for n in range(3)]
    outs = {e["conversion"]["id"]: e for e in ledger_entries(a.service, "convert-out")}  # type: ignore[index]
    item = {v.id: {"out_entry": outs[v.id], "to_member_id": "bob"} for v in views}
    v0, v1, v2 = (v.id for v in views)
    assert a.client is not None
    _, first = a.client.call(
        B, "convert", {"conversions": [item[v2], item[v0], item[v2], item[v1], item[v0]]}
    )
    receipts = first["receipts"]
    assert isinstance(receipts, list) and len(receipts) == 3
    _, second = a.client.call(B, "convert", {"conversions": [item[v1]]})
    assert second["receipts"] == [receipts[2]]  # the stored answer, byte for byte
    _, aborted = a.client.call(B, "abort", {"conversions": [v0]})
    assert aborted["receipts"] == [receipts[1]]  # credited already: the receipt, not a rejection
    assert entry_kinds(b.service)["convert-in"] == 3
    assert entry_kinds(b.service)["convert-reject"] == 0
    assert spendable(b, "bob") == 3 * CREDIT

    # A records each receipt once, however often it arrives and in whatever order.
    assert a.conv.record_answers(B, list(reversed(receipts))) == {v0, v1, v2}
    assert entry_kinds(a.service)["convert-complete"] == 3
    assert a.conv.record_answers(B, receipts + receipts) == {v0, v1, v2}  # still settled
    a.conv.outbox.run_once()  # the outbox finds nothing left to send
    assert entry_kinds(a.service)["convert-complete"] == 3
    assert [a.conv.status("alice", v).status for v in (v0, v1, v2)] == ["completed"] * 3
    assert outbox_rows(a) == [] and entry_kinds(b.service)["convert-in"] == 3
    assert_consistent(c)


def test_concurrent_conversions_never_overdraw(make: Factory) -> None:
    c = make()
    a, b = c[A], c[B]
    results: list[ConversionView | CoalitionError] = []
    lock = threading.Lock()

    def convert(n: int) -> None:
        try:
            found: ConversionView | CoalitionError = a.conv.convert(
                "alice", B, "bob", 3000, idempotency_key=f"race-{n}"
            )
        except CoalitionError as exc:
            found = exc
        with lock:
            results.append(found)

    threads = [threading.Thread(target=convert, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    made = [r for r in results if isinstance(r, ConversionView)]
    refused = [r for r in results if not isinstance(r, ConversionView)]
    assert len(made) == 3 and len(refused) == 5  # 10,000 points: three of 3,000
    assert all(isinstance(r, InsufficientPoints) for r in refused)
    for view in made:
        assert settled(a, view).status == "completed"
    assert spendable(a, "alice") == 1000
    assert spendable(b, "bob") == 3 * 4455  # 3000 - 30 fee = 2970 net, * 3 / 2
    assert_consistent(c)


def unsettled_here(node: PartnerNode, debtor: str, creditor: str, in_flight: bool) -> int:
    with node.service.sequencer.read() as conn:
        return conversions_store.unsettled(
            conn, node.program, debtor, creditor, in_flight=in_flight
        )


def test_credit_limit_refuses_until_settled(make: Factory) -> None:
    c = make(credit_limits={(B, A): 2000})
    a, b = c[A], c[B]
    start = datetime.now(UTC)
    first = a.conv.convert("alice", B, "bob", 1000, idempotency_key="cl-1")  # owes 990
    second = a.conv.convert("alice", B, "bob", 1000, idempotency_key="cl-2")  # owes 1980
    with pytest.raises(FailedPrecondition, match="the credit limit of"):
        a.conv.convert("alice", B, "bob", 1000, idempotency_key="cl-3")
    assert spendable(a, "alice") == 8000  # the refused one took nothing
    for view in (first, second):
        assert settled(a, view).status == "completed"
    quoted = a.conv.quote("alice", B, 1000)
    assert (quoted.credit, quoted.value_minor, quoted.converted_today) == (CREDIT, 990, 2000)

    c[A].settlement.propose(B, start, datetime.now(UTC))
    third = a.conv.convert("alice", B, "bob", 1000, idempotency_key="cl-3")
    assert settled(a, third).status == "completed"  # B's own limit check passes too
    assert spendable(b, "bob") == 3 * CREDIT
    assert_consistent(c)


def test_credit_limit_counts_what_a_later_statement_left_unsettled(make: Factory) -> None:
    """A statement of a later period settles that period only: the obligations before it
    (no statement yet) still count towards the limit, on both sides, by the same rule as
    ``Settlement.unsettled`` (regression: the end of the latest statement was taken as
    "everything before is settled", so the limit could be passed)."""
    c = make(credit_limits={(B, A): 2000})
    a, b = c[A], c[B]
    assert settled(a, a.conv.convert("alice", B, "bob", 1000, idempotency_key="g-1")).status == (
        "completed"
    )
    later = datetime.now(UTC)
    assert settled(a, a.conv.convert("alice", B, "bob", 1000, idempotency_key="g-2")).status == (
        "completed"
    )
    features = {p: node.settlement for p, node in c.nodes.items()}
    features[A].propose(B, later, datetime.now(UTC))  # settles g-2 only
    for node in (a, b):
        assert unsettled_here(node, A, B, in_flight=False) == 990
        assert features[node.program].unsettled(A, B) == 990  # the chain's own reading
        assert (
            unsettled_here(node, B, A, in_flight=False)
            == 0
            == features[node.program].unsettled(B, A)
        )
    third = a.conv.convert("alice", B, "bob", 1000, idempotency_key="g-3")  # 1980 owed
    assert unsettled_here(a, A, B, in_flight=True) == 1980
    with pytest.raises(FailedPrecondition, match="the credit limit of"):
        a.conv.convert("alice", B, "bob", 1000, idempotency_key="g-4")
    assert settled(a, third).status == "completed"
    assert unsettled_here(b, A, B, in_flight=False) == 1980 == features[B].unsettled(A, B)
    assert spendable(a, "alice") == 7000 and spendable(b, "bob") == 3 * CREDIT
    assert_consistent(c)


def test_daily_cap_counts_the_members_conversions_today(make: Factory) -> None:
    c = make(agreement={"daily_cap_points": 2500})
    a = c[A]
    a.conv.convert("alice", B, "bob", 1000, idempotency_key="cap-1")
    a.conv.convert("alice", B, "bob", 1000, idempotency_key="cap-2")
    with pytest.raises(FailedPrecondition, match="daily cap"):
        a.conv.convert("alice", B, "bob", 1000, idempotency_key="cap-3")
    last = a.conv.convert("alice", B, "bob", 500, idempotency_key="cap-4")
    assert settled(a, last).status == "completed"
    assert a.conv.quote("alice", B, 100).converted_today == 2500
    with pytest.raises(FailedPrecondition, match="0 left"):
        a.conv.convert("alice", B, "bob", 100, idempotency_key="cap-5")
    assert spendable(a, "alice") == 7500


class ShiftedClock:
    """The wall clock plus an offset a test moves forward, so an agreement can end at
    once however long the nodes took to start."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **kwargs: float) -> None:
        self.offset += timedelta(**kwargs)


def test_no_conversion_without_an_agreement_in_force(make: Factory) -> None:
    clock = ShiftedClock()
    ends = clock() + timedelta(days=1)
    c = make(agreement={"valid_until": ends}, clock=clock)
    a, b = c[A], c[B]
    b.service.points.adjust("bob", 5000, "ops", "opening", idempotency_key="seed-bob")
    with pytest.raises(FailedPrecondition, match="no rate agreement staybright -> skyair"):
        b.conv.convert("bob", A, "alice", 1000, idempotency_key="back")
    assert settled(a, a.conv.convert("alice", B, "bob", 1000, idempotency_key="ok")).status == (
        "completed"
    )
    clock.advance(days=2)
    assert a.service.now() > ends
    with pytest.raises(FailedPrecondition, match="no rate agreement skyair -> staybright"):
        a.conv.convert("alice", B, "bob", 1000, idempotency_key="late")
    assert spendable(a, "alice") == 9000 and spendable(b, "bob") == 5000 + CREDIT
    assert_consistent(c)


def test_tampered_or_foreign_receipts_are_refused(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    c = make(programs=(A, B, C), start_features=False)
    a, b, h = c[A], c[B], c[C]
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="tamper")
    [out] = ledger_entries(a.service, "convert-out")
    assert a.client is not None
    _, reply = a.client.call(
        B, "convert", {"conversions": [{"out_entry": out, "to_member_id": "bob"}]}
    )
    [genuine] = reply["receipts"]  # type: ignore[misc]
    assert isinstance(genuine, dict)
    envelope = open_message(SignedMessage.from_json(genuine), c.manifest.public_key)
    text = str(genuine["envelope"])
    now = datetime.now(UTC)
    forged_body = dict(envelope.body, credit=CREDIT * 10)
    forgeries = [
        # the credit edited after B signed
        {
            "envelope": text.replace(f'"credit":{CREDIT}', f'"credit":{CREDIT * 10}'),
            "signature": genuine["signature"],
        },
        # B's name, another partner's key
        sign_message(h.key, RECEIPT, B, A, envelope.body, now).to_json(),
        # B's key, but a credit that is not the conversion's
        sign_message(b.key, RECEIPT, B, A, forged_body, now).to_json(),
        # B's key, addressed to another program
        sign_message(b.key, RECEIPT, B, C, envelope.body, now).to_json(),
        # beanhouse's genuine signature for a conversion that went to B
        sign_message(h.key, RECEIPT, C, A, envelope.body, now).to_json(),
        # not a signed message at all
        {"envelope": text},
    ]
    with caplog.at_level(logging.WARNING, logger="coalition.node.features.conversions"):
        assert a.conv.record_answers(B, forgeries) == set()
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == len(forgeries)
    assert a.conv.status("alice", view.id).status == "pending"
    assert entry_kinds(a.service)["convert-complete"] == 0
    assert a.conv.record_answers(B, [genuine]) == {view.id}
    assert a.conv.status("alice", view.id).status == "completed"
    assert_consistent(c)


def test_restarted_node_resumes_its_outbox(make: Factory) -> None:
    c = make(start_features=False)
    a = c[A]
    views = [a.conv.convert("alice", B, "bob", 1000, idempotency_key=f"r-{n}") for n in range(2)]
    assert a.conv.outbox.pending() == 2
    a = c.restart(A)  # a new service, inbox, server and outbox on the same database
    for view in views:
        assert settled(a, view).status == "completed"
    assert a.conv.outbox.pending() == 0
    assert spendable(a, "alice") == 8000 and spendable(c[B], "bob") == 2 * CREDIT
    # The restarted node keeps answering: a new conversion goes through at once.
    assert settled(a, a.conv.convert("alice", B, "bob", 1000, idempotency_key="r-2")).status == (
        "completed"
    )
    assert_consistent(c)


def test_batches_of_at_most_500_per_call(make: Factory) -> None:
    c = make(start_features=False, agreement={"min_points": 1, "daily_cap_points": 10_000})
    a, b = c[A], c[B]
    views = [a.conv.convert("alice", B, "bob", 10, idempotency_key=f"b-{n}") for n in range(520)]
    assert a.client is not None
    sizes: list[tuple[str, int]] = []
    call = a.client.call

    def counting(to: str, kind: str, body: JsonObject, timeout: float = 5.0) -> Any:
        conversions = body.get("conversions")
        assert isinstance(conversions, list)
        sizes.append((kind, len(conversions)))
        return call(to, kind, body, timeout)

    a.client.call = counting  # type: ignore[method-assign]
    a.conv.outbox.run_once()
    assert sizes == [("convert", 500), ("convert", 20)]
    assert {a.conv.status("alice", v.id).status for v in views} == {"completed"}
    assert entry_kinds(b.service)["convert-in"] == 520
    assert spendable(b, "bob") == 520 * 13  # 10 points, 1 fee: 9 net, 13.5 rounds down
    assert spendable(a, "alice") == 10_000 - 5200
    assert_consistent(c)


def test_member_api_rest_and_grpc(
    make: Factory, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    c = make()
    a = c[A]
    app = member_app(a.node, authenticator)
    alice = {"Authorization": f"Bearer {api_keys['member']}"}
    with TestClient(app) as http:
        body = {"to_program": B, "to_member_id": "bob", "amount": 1000}
        made = http.post(
            "/v1/members/alice/conversions", json=body, headers={**alice, "Idempotency-Key": "k1"}
        )
        assert made.status_code == 201, made.text
        conversion = made.json()
        assert (conversion["credit"], conversion["status"]) == (CREDIT, "pending")
        again = http.post(
            "/v1/members/alice/conversions", json=body, headers={**alice, "Idempotency-Key": "k1"}
        )
        assert again.json()["id"] == conversion["id"]
        view = a.conv.status("alice", conversion["id"])
        settled(a, view)
        got = http.get(f"/v1/members/alice/conversions/{conversion['id']}", headers=alice)
        assert got.json()["status"] == "completed"
        quote = http.get(
            "/v1/members/alice/conversions/quote",
            params={"to_program": B, "amount": 2000},
            headers=alice,
        )
        assert quote.status_code == 200, quote.text
        assert (quote.json()["credit"], quote.json()["rate"]) == (2970, [3, 2])
        # Another member's key, no key, bad input, unknown ids.
        assert (
            http.get(f"/v1/members/bob/conversions/{conversion['id']}", headers=alice).status_code
            == 403
        )
        assert http.post("/v1/members/alice/conversions", json=body).status_code == 401
        missing_key = http.post("/v1/members/alice/conversions", json=body, headers=alice)
        assert missing_key.status_code == 400
        too_small = http.post(
            "/v1/members/alice/conversions",
            json=dict(body, amount=5),
            headers={**alice, "Idempotency-Key": "k2"},
        )
        assert too_small.status_code == 400 and too_small.json()["error"] == "invalid_argument"
        no_agreement = http.get(
            "/v1/members/alice/conversions/quote",
            params={"to_program": C, "amount": 100},
            headers=alice,
        )
        assert no_agreement.status_code == 404  # beanhouse is not in this coalition
        assert http.get("/v1/members/alice/conversions/nope", headers=alice).status_code == 404

    servers = serve_member_api(a.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
    port = servers.grpc_port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = conversions_pb2_grpc.ConversionsStub(channel)
            meta = (("authorization", f"Bearer {api_keys['member']}"),)
            made_rpc = stub.Convert(
                conversions_pb2.ConvertRequest(
                    member_id="alice",
                    to_program=B,
                    to_member_id="bob",
                    amount=2000,
                    idempotency_key="g1",
                ),
                metadata=meta,
            )
            assert (made_rpc.credit, made_rpc.status) == (2970, "pending")
            settled(a, a.conv.status("alice", made_rpc.id))
            got_rpc = stub.GetConversion(
                conversions_pb2.GetConversionRequest(member_id="alice", conversion_id=made_rpc.id),
                metadata=meta,
            )
            assert got_rpc.status == "completed" and got_rpc.final_entry
            quoted = stub.Quote(
                conversions_pb2.QuoteRequest(member_id="alice", to_program=B, amount=1000),
                metadata=meta,
            )
            assert (quoted.credit, quoted.rate_num, quoted.rate_den) == (CREDIT, 3, 2)
            with pytest.raises(grpc.RpcError) as failed:
                stub.Convert(
                    conversions_pb2.ConvertRequest(
                        member_id="alice",
                        to_program=B,
                        to_member_id="bob",
                        amount=99_000,
                        idempotency_key="g2",
                    ),
                    metadata=meta,
                )
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.RpcError) as denied:
                stub.GetConversion(
                    conversions_pb2.GetConversionRequest(
                        member_id="bob", conversion_id=made_rpc.id
                    ),
                    metadata=meta,
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        servers.stop(0)
    assert_consistent(c)


def test_target_refuses_a_convert_out_dated_in_the_future(make: Factory) -> None:
    """A convert-out is sent after it is written: B rejects one dated later than its clock
    allows (it would pick an agreement version or settlement period not yet in force)."""
    c = make(start_features=False)
    a, b = c[A], c[B]
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="future")
    [out] = ledger_entries(a.service, "convert-out")
    future = dict(out, at=format_time(datetime.now(UTC) + timedelta(days=1)))
    assert a.client is not None
    _, reply = a.client.call(
        B, "convert", {"conversions": [{"out_entry": future, "to_member_id": "bob"}]}
    )
    [answer] = reply["receipts"]  # type: ignore[misc]
    body = open_message(SignedMessage.from_json(answer), c.manifest.public_key).body
    assert body["status"] == "rejected" and "after now" in str(body["reason"])
    assert entry_kinds(b.service)["convert-in"] == 0 and spendable(b, "bob") == 0
    assert a.conv.record_answers(B, [answer]) == {view.id}  # B's signed rejection: refund
    assert (a.conv.status("alice", view.id).status, spendable(a, "alice")) == ("refunded", 10_000)
    assert_consistent(c)


def test_one_idempotency_key_makes_one_conversion_even_concurrently(make: Factory) -> None:
    c = make()
    a, b = c[A], c[B]
    with futures.ThreadPoolExecutor(8) as pool:
        views = list(
            pool.map(
                lambda _: a.conv.convert("alice", B, "bob", 1000, idempotency_key="same"),
                range(8),
            )
        )
    assert len({v.id for v in views}) == 1
    with pytest.raises(CoalitionError, match="different request"):
        a.conv.convert("alice", B, "bob", 999, idempotency_key="same")
    assert settled(a, views[0]).status == "completed"
    assert entry_kinds(a.service)["convert-out"] == 1 and entry_kinds(b.service)["convert-in"] == 1
    assert spendable(a, "alice") == 9000 and spendable(b, "bob") == CREDIT
    assert_consistent(c)


class _NoLimits:
    """A's view of the manifest with no credit limits (so only B's own check runs)."""

    def __init__(self, manifest: Any) -> None:
        self._manifest = manifest

    def credit_limit(self, creditor: str, debtor: str) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manifest, name)


def test_target_enforces_its_credit_limit_within_one_batch(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = make(start_features=False, credit_limits={(B, A): 2000})
    a, b = c[A], c[B]
    monkeypatch.setattr(a.conv, "manifest", _NoLimits(c.manifest))
    views = [a.conv.convert("alice", B, "bob", 1000, idempotency_key=f"bl-{n}") for n in range(3)]
    a.conv.outbox.run_once()  # one convert message carrying the three
    done = [a.conv.status("alice", v.id) for v in views]
    assert [d.status for d in done] == ["completed", "completed", "refunded"]
    assert "the credit limit of" in str(done[2].reason)
    assert spendable(b, "bob") == 2 * CREDIT and spendable(a, "alice") == 8000
    assert unsettled_here(b, A, B, in_flight=False) == 1980
    assert_consistent(c)


def test_concurrent_conversions_never_pass_the_credit_limit(make: Factory) -> None:
    """Both checks run in the writer's transaction on its own data: conversions racing in
    one group commit see each other's amounts."""
    c = make(credit_limits={(B, A): 2000})
    a = c[A]
    with futures.ThreadPoolExecutor(6) as pool:
        found = list(
            pool.map(
                lambda n: _attempt(
                    lambda: a.conv.convert("alice", B, "bob", 1000, idempotency_key=f"cr-{n}")
                ),
                range(6),
            )
        )
    made = [v for v in found if isinstance(v, ConversionView)]
    refused = [e for e in found if isinstance(e, CoalitionError)]
    assert len(made) == 2 and len(refused) == 4
    assert all(isinstance(e, FailedPrecondition) and "credit limit" in str(e) for e in refused)
    for view in made:
        assert settled(a, view).status == "completed"
    assert spendable(a, "alice") == 8000 and spendable(c[B], "bob") == 2 * CREDIT
    assert_consistent(c)


def _attempt(call: Callable[[], ConversionView]) -> ConversionView | CoalitionError:
    try:
        return call()
    except CoalitionError as exc:
        return exc


def test_a_failed_call_defers_the_rest_of_the_pass(make: Factory) -> None:
    """When the abort call fails, the pass does not go on to send to the same partner
    (regression: it made a second failing call, each one up to the call timeout)."""
    c = make(start_features=False, abort_after_s=1.0)
    a, b = c[A], c[B]
    b.stop_partner_server()
    old = a.conv.convert("alice", B, "bob", 1000, idempotency_key="d-old")
    threading.Event().wait(1.1)
    new = a.conv.convert("alice", B, "bob", 1000, idempotency_key="d-new")
    assert a.client is not None
    kinds: list[str] = []
    call = a.client.call

    def counting(to: str, kind: str, body: JsonObject, timeout: float = 5.0) -> Any:
        kinds.append(kind)
        return call(to, kind, body, timeout)

    a.client.call = counting  # type: ignore[method-assign]
    a.conv.outbox.run_once()
    assert kinds == ["abort"]
    b.start_partner_server()

    def drained() -> bool:
        a.conv.outbox.run_once()  # rows come due after their backoff
        return outbox_rows(a) == []

    wait_for(drained, 20, "the outbox to drain")
    assert a.conv.status("alice", old.id).status == "refunded"
    assert a.conv.status("alice", new.id).status in ("completed", "refunded")
    assert_consistent(c)


def test_a_conversion_is_claimed_by_its_writer_and_a_foreign_claim_waits_for_its_lapse(
    make: Factory,
) -> None:
    """Outbox claims (issue 10, item 3): the convert-out's transaction claims the row for
    the process that wrote it; a row another holder claims is left alone until the claim
    lapses, then the sweep takes it and delivers it once."""
    c = make(start_features=False)
    a = c[A]
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="claim-1")
    (row,) = outbox_rows(a)
    assert row.claimed_by == a.conv.outbox.holder
    assert row.claim_until == row.queued_at + a.conv.outbox.claim_us
    far = row.queued_at + 3_600_000_000

    def claim(until: int) -> None:
        with a.service.sequencer.engine.begin() as conn:
            conn.execute(outbox.update().values(claimed_by="elsewhere:1:gone", claim_until=until))

    claim(far)
    a.conv.outbox.run_once()
    assert a.conv.status("alice", view.id).status == "pending"
    assert [r.claimed_by for r in outbox_rows(a)] == ["elsewhere:1:gone"]
    claim(row.queued_at)  # lapsed
    a.conv.outbox.run_once()
    assert a.conv.status("alice", view.id).status == "completed"
    assert outbox_rows(a) == []
    assert entry_kinds(c[B].service)["convert-in"] == 1
    assert_consistent(c)


def test_a_stopping_outbox_gives_its_claims_up(make: Factory) -> None:
    """A clean stop releases this process's claims (the lease holder takes them at once
    instead of after the lapse); the rows stay queued and are delivered later."""
    c = make()
    a, b = c[A], c[B]
    b.stop_partner_server()
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="release-1")
    wait_for(lambda: outbox_rows(a)[0].attempts >= 1, 10, "a failed delivery attempt")
    assert outbox_rows(a)[0].claimed_by == a.conv.outbox.holder
    a.conv.outbox.stop()
    (row,) = outbox_rows(a)
    assert row.claimed_by is None and row.claim_until is None
    b.start_partner_server()
    a.conv.outbox.start()
    assert settled(a, view).status == "completed"
    assert_consistent(c)


def test_a_repeated_convert_answers_200_replayed_over_rest_and_grpc(
    make: Factory, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    """Issue 11, class 10: the replay convention of points writes (201 first, then 200
    with ``replayed: true``; gRPC's ``replayed``), for conversions. Also class 7 for every
    coalition service: bytes that are no protobuf message are INVALID_ARGUMENT."""
    c = make()
    a = c[A]
    servers = serve_member_api(a.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
    alice = {"Authorization": f"Bearer {api_keys['member']}", "Idempotency-Key": "rk"}
    meta = (("authorization", f"Bearer {api_keys['member']}"),)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{servers.http_port}", timeout=30) as http:
            body = {"to_program": B, "to_member_id": "bob", "amount": 1000}
            first = http.post("/v1/members/alice/conversions", json=body, headers=alice)
            assert first.status_code == 201, first.text
            assert first.json()["replayed"] is False
            again = http.post("/v1/members/alice/conversions", json=body, headers=alice)
            assert again.status_code == 200, again.text
            assert again.json()["replayed"] is True
            assert again.json()["id"] == first.json()["id"]
            read = http.get(f"/v1/members/alice/conversions/{first.json()['id']}", headers=alice)
            assert read.json()["replayed"] is False
        with grpc.insecure_channel(f"127.0.0.1:{servers.grpc_port}") as channel:
            stub = conversions_pb2_grpc.ConversionsStub(channel)
            request = conversions_pb2.ConvertRequest(
                member_id="alice", to_program=B, to_member_id="bob", amount=500,
                idempotency_key="rg",
            )  # fmt: skip
            made = stub.Convert(request, metadata=meta)
            replayed = stub.Convert(request, metadata=meta)
            assert (made.replayed, replayed.replayed, replayed.id) == (False, True, made.id)
            for method in (
                "/coalition.v1.Conversions/Convert",
                "/coalition.v1.Agreements/ProposeAgreement",
                "/coalition.v1.PartnerRedemptions/Authorize",
                "/coalition.v1.Settlement/ProposeStatement",
            ):
                with pytest.raises(grpc.RpcError) as failed:
                    channel.unary_unary(method)(b"\xff\xff\xff\xff", metadata=meta, timeout=10)
                assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT, method
            agreements = conversions_pb2_grpc.AgreementsStub(channel)
            operator = (("authorization", f"Bearer {api_keys['operator']}"),)
            for document in (b'{"rate": [1, 1], "rate": [9, 1]}', b'{"fee": NaN}'):
                with pytest.raises(grpc.RpcError) as failed:  # the one parser, as over REST
                    agreements.ProposeAgreement(
                        conversions_pb2.ProposeAgreementRequest(agreement_json=document),
                        metadata=operator,
                    )
                assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "duplicate object key" in str(failed.value.details()) or "NaN" in str(
                    failed.value.details()
                )
    finally:
        servers.stop(0)
    settled(a, a.conv.status("alice", made.id))
    assert_consistent(c)


def test_conversion_keys_are_the_callers_and_refusals_name_no_server_path(
    make: Factory, authenticator: Authenticator, api_keys: dict[str, str], tmp_path: Path
) -> None:
    """Issue 11, classes 5 and 9 for conversions, over REST and gRPC: the key Alice used
    is not the operator's (each replays its own, conflicts only with its own), and a
    conversion to a program the coalition does not have names that program and nothing
    of the server (it gave the manifest's file path)."""
    c = make()
    a = c[A]
    servers = serve_member_api(a.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
    bearer = {role: f"Bearer {secret}" for role, secret in api_keys.items()}
    body = {"to_program": B, "to_member_id": "bob", "amount": 1000}
    made: list[str] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{servers.http_port}", timeout=30) as http:

            def convert(role: str, amount: int, key: str = "ck") -> httpx.Response:
                headers = {"Authorization": bearer[role], "Idempotency-Key": key}
                payload = dict(body, amount=amount)
                return http.post("/v1/members/alice/conversions", json=payload, headers=headers)

            mine, theirs = convert("member", 1000), convert("operator", 500)
            assert (mine.status_code, theirs.status_code) == (201, 201), theirs.text
            assert mine.json()["id"] != theirs.json()["id"]
            assert convert("member", 1000).json() == dict(mine.json(), replayed=True)
            assert convert("operator", 500).json()["id"] == theirs.json()["id"]
            conflict = convert("member", 700)
            assert conflict.status_code == 409 and "ck" in conflict.json()["message"]
            made += [mine.json()["id"], theirs.json()["id"]]
            nowhere = http.post(
                "/v1/members/alice/conversions",
                json=dict(body, to_program="nowhere"),
                headers={"Authorization": bearer["member"], "Idempotency-Key": "cn"},
            )
            quote = http.get(
                "/v1/members/alice/conversions/quote",
                params={"to_program": "nowhere", "amount": 100},
                headers={"Authorization": bearer["member"]},
            )
            for refused in (nowhere, quote):
                assert refused.status_code == 404, refused.text
                message = refused.json()["message"]
                assert message == "'nowhere' is not a partner of this coalition"
        with grpc.insecure_channel(f"127.0.0.1:{servers.grpc_port}") as channel:
            stub = conversions_pb2_grpc.ConversionsStub(channel)

            def rpc(role: str, amount: int, to: str = B) -> conversions_pb2.Conversion:
                request = conversions_pb2.ConvertRequest(
                    member_id="alice", to_program=to, to_member_id="bob", amount=amount,
                    idempotency_key="gk",
                )  # fmt: skip
                reply: conversions_pb2.Conversion = stub.Convert(
                    request, metadata=(("authorization", bearer[role]),), timeout=30
                )
                return reply

            first, other = rpc("member", 800), rpc("operator", 600)
            assert (first.replayed, other.replayed) == (False, False) and first.id != other.id
            assert (rpc("member", 800).replayed, rpc("operator", 600).id) == (True, other.id)
            made += [first.id, other.id]
            with pytest.raises(grpc.RpcError) as failed:
                rpc("member", 100, to="nowhere")
            assert failed.value.code() is grpc.StatusCode.NOT_FOUND
            details = str(failed.value.details())
            assert details == "'nowhere' is not a partner of this coalition"
            assert str(tmp_path) not in details
    finally:
        servers.stop(0)
    for conversion_id in made:
        assert settled(a, a.conv.status("alice", conversion_id)).status == "completed"
    assert spendable(a, "alice") == 10_000 - 1000 - 500 - 800 - 600
    assert_consistent(c)
