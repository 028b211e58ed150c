"""Settlement between real nodes (mutual-TLS gRPC, a database each, SQLite and PostgreSQL).

Three partners owe each other through captured redemptions and a conversion; pairwise
statements are agreed and recorded on both chains, equal to each chain's obligations; a
statement off by one minor unit is refused by the partner and recorded nowhere; netting
over the coalition gives the fewest payments, summing to zero, as CSV and JSON, over the
Python API, REST and gRPC.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.ledger.canonical import canonical_json, parse_json
from coalition.ledger.entries import format_time
from coalition.node.auth import Authenticator
from coalition.node.features.redemptions import Redemptions
from coalition.node.features.settlement import Settlement
from coalition.points.settlement import Owed
from coalition.points.statements import sign_statement, statement_parts, verify_signed_statement
from coalition.runtime.wiring import member_app, serve_member_api
from coalition.v1 import settlement_pb2, settlement_pb2_grpc
from coalition.verify.cross_chain import check_coalition
from coalition.verify.settlement_audit import audit_settlement

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

A, B, C = "skyair", "staybright", "beanhouse"


@dataclass
class Trio:
    coalition: RunningCoalition
    redemptions: dict[str, Redemptions]
    settlement: dict[str, Settlement]
    start: datetime

    def node(self, program: str) -> PartnerNode:
        return self.coalition[program]


@pytest.fixture
def trio(tmp_path: Path, database_url: str) -> Iterator[Trio]:
    """Three nodes, agreements A->B, B->C, C->A worth one minor unit per point, and a
    member with 1,000 points at each."""
    with ExitStack() as stack:
        urls = stack.enter_context(node_urls(database_url, tmp_path, (A, B, C)))
        coalition = stack.enter_context(coalition_nodes(tmp_path, urls))
        redemptions = {p: node.redemptions for p, node in coalition.nodes.items()}
        settlement = {p: node.settlement for p, node in coalition.nodes.items()}
        start = datetime.now(UTC) - timedelta(seconds=1)
        for issuer, spender in ((A, B), (B, C), (C, A)):
            coalition[issuer].agr.propose(
                agreement_doc(issuer, spender, rate=(1, 1), point_value=(1, 1))
            )
        for program, node in coalition.nodes.items():
            node.service.points.enroll(f"m-{program}", idempotency_key=f"enroll-{program}")
            node.service.points.adjust(
                f"m-{program}", 1000, "ops", "opening", idempotency_key=program
            )
        yield Trio(coalition, redemptions, settlement, start)


def spend(trio: Trio, issuer: str, at: str, amount: int) -> None:
    """A member of ``issuer`` spends ``amount`` points at ``at`` (captured)."""
    redemptions = trio.redemptions[at]
    held = redemptions.authorize(
        issuer, f"m-{issuer}", amount, f"ref-{amount}", 600, idempotency_key=f"{at}-{amount}"
    )
    assert redemptions.capture(held.hold_id).status == "captured"


def finished(trio: Trio) -> datetime:
    """An end for the period: now, once every node's clock is past it."""
    end = datetime.now(UTC)
    time.sleep(0.01)
    return end


