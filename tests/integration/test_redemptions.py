"""Cross-brand redemptions between real nodes (mutual-TLS gRPC, a database each, SQLite and
PostgreSQL): a member of skyair spends skyair points at staybright. Holds, captures and
releases land on skyair's chain with signed receipts, the capture's receipt on
staybright's; every refusal changes nothing on either side."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest

from coalition.audit.db_check import check_database
from coalition.errors import (
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    PartnerUnavailable,
    VerificationError,
)
from coalition.ledger.entries import entry_leaf_hash, parse_time
from coalition.ledger.envelope import SignedMessage, open_message
from coalition.node.auth import Authenticator
from coalition.node.features.redemptions import Redemptions
from coalition.points.replay import Replay
from coalition.runtime.wiring import serve_member_api
from coalition.store import redemptions as redemptions_store
from coalition.v1 import settlement_pb2, settlement_pb2_grpc
from coalition.verify.cross_chain import check_coalition

from support.coalition import (
    PartnerNode,
    RunningCoalition,
    agreement_doc,
    coalition_nodes,
    entry_kinds,
    ledger_entries,
)
from support.databases import node_urls

A, B = "skyair", "staybright"
T = TypeVar("T")
MEMBER = "alice"


@dataclass
class Pair:
    """Two running nodes: ``a`` issues the points, ``b`` asks (``ra``, ``rb``: their
    redemptions)."""

    coalition: RunningCoalition
    a: PartnerNode
    b: PartnerNode
    ra: Redemptions
    rb: Redemptions


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[Pair]:
    """skyair and staybright, an agreement skyair -> staybright worth 2/3 minor per point,
    and alice at skyair with 1,000 spendable points."""
    with ExitStack() as stack:
        urls = stack.enter_context(node_urls(database_url, tmp_path, (A, B)))
        coalition = stack.enter_context(coalition_nodes(tmp_path, urls, start_features=False))
        a, b = coalition[A], coalition[B]
        a.agr.propose(agreement_doc(A, B, point_value=(2, 3)))
        a.service.points.enroll(MEMBER, idempotency_key="enroll-alice")
        a.service.points.adjust(MEMBER, 1000, "ops", "opening balance", idempotency_key="adj-alice")
        yield Pair(coalition, a, b, a.redemptions, b.redemptions)


def balance(node: PartnerNode, member: str = MEMBER) -> tuple[int, int]:
    view = node.service.points.balance(member)
    return view.spendable, view.held


def open_receipt(pair: Pair, signed: dict[str, Any] | None) -> dict[str, Any]:
    """The body of a receipt skyair signed for staybright (verified with the manifest)."""
    assert signed is not None
    envelope = open_message(SignedMessage.from_json(signed), pair.coalition.manifest.public_key)
    assert (envelope.sender, envelope.to) == (A, B)
    return dict(envelope.body)


def replay(node: PartnerNode) -> Replay:
    """The node's whole chain replayed: the audit's view of balances and holds."""
    chain = Replay()
    for entry in ledger_entries(node.service):
        chain.apply(entry)
    return chain


def retry_until_reachable(call: Callable[[], T], timeout: float = 20.0) -> T:
    """``call()`` retried while the partner is unreachable (its channel reconnecting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except PartnerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def reconciled(pair: Pair) -> None:
    """Both chains pass the auditor's cross-chain checks (holds, captures, receipts)."""
    chains = {p: ledger_entries(pair.coalition[p].service) for p in (A, B)}
    assert check_coalition(chains, pair.coalition.manifest.public_key) == []
    for program in (A, B):  # and each node's tables (the flow totals too) equal its chain
        report = check_database(pair.coalition[program].url)
        assert report.ok, report.render()


def authorize(pair: Pair, amount: int = 300, key: str = "r-1", **kw: Any) -> Any:
    args: dict[str, Any] = {"expires_in_s": 600, "reference": "folio-1"} | kw
    return pair.rb.authorize(A, MEMBER, amount, idempotency_key=key, **args)


def test_authorize_and_capture_leave_receipts_on_both_chains(pair: Pair) -> None:
    held = authorize(pair)
    assert held.status == "authorized" and held.program == A and held.amount == 300
    assert balance(pair.a) == (700, 700)
    hold_entry = ledger_entries(pair.a.service, "hold")[0]
    assert hold_entry["hold"]["id"] == held.hold_id  # type: ignore[index]
    assert hold_entry["hold"]["partner"] == B  # type: ignore[index]
    receipt = open_receipt(pair, held.authorization)
    assert receipt["status"] == "held" and receipt["entry"] == hold_entry["id"]
    assert receipt["entry_hash"] == entry_leaf_hash(hold_entry).hex()
    assert receipt["agreement"] == {"id": "skyair-staybright", "version": 1}
    assert replay(pair.a).holds == {held.hold_id: 300}

    captured = pair.rb.capture(held.hold_id)
    assert captured.status == "captured"
    assert (captured.value_minor, captured.currency) == (200, "EUR")  # 300 * 2 / 3
    assert balance(pair.a) == (700, 700)  # the held points left for good
    capture_entry = ledger_entries(pair.a.service, "hold-capture")[0]
    assert capture_entry["value_minor"] == 200 and capture_entry["amount"] == 300
    signed = open_receipt(pair, captured.capture)
    assert signed["status"] == "captured" and signed["value_minor"] == 200
    assert signed["entry_hash"] == entry_leaf_hash(capture_entry).hex()

    (receipt_entry,) = ledger_entries(pair.b.service, "redemption-receipt")
    assert receipt_entry["id"] == captured.receipt_entry
    assert receipt_entry["account"] == "-"
    assert receipt_entry["hold"] == {"id": held.hold_id, "partner": A, "amount": 300}
    assert (receipt_entry["value_minor"], receipt_entry["currency"]) == (200, "EUR")
    assert receipt_entry["receipt"] == captured.capture
    assert receipt_entry["captured_at"] == signed["captured_at"]

    chain = replay(pair.a)
    assert chain.holds == {} and chain.captured == 300
    assert chain.supply() == 700
    replay(pair.b)  # staybright's chain replays too (the receipt changes no balance)
    reconciled(pair)


def test_capture_twice_gives_the_same_signed_answer(pair: Pair) -> None:
    held = authorize(pair)
    first = pair.rb.capture(held.hold_id)
    again = pair.rb.capture(held.hold_id)
    assert again == first
    # The issuer answers a repeated capture with the very same signed receipt.
    reply = pair.b.client.call(A, "hold-capture", {"hold": held.hold_id})  # type: ignore[union-attr]
    assert reply == ("hold-capture-reply", {"receipt": first.capture})
    assert entry_kinds(pair.a.service)["hold-capture"] == 1
    assert entry_kinds(pair.b.service)["redemption-receipt"] == 1
    assert balance(pair.a) == (700, 700)


def test_repeated_authorize_is_idempotent(pair: Pair) -> None:
    first = authorize(pair)
    again = authorize(pair)
    assert (first.replayed, again.replayed) == (False, True)
    assert again == replace(first, replayed=True)
    reply = pair.b.client.call(  # type: ignore[union-attr]
        A,
        "hold-authorize",
        {
            "hold": first.hold_id,
            "member_id": MEMBER,
            "amount": 300,
            "reference": "folio-1",
            "expires_in_s": 600,
        },
    )
    assert reply == ("hold-authorize-reply", {"receipt": first.authorization})
    assert entry_kinds(pair.a.service)["hold"] == 1
    assert balance(pair.a) == (700, 700)
    with pytest.raises(IdempotencyConflict):
        authorize(pair, amount=301)
    # The same hold id with other terms is refused by the issuer.
    with pytest.raises(FailedPrecondition, match="another request"):
        pair.b.client.call(  # type: ignore[union-attr]
            A,
            "hold-authorize",
            {
                "hold": first.hold_id,
                "member_id": MEMBER,
                "amount": 999,
                "reference": "folio-1",
                "expires_in_s": 600,
            },
        )
    assert balance(pair.a) == (700, 700)


def test_void_restores_the_points(pair: Pair) -> None:
    held = authorize(pair, amount=400)
    assert balance(pair.a) == (600, 600)
    voided = pair.rb.void(held.hold_id)
    assert voided.status == "voided"
    assert balance(pair.a) == (1000, 1000)
    release = ledger_entries(pair.a.service, "hold-release")[0]
    assert release["hold"]["why"] == "void"  # type: ignore[index]
    assert release["amount"] == 400
    assert open_receipt(pair, voided.release)["why"] == "void"
    assert pair.rb.void(held.hold_id) == voided  # idempotent
    with pytest.raises(FailedPrecondition, match="voided"):
        pair.rb.capture(held.hold_id)
    with pytest.raises(FailedPrecondition, match="released"):
        pair.b.client.call(A, "hold-capture", {"hold": held.hold_id})  # type: ignore[union-attr]
    assert entry_kinds(pair.b.service)["redemption-receipt"] == 0
    chain = replay(pair.a)
    assert chain.holds == {} and chain.supply() == 1000
    reconciled(pair)


def test_captured_redemption_cannot_be_voided(pair: Pair) -> None:
    held = authorize(pair)
    pair.rb.capture(held.hold_id)
    with pytest.raises(FailedPrecondition, match="captured"):
        pair.rb.void(held.hold_id)
    with pytest.raises(FailedPrecondition, match="captured"):
        pair.b.client.call(A, "hold-void", {"hold": held.hold_id})  # type: ignore[union-attr]
    assert balance(pair.a) == (700, 700)


def test_expired_hold_is_released_and_capture_refused(pair: Pair) -> None:
    held = authorize(pair, amount=250, expires_in_s=1)
    expires_at = parse_time(str(held.expires_at))
    assert balance(pair.a) == (750, 750)
    time.sleep(max(0.0, (expires_at - pair.a.service.now()).total_seconds()) + 0.05)
    assert pair.rb.get(held.hold_id).status == "expired"
    with pytest.raises(FailedPrecondition, match="expired"):
        pair.rb.capture(held.hold_id)
    assert entry_kinds(pair.a.service)["hold-capture"] == 0
    assert entry_kinds(pair.b.service)["redemption-receipt"] == 0

    assert pair.ra.release_expired() == 1
    assert pair.ra.release_expired() == 0
    release = ledger_entries(pair.a.service, "hold-release")[0]
    assert release["hold"]["why"] == "expired"  # type: ignore[index]
    assert balance(pair.a) == (1000, 1000)
    # staybright learns it on void: the same signed release, status expired.
    voided = pair.rb.void(held.hold_id)
    assert voided.status == "expired"
    assert open_receipt(pair, voided.release)["why"] == "expired"
    chain = replay(pair.a)
    assert chain.holds == {} and chain.supply() == 1000
    reconciled(pair)


def test_sweep_leaves_live_holds_alone(pair: Pair) -> None:
    live = authorize(pair, amount=100, key="live")
    assert pair.ra.release_expired() == 0
    assert pair.rb.get(live.hold_id).status == "authorized"
    assert balance(pair.a) == (900, 900)


def test_refusals_change_nothing(pair: Pair) -> None:
    before_a, before_b = entry_kinds(pair.a.service), entry_kinds(pair.b.service)
    with pytest.raises(FailedPrecondition, match="spendable points"):
        authorize(pair, amount=1001, key="too-much")
    with pytest.raises(NotFound, match="unknown member"):
        pair.rb.authorize(A, "bob", 10, "folio", 60, idempotency_key="bob")
    with pytest.raises(InvalidArgument):
        authorize(pair, amount=0, key="zero")
    with pytest.raises(InvalidArgument):
        authorize(pair, expires_in_s=0, key="no-time")
    with pytest.raises(InvalidArgument, match="another program"):
        pair.rb.authorize(B, MEMBER, 10, "folio", 60, idempotency_key="self")
    # No agreement staybright -> skyair: staybright holds nothing for skyair.
    pair.b.service.points.enroll("carol", idempotency_key="enroll-carol")
    pair.b.service.points.adjust("carol", 500, "ops", "opening", idempotency_key="adj-carol")
    with pytest.raises(FailedPrecondition, match="no rate agreement"):
        pair.ra.authorize(B, "carol", 10, "folio", 60, idempotency_key="carol")
    assert balance(pair.a) == (1000, 1000)
    assert pair.b.service.points.balance("carol").spendable == 500
    assert entry_kinds(pair.a.service) == before_a
    assert entry_kinds(pair.b.service) == before_b + Counter({"enroll": 1, "adjust": 1})
    # A refused key may be retried once the member has the points.
    pair.a.service.points.adjust(MEMBER, 1, "ops", "top up", idempotency_key="top-up")
    assert authorize(pair, amount=1001, key="too-much").status == "authorized"
    with pytest.raises(NotFound):
        pair.rb.capture("0" * 32)


def test_unknown_or_foreign_hold_ids_are_refused(pair: Pair) -> None:
    held = authorize(pair)
    client = pair.b.client
    assert client is not None
    with pytest.raises(NotFound):
        client.call(A, "hold-capture", {"hold": "f" * 32})
    with pytest.raises(InvalidArgument):
        client.call(A, "hold-capture", {"hold": "not-hex"})
    with pytest.raises(InvalidArgument):
        client.call(A, "hold-capture", {"hold": held.hold_id, "extra": 1})
    assert entry_kinds(pair.a.service)["hold-capture"] == 0


def test_a_receipt_not_signed_by_the_issuer_is_refused(pair: Pair) -> None:
    """A capture receipt whose value was changed does not verify: nothing is recorded."""
    held = authorize(pair)
    row = pair.rb._row(held.hold_id)
    forged = dict(open_receipt(pair, held.authorization), status="captured", value_minor=1)
    with pytest.raises(VerificationError):
        pair.rb._check_capture(row, forged)
    tampered = dict(held.authorization or {})
    tampered["envelope"] = tampered["envelope"].replace('"amount":300', '"amount":30')
    with pytest.raises(VerificationError):
        pair.rb._open_receipt(row, {"receipt": tampered}, "hold-receipt")
    assert entry_kinds(pair.b.service)["redemption-receipt"] == 0


def test_unreachable_issuer_leaves_a_pending_redemption_that_a_retry_completes(
    pair: Pair,
) -> None:
    pair.a.stop_partner_server()
    with pytest.raises(PartnerUnavailable):
        authorize(pair, key="retry-me")
    with pytest.raises(PartnerUnavailable):
        authorize(pair, amount=50, key="given-up")
    with pair.b.service.sequencer.read() as conn:
        first = redemptions_store.redemption_by_key(conn, "retry-me")
        given_up = redemptions_store.redemption_by_key(conn, "given-up")
    assert first is not None and given_up is not None
    assert pair.rb.get(first.hold_id).status == "pending"
    with pytest.raises(FailedPrecondition, match="not authorized yet"):
        pair.rb.capture(first.hold_id)
    pair.a.start_partner_server()
    done = retry_until_reachable(lambda: authorize(pair, key="retry-me"))
    assert done.status == "authorized"
    # The hold id was chosen before the first attempt and kept for the retry.
    assert done.hold_id == first.hold_id
    assert ledger_entries(pair.a.service, "hold")[0]["hold"]["id"] == done.hold_id  # type: ignore[index]
    # A pending redemption the issuer never saw is voided without any entry.
    assert pair.rb.void(given_up.hold_id).status == "refused"
    assert entry_kinds(pair.a.service)["hold"] == 1
    assert balance(pair.a) == (700, 700)


def test_a_lost_capture_reply_is_recovered_by_capturing_again(pair: Pair) -> None:
    held = authorize(pair)
    client = pair.b.client
    assert client is not None
    # The capture reached skyair but staybright never saw the answer.
    _, reply = client.call(A, "hold-capture", {"hold": held.hold_id})
    assert pair.rb.get(held.hold_id).status == "authorized"
    assert entry_kinds(pair.b.service)["redemption-receipt"] == 0
    captured = pair.rb.capture(held.hold_id)
    assert captured.status == "captured" and captured.capture == reply["receipt"]
    assert entry_kinds(pair.a.service)["hold-capture"] == 1
    assert entry_kinds(pair.b.service)["redemption-receipt"] == 1
    reconciled(pair)


def test_a_repeated_authorize_answers_200_replayed_over_rest_and_grpc(
    pair: Pair, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    """Issue 11, class 10: partner redemptions follow the points writes' replay
    convention (201, then 200 with ``replayed: true``; gRPC's ``replayed``)."""
    servers = serve_member_api(pair.b.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
    op = {"Authorization": f"Bearer {api_keys['operator']}", "Idempotency-Key": "rr"}
    meta = (("authorization", f"Bearer {api_keys['operator']}"),)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{servers.http_port}", timeout=30) as http:
            body = {"program": A, "member_id": MEMBER, "amount": 100, "reference": "folio-r"}
            first = http.post("/v1/partner-redemptions", json=body, headers=op)
            assert first.status_code == 201, first.text
            assert first.json()["replayed"] is False
            again = http.post("/v1/partner-redemptions", json=body, headers=op)
            assert again.status_code == 200, again.text
            assert again.json()["replayed"] is True
            assert again.json()["hold_id"] == first.json()["hold_id"]
        with grpc.insecure_channel(f"127.0.0.1:{servers.grpc_port}") as channel:
            stub = settlement_pb2_grpc.PartnerRedemptionsStub(channel)
            request = settlement_pb2.AuthorizeRedemptionRequest(
                program=A, member_id=MEMBER, amount=50, reference="folio-g",
                expires_in_s=600, idempotency_key="rg",
            )  # fmt: skip
            made = stub.Authorize(request, metadata=meta)
            replayed = stub.Authorize(request, metadata=meta)
            assert (made.replayed, replayed.replayed) == (False, True)
            assert replayed.hold_id == made.hold_id
    finally:
        servers.stop(0)
    assert balance(pair.a)[0] == 850  # 100 and 50 held once each, not twice
