"""Rate agreements between real nodes (mutual-TLS gRPC, one database each, SQLite and
PostgreSQL): proposed, countersigned and recorded on both chains, or refused with
nothing recorded anywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.ledger.canonical import canonical_json, parse_json
from coalition.ledger.keys import SigningKey
from coalition.node.auth import Authenticator
from coalition.points.rates import (
    current_agreements,
    sign_agreement,
    signed_agreement,
    verify_signed_agreement,
)
from coalition.runtime.wiring import member_app, serve_member_api
from coalition.v1 import conversions_pb2, conversions_pb2_grpc

from support.coalition import (
    RunningCoalition,
    agreement_doc,
    coalition_nodes,
    entry_kinds,
    ledger_entries,
)
from support.databases import node_urls

Factory = Callable[..., RunningCoalition]


@pytest.fixture
def make(tmp_path: Path, database_url: str) -> Iterator[Factory]:
    """Start a coalition of real nodes (``programs``) on ``database_url``'s kind of store."""
    with ExitStack() as stack:

        def factory(
            programs: tuple[str, ...] = ("skyair", "staybright"), **kw: Any
        ) -> RunningCoalition:
            urls = stack.enter_context(node_urls(database_url, tmp_path, programs))
            return stack.enter_context(coalition_nodes(tmp_path, urls, **kw))

        yield factory


def test_proposal_is_countersigned_and_recorded_on_both_chains(make: Factory) -> None:
    c = make()
    a, b = c["skyair"], c["staybright"]
    doc = agreement_doc("skyair", "staybright")
    signed = a.agr.propose(doc)

    agreement = verify_signed_agreement(signed, c.manifest.public_key)
    assert (agreement.id, agreement.version) == ("skyair-staybright", 1)
    for node in (a, b):
        recorded = ledger_entries(node.service, "agreement")
        assert [entry["agreement"] for entry in recorded] == [signed]
        assert recorded[0]["account"] == "-"
        views = node.agr.list()
        assert [(v.id, v.version, v.in_force) for v in views] == [("skyair-staybright", 1, True)]
        usable = node.agr.usable("skyair", "staybright", datetime.now(UTC))
        assert usable == agreement
        assert node.agr.usable("staybright", "skyair", datetime.now(UTC)) is None

    # Idempotent by (id, version): the same proposal again records nothing more.
    assert a.agr.propose(doc) == signed
    assert entry_kinds(a.service)["agreement"] == entry_kinds(b.service)["agreement"] == 1
    # The same (id, version) with other terms is refused.
    changed = dict(doc, fee_bps=50)
    with pytest.raises(FailedPrecondition, match="other terms"):
        a.agr.propose(changed)


def test_counterparty_may_propose_and_higher_version_supersedes(make: Factory) -> None:
    c = make()
    a, b = c["skyair"], c["staybright"]
    b.agr.propose(agreement_doc("skyair", "staybright", proposed_by="staybright"))
    v2 = agreement_doc("skyair", "staybright", version=2, rate=(5, 4))
    a.agr.propose(v2)
    now = datetime.now(UTC)
    for node in (a, b):
        current = node.agr.usable("skyair", "staybright", now)
        assert current is not None and (current.version, current.rate_num) == (2, 5)
        assert [v.in_force for v in node.agr.list()] == [False, True]
    with pytest.raises(FailedPrecondition, match="higher version"):
        a.agr.propose(agreement_doc("skyair", "staybright", version=1, rate=(1, 1)))


def test_gaining_cycle_is_refused_by_proposer_and_counterparty(make: Factory) -> None:
    c = make(programs=("skyair", "staybright", "beanhouse"))
    a, b, h = c["skyair"], c["staybright"], c["beanhouse"]
    a.agr.propose(agreement_doc("skyair", "staybright", rate=(2, 1), fee_bps=0))
    b.agr.propose(agreement_doc("staybright", "beanhouse", rate=(1, 1), fee_bps=0))
    # beanhouse -> skyair at 1:2 closes the cycle at exactly 1: allowed.
    h.agr.propose(agreement_doc("beanhouse", "skyair", rate=(1, 2), fee_bps=0))
    # A second agreement giving 3:5 would make 1 point into 1.2 around the cycle.
    greedy = agreement_doc("beanhouse", "skyair", agreement_id="bh-sky-2", rate=(3, 5), fee_bps=0)
    before = {p: entry_kinds(n.service)["agreement"] for p, n in c.nodes.items()}
    with pytest.raises(FailedPrecondition, match=r"multiplies 1 point into 1\.2"):
        h.agr.propose(greedy)

    # A proposer that skips its own check is refused by the counterparty, which checks too.
    sig = sign_agreement(greedy, h.key)
    body = {"agreement": signed_agreement(greedy, {"beanhouse": sig})}
    assert h.client is not None
    with pytest.raises(FailedPrecondition, match="multiplies"):
        h.client.call("skyair", "agreement-propose", body)
    after = {p: entry_kinds(n.service)["agreement"] for p, n in c.nodes.items()}
    assert after == before