def test_statement_agreed_on_both_chains_equals_obligations(trio: Trio) -> None:
    spend(trio, A, B, 300)  # A owes B 300
    spend(trio, A, B, 45)  # and 45 more
    with pytest.raises(FailedPrecondition, match="no rate agreement"):
        spend(trio, B, A, 70)  # no agreement staybright -> skyair: nothing owed
    end = finished(trio)
    sa, sb = trio.settlement[A], trio.settlement[B]
    assert sa.obligations(trio.start, end) == {(A, B): Owed(345, 2)}
    assert sb.obligations(trio.start, end) == {(A, B): Owed(345, 2)}
    assert sa.unsettled(A, B) == sb.unsettled(A, B) == 345

    signed = sa.propose(B, trio.start, end)
    parts = verify_signed_statement(signed, trio.coalition.manifest.public_key)
    assert parts.parties == (A, B)  # sorted
    assert parts.owed[(A, B)] == Owed(345, 2) and parts.owed[(B, A)] == Owed(0, 0)
    assert parts.currency == "EUR"
    for program in (A, B):
        (entry,) = ledger_entries(trio.node(program).service, "statement")
        assert entry["statement"] == signed and entry["account"] == "-"
        (view,) = trio.settlement[program].statements()
        assert view.signed == signed and view.entry_id == entry["id"]
    assert sa.unsettled(A, B) == sb.unsettled(A, B) == 0
    # Proposing the same period again returns the same statement and records nothing.
    assert sb.propose(A, trio.start, end) == signed
    assert entry_kinds(trio.node(A).service)["statement"] == 1
    # An overlapping period is refused.
    with pytest.raises(FailedPrecondition, match="already covers"):
        sa.propose(B, trio.start + timedelta(microseconds=1), end + timedelta(microseconds=1))
    # Later obligations are unsettled until the next statement.
    spend(trio, A, B, 10)
    assert sa.unsettled(A, B) == sb.unsettled(A, B) == 10


def test_statement_off_by_one_minor_unit_is_refused(trio: Trio) -> None:
    spend(trio, A, B, 300)
    end = finished(trio)
    sa = trio.settlement[A]
    node_a = trio.node(A)
    with node_a.service.sequencer.read() as conn:
        doc = sa._statement_for(conn, tuple(sorted((A, B))), trio.start, end)  # type: ignore[arg-type]
    owed = dict(doc["owed"])  # type: ignore[arg-type]
    owed[f"{A}->{B}"] = 299
    forged = dict(doc, owed=owed)
    statement_parts(forged)  # well formed: only the amount is wrong
    signature = sign_statement(forged, node_a.key)
    assert node_a.client is not None
    with pytest.raises(FailedPrecondition, match=f"owed {A}->{B}: 300 here, 299 proposed"):
        node_a.client.call(B, "statement-propose", {"statement": forged, "signature": signature})
    # A statement signed by someone else is refused too (VerificationError is
    # INVALID_ARGUMENT on the wire).
    with pytest.raises(InvalidArgument, match="does not verify"):
        node_a.client.call(
            B,
            "statement-propose",
            {"statement": doc, "signature": sign_statement(doc, trio.node(C).key)},
        )
    for program in (A, B):
        assert entry_kinds(trio.node(program).service)["statement"] == 0
        assert trio.settlement[program].statements() == []


def test_a_statement_recorded_by_the_partner_alone_is_adopted_on_the_next_proposal(
    trio: Trio,
) -> None:
    """Found by the simulator (scripts/simulate.py --seed 1 at the time): a proposal the
    partner countersigned and recorded, its reply lost, left the statement on one chain
    only, and every later proposal of an overlapping period was refused by the partner,
    so the chains could not be levelled. Now the partner answers with its statement, the
    proposer records it and refuses the period naming it."""
    spend(trio, A, B, 120)
    end = finished(trio)
    sa, sb = trio.settlement[A], trio.settlement[B]
    with trio.node(B).service.sequencer.read() as conn:
        doc = sb._statement_for(conn, (A, B), trio.start, end)
    signature = sign_statement(doc, trio.node(B).key)
    # The proposal B sent reaches A, which countersigns and records it; the reply is lost.
    kind, reply = sa._on_propose(B, {"statement": doc, "signature": signature})
    assert kind == "statement-propose-reply"
    assert entry_kinds(trio.node(A).service)["statement"] == 1
    assert entry_kinds(trio.node(B).service)["statement"] == 0

    later = finished(trio)
    with pytest.raises(FailedPrecondition, match="recorded it alone"):
        # Overlaps the statement only A recorded, which ends after it (so the partner's
        # list of the statements before the period's end leaves it out).
        sb.propose(A, trio.start, end - timedelta(microseconds=1))
    for program in (A, B):
        (entry,) = ledger_entries(trio.node(program).service, "statement")
        assert entry["statement"] == reply["signed"]
    chains = {p: ledger_entries(trio.node(p).service) for p in (A, B, C)}
    assert audit_settlement(chains, trio.coalition.manifest.public_key).ok
    # The period after it is agreed as usual.
    agreed = sb.propose(A, end, later)
    assert statement_parts(agreed["statement"]).start == end


def test_a_statement_recorded_by_the_partner_alone_is_recorded_before_a_later_period(
    trio: Trio,
) -> None:
    """Found by the simulator (scripts/simulate.py --seed 39 at the time): the proposer of
    a statement its partner recorded alone went on with the next period, which overlaps
    nothing, and its chain kept a gap for good. A proposal now first records what the
    partner lists of the pair's statements that this node lacks."""
    spend(trio, A, B, 80)
    end = finished(trio)
    sa, sb = trio.settlement[A], trio.settlement[B]
    with trio.node(B).service.sequencer.read() as conn:
        doc = sb._statement_for(conn, (A, B), trio.start, end)
    signature = sign_statement(doc, trio.node(B).key)
    _, reply = sa._on_propose(B, {"statement": doc, "signature": signature})  # reply lost
    spend(trio, A, B, 15)
    later = finished(trio)
    agreed = sb.propose(A, end, later)  # the next period: it overlaps nothing
    assert statement_parts(agreed["statement"]).start == end
    both = [canonical_json(reply["signed"]), canonical_json(agreed)]
    for program in (A, B):
        entries = ledger_entries(trio.node(program).service, "statement")
        assert sorted(canonical_json(e["statement"]) for e in entries) == sorted(both), program
    chains = {p: ledger_entries(trio.node(p).service) for p in (A, B, C)}
    assert audit_settlement(chains, trio.coalition.manifest.public_key).ok
    assert sb.reconcile(A, trio.start, later) == 0  # nothing left to level


def test_a_statement_recorded_alone_reaches_the_partner_when_its_holder_proposes_next(
    trio: Trio,
) -> None:
    """Found by the simulator (scripts/simulate.py --seed 18 at the time): when the node
    that holds a statement alone is the one to propose the next period, the partner
    lacking it never asked, and kept the gap. The proposal now proposes again what the
    partner does not list."""
    spend(trio, A, B, 60)
    end = finished(trio)
    sa, sb = trio.settlement[A], trio.settlement[B]
    with trio.node(B).service.sequencer.read() as conn:
        doc = sb._statement_for(conn, (A, B), trio.start, end)
    signature = sign_statement(doc, trio.node(B).key)
    _, reply = sa._on_propose(B, {"statement": doc, "signature": signature})  # reply lost
    later = finished(trio)
    agreed = sa.propose(B, end, later)  # A holds the first statement alone, and proposes
    both = sorted([canonical_json(reply["signed"]), canonical_json(agreed)])
    for program in (A, B):
        entries = ledger_entries(trio.node(program).service, "statement")
        assert sorted(canonical_json(e["statement"]) for e in entries) == both, program
    chains = {p: ledger_entries(trio.node(p).service) for p in (A, B, C)}
    assert audit_settlement(chains, trio.coalition.manifest.public_key).ok