def test_expired_and_badly_signed_proposals_are_refused(make: Factory) -> None:
    c = make()
    a, b = c["skyair"], c["staybright"]
    past = datetime.now(UTC) - timedelta(days=30)
    expired = agreement_doc(
        "skyair", "staybright", valid_from=past, valid_until=past + timedelta(days=1)
    )
    with pytest.raises(FailedPrecondition, match="expired"):
        a.agr.propose(expired)
    assert a.client is not None
    sig = sign_agreement(expired, a.key)
    with pytest.raises(FailedPrecondition, match="expired"):
        a.client.call(
            "staybright",
            "agreement-propose",
            {"agreement": signed_agreement(expired, {"skyair": sig})},
        )

    doc = agreement_doc("skyair", "staybright")
    forged = sign_agreement(doc, SigningKey.generate())  # not skyair's key
    with pytest.raises(InvalidArgument, match="does not verify"):
        a.client.call(
            "staybright",
            "agreement-propose",
            {"agreement": signed_agreement(doc, {"skyair": forged})},
        )
    with pytest.raises(InvalidArgument, match="proposer's signature"):
        a.client.call("staybright", "agreement-propose", {"agreement": signed_agreement(doc, {})})
    # Someone else's agreement cannot be proposed in the name of its proposer.
    theirs = agreement_doc("skyair", "staybright", proposed_by="staybright")
    with pytest.raises(Exception, match="own agreements"):
        a.client.call(
            "staybright",
            "agreement-propose",
            {"agreement": signed_agreement(theirs, {"skyair": sign_agreement(theirs, a.key)})},
        )
    for node in (a, b):
        assert entry_kinds(node.service)["agreement"] == 0
        assert node.agr.list() == []


def test_operator_api_rest_and_grpc(
    make: Factory, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    c = make()
    a = c["skyair"]
    app = member_app(a.node, authenticator)
    op = {"Authorization": f"Bearer {api_keys['operator']}"}
    member = {"Authorization": f"Bearer {api_keys['member']}"}
    doc = agreement_doc("skyair", "staybright")
    with TestClient(app) as http:
        assert http.post("/v1/agreements", json=doc, headers=member).status_code == 403
        assert http.post("/v1/agreements", json=doc).status_code == 401
        reply = http.post("/v1/agreements", json=doc, headers=op)
        assert reply.status_code == 201, reply.text
        verify_signed_agreement(reply.json(), c.manifest.public_key)
        listed = http.get("/v1/agreements", headers=op).json()
        assert [(x["id"], x["version"], x["in_force"]) for x in listed] == [
            ("skyair-staybright", 1, True)
        ]
        bad = http.post("/v1/agreements", json=dict(doc, rate=[0, 1], version=2), headers=op)
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_argument"

    servers = serve_member_api(a.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
    port = servers.grpc_port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = conversions_pb2_grpc.AgreementsStub(channel)
            meta = (("authorization", f"Bearer {api_keys['operator']}"),)
            v2 = agreement_doc("skyair", "staybright", version=2)
            signed = stub.ProposeAgreement(
                conversions_pb2.ProposeAgreementRequest(agreement_json=canonical_json(v2)),
                metadata=meta,
            )
            assert parse_json(signed.signed_agreement_json)["agreement"] == v2
            listed = stub.ListAgreements(conversions_pb2.ListAgreementsRequest(), metadata=meta)
            assert [(x.version, x.in_force) for x in listed.agreements] == [(1, False), (2, True)]
            with pytest.raises(grpc.RpcError) as denied:
                stub.ListAgreements(
                    conversions_pb2.ListAgreementsRequest(),
                    metadata=(("authorization", f"Bearer {api_keys['member']}"),),
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        servers.stop(0)


def test_agreement_pages_have_no_gap_or_duplicate_and_say_which_is_in_force(
    make: Factory, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    """Pages of two split one agreement's versions (and one pair's rivals) over several
    pages; each page still says which is in force as the whole list decides it."""
    c = make()
    a = c["skyair"]
    for version in (1, 2, 3):
        a.agr.propose(agreement_doc("skyair", "staybright", version=version))
    a.agr.propose(agreement_doc("skyair", "staybright", agreement_id="sky-stay-alt"))
    a.agr.propose(agreement_doc("staybright", "skyair", rate=(2, 3), proposed_by="skyair"))
    with a.service.sequencer.read() as conn:
        recorded = a.agr.recorded(conn)
    in_force = {(x.id, x.version) for x in current_agreements(recorded, datetime.now(UTC)).values()}
    assert in_force == {("skyair-staybright", 3), ("staybright-skyair", 1)}
    whole = [(v.id, v.version, v.in_force) for v in a.agr.list()]
    assert sorted(whole) == sorted(
        (x.id, x.version, (x.id, x.version) in in_force) for x in recorded
    )

    op = {"Authorization": f"Bearer {api_keys['operator']}"}
    with TestClient(member_app(a.node, authenticator)) as http:
        walked, url = [], "/v1/agreements?limit=2"
        while url:
            reply = http.get(url, headers=op)
            assert reply.status_code == 200, reply.text
            walked += [(x["id"], x["version"], x["in_force"]) for x in reply.json()]
            link = reply.headers.get("link")
            url = link[1 : link.index(">")] if link else ""
        assert walked == whole
        assert http.get("/v1/agreements?after=x", headers=op).status_code == 400
        assert http.get("/v1/agreements?limit=0", headers=op).status_code in (400, 422)

    servers = serve_member_api(a.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{servers.grpc_port}") as channel:
            stub = conversions_pb2_grpc.AgreementsStub(channel)
            meta = (("authorization", f"Bearer {api_keys['operator']}"),)
            paged, token, pages = [], "", 0
            while True:
                request = conversions_pb2.ListAgreementsRequest(page_size=2, page_token=token)
                reply = stub.ListAgreements(request, metadata=meta)
                paged += [(x.id, x.version, x.in_force) for x in reply.agreements]
                pages, token = pages + 1, reply.next_page_token
                if not token:
                    break
            assert paged == whole and pages == 3
            request = conversions_pb2.ListAgreementsRequest(page_token="v1:x")
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListAgreements(request, metadata=meta)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        servers.stop(0)