def test_period_must_be_over_and_conversions_settled(trio: Trio) -> None:
    sa = trio.settlement[A]
    with pytest.raises(FailedPrecondition, match="finished periods"):
        sa.propose(B, trio.start, datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(InvalidArgument):
        sa.propose(B, trio.start, trio.start)
    with pytest.raises(InvalidArgument):
        sa.propose(A, trio.start, finished(trio))
    # A conversion still in flight blocks a statement of its period.
    node_a, node_b = trio.node(A), trio.node(B)
    node_b.service.points.enroll("m-at-b", idempotency_key="enroll-m-at-b")
    node_b.stop_partner_server()
    conversion = node_a.conv.convert(f"m-{A}", B, "m-at-b", 200, idempotency_key="conv-1")
    assert conversion.status == "pending"
    end = finished(trio)
    with pytest.raises(FailedPrecondition, match="pending"):
        sa.propose(B, trio.start, end)
    node_b.start_partner_server()
    wait_for(
        lambda: node_a.conv.status(f"m-{A}", conversion.id).status == "completed",
        what="the conversion to complete",
    )
    signed = sa.propose(B, trio.start, end)
    parts = statement_parts(signed["statement"])
    # 200 points, 1 % fee (2), net 198 at one minor unit per point.
    assert parts.owed[(A, B)] == Owed(198, 1)
    assert trio.settlement[B].obligations(trio.start, end) == {(A, B): Owed(198, 1)}


def three_party_statements(trio: Trio) -> datetime:
    """A owes B 100, B owes C 100, C owes A 50; every pair's statement agreed."""
    spend(trio, A, B, 100)
    spend(trio, B, C, 100)
    spend(trio, C, A, 50)
    end = finished(trio)
    trio.settlement[A].propose(B, trio.start, end)
    trio.settlement[B].propose(C, trio.start, end)
    trio.settlement[C].propose(A, trio.start, end)
    return end


def test_coalition_netting_gives_the_fewest_payments(trio: Trio) -> None:
    end = three_party_statements(trio)
    for program in (A, B, C):
        view = trio.settlement[program].coalition_netting(trio.start, end + timedelta(seconds=1))
        assert view.netting.positions == {A: -50, B: 0, C: 50}
        assert sum(view.netting.positions.values()) == 0
        assert [(p.payer, p.payee, p.amount) for p in view.netting.payments] == [(A, C, 50)]
        assert len(view.statements) == 3 and view.unreachable == []
        assert view.to_csv() == f"payer,payee,amount\n{A},{C},50\n"
        doc = view.to_json()
        assert doc["payments"] == [{"payer": A, "payee": C, "amount": 50}]
        assert doc["positions"] == {A: -50, B: 0, C: 50}
        assert doc["currency"] == "EUR"
    chains = {p: ledger_entries(trio.node(p).service) for p in (A, B, C)}
    assert check_coalition(chains, trio.coalition.manifest.public_key) == []
    # With C down, A still nets every statement: each is recorded on two chains.
    trio.node(C).stop_partner_server()
    view = trio.settlement[A].coalition_netting(trio.start, end + timedelta(seconds=1))
    assert view.unreachable == [C] and len(view.statements) == 3
    assert [(p.payer, p.payee, p.amount) for p in view.netting.payments] == [(A, C, 50)]
    # A period holding no statement nets to nothing.
    empty = trio.settlement[A].coalition_netting(end + timedelta(days=1), end + timedelta(days=2))
    assert empty.netting.payments == [] and empty.statements == []


def test_rest_and_grpc(trio: Trio, authenticator: Authenticator, api_keys: dict[str, str]) -> None:
    node_b = trio.node(B)
    app = member_app(node_b.node, authenticator)
    op = {"Authorization": f"Bearer {api_keys['operator']}"}
    auditor = {"Authorization": f"Bearer {api_keys['auditor']}"}
    member = {"Authorization": f"Bearer {api_keys['member']}"}
    body = {"program": A, "member_id": f"m-{A}", "amount": 120, "reference": "folio-9"}
    with TestClient(app) as http:
        assert http.post("/v1/partner-redemptions", json=body, headers=member).status_code == 403
        missing_key = http.post("/v1/partner-redemptions", json=body, headers=op)
        assert missing_key.status_code == 400
        made = http.post(
            "/v1/partner-redemptions", json=body, headers=op | {"Idempotency-Key": "rest-1"}
        )
        assert made.status_code == 201, made.text
        hold_id = made.json()["hold_id"]
        assert made.json()["status"] == "authorized"
        assert http.get(f"/v1/partner-redemptions/{hold_id}", headers=op).json() == made.json()
        captured = http.post(f"/v1/partner-redemptions/{hold_id}/capture", headers=op)
        assert captured.status_code == 200 and captured.json()["value_minor"] == 120
        refused = http.post(f"/v1/partner-redemptions/{hold_id}/void", headers=op)
        assert refused.status_code == 409 and refused.json()["error"] == "failed_precondition"
        unknown = http.get(f"/v1/partner-redemptions/{'0' * 32}", headers=op)
        assert unknown.status_code == 404
        assert http.post("/v1/jobs/hold-expiry", headers=op).json() == {"released": 0}

        end = format_time(finished(trio))
        period = {"partner": A, "start": format_time(trio.start), "end": end}
        assert (
            http.post("/v1/settlement/statements", json=period, headers=auditor).status_code == 403
        )
        proposed = http.post("/v1/settlement/statements", json=period, headers=op)
        assert proposed.status_code == 201, proposed.text
        assert statement_parts(proposed.json()["statement"]).owed[(A, B)] == Owed(120, 1)
        listed = http.get("/v1/settlement/statements", headers=auditor).json()
        assert [s["signed"] for s in listed] == [proposed.json()]
        later = format_time(datetime.now(UTC) + timedelta(seconds=1))
        query = {"start": format_time(trio.start), "end": later}
        netting = http.get("/v1/settlement/netting", params=query, headers=auditor)
        assert netting.status_code == 200
        assert netting.json()["payments"] == [{"payer": A, "payee": B, "amount": 120}]
        csv = http.get("/v1/settlement/netting", params=query | {"format": "csv"}, headers=op)
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text == f"payer,payee,amount\n{A},{B},120\n"
        bad = http.get("/v1/settlement/netting", params={"start": "x", "end": later}, headers=op)
        assert bad.status_code == 400

    servers = serve_member_api(node_b.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
    port = servers.grpc_port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            meta = (("authorization", f"Bearer {api_keys['operator']}"),)
            redemptions = settlement_pb2_grpc.PartnerRedemptionsStub(channel)
            held = redemptions.Authorize(
                settlement_pb2.AuthorizeRedemptionRequest(
                    program=A,
                    member_id=f"m-{A}",
                    amount=30,
                    reference="folio-10",
                    expires_in_s=600,
                    idempotency_key="grpc-1",
                ),
                metadata=meta,
            )
            assert held.status == "authorized" and parse_json(held.authorization_json)
            ref = settlement_pb2.RedemptionRef(hold_id=held.hold_id)
            voided = redemptions.Void(ref, metadata=meta)
            assert voided.status == "voided" and not voided.HasField("value_minor")
            assert redemptions.GetRedemption(ref, metadata=meta) == voided
            with pytest.raises(grpc.RpcError) as refused:
                redemptions.Capture(ref, metadata=meta)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            settlement = settlement_pb2_grpc.SettlementStub(channel)
            listed = settlement.ListStatements(
                settlement_pb2.ListStatementsRequest(partner=A), metadata=meta
            )
            assert len(listed.statements) == 1 and list(listed.statements[0].parties) == sorted(
                (A, B)
            )
            report = settlement.GetNetting(
                settlement_pb2.GetNettingRequest(start=format_time(trio.start), end=later),
                metadata=meta,
            )
            assert [(p.payer, p.payee, p.amount) for p in report.payments] == [(A, B, 120)]
            assert report.csv == f"payer,payee,amount\n{A},{B},120\n"
            assert parse_json(report.json)["statements"] == list(report.statements)
            made = settlement.ProposeStatement(
                settlement_pb2.ProposeStatementRequest(
                    partner=C, start=format_time(trio.start), end=end
                ),
                metadata=meta,
            )
            assert list(made.parties) == [C, B] and made.currency == "EUR"
            signed = parse_json(made.signed_json)
            (on_c,) = ledger_entries(trio.node(C).service, "statement")
            on_b = ledger_entries(node_b.service, "statement")[1]
            assert on_c["statement"] == on_b["statement"] == signed
            assert on_b["id"] == made.entry_id
            parts = verify_signed_statement(signed, trio.coalition.manifest.public_key)
            assert parts.owed == {(C, B): Owed(0, 0), (B, C): Owed(0, 0)}
            with pytest.raises(grpc.RpcError) as denied:
                settlement.GetNetting(
                    settlement_pb2.GetNettingRequest(start=format_time(trio.start), end=later),
                    metadata=(("authorization", f"Bearer {api_keys['member']}"),),
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        servers.stop(0)
