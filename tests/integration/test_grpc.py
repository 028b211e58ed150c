"""The gRPC transport: a real server on 127.0.0.1 over a real channel, against a real
NodeService on SQLite and PostgreSQL.

Every refused call is followed by a check that balance and history did not move: a status
code alone does not prove that nothing was written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from coalition.api.grpc.client import NodeClient, TransportError
from coalition.api.grpc.kit import ApiKeyAuthorizer
from coalition.api.grpc.ledger import LEDGER_SERVICE
from coalition.api.grpc.points import POINTS_SERVICE, PointsServicer
from coalition.api.grpc.server import serve_grpc
from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import canonical_json
from coalition.ledger.keys import VerifyKey
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.node.auth import Authenticator
from coalition.node.service import NodeService
from coalition.node.views import PurchaseRow
from coalition.v1 import points_pb2, points_pb2_grpc

ALICE = "alice"  # the member the fixture's member key belongs to
BOB = "bob"


@pytest.fixture
def port(node: NodeService, authenticator: Authenticator) -> Iterator[int]:
    server, bound = serve_grpc(node, authenticator, "127.0.0.1", 0)
    try:
        yield bound
    finally:
        server.stop(None).wait(10)


@pytest.fixture
def clients(port: int, api_keys: dict[str, str]) -> Iterator[dict[str, NodeClient]]:
    """A client per role, plus ``anonymous`` with no key."""
    made = {role: NodeClient(f"127.0.0.1:{port}", secret) for role, secret in api_keys.items()}
    made["anonymous"] = NodeClient(f"127.0.0.1:{port}", None)
    try:
        yield made
    finally:
        for client in made.values():
            client.close()


@pytest.fixture
def ops(clients: dict[str, NodeClient]) -> NodeClient:
    """The operator's client, with Alice and Bob enrolled and Alice credited 1000 points."""
    op = clients["operator"]
    for member in (ALICE, BOB):
        assert not op.enroll(member, idempotency_key=f"enroll-{member}").replayed
    op.adjust(ALICE, 1000, "ops-1", "welcome", idempotency_key="seed")
    return op


def snapshot(op: NodeClient, member: str) -> Any:
    """What must not change after a refused call (log indexes appear as the sealer runs)."""
    return op.balance(member), [view.entry for view in op.history(member, limit=1000)]


def test_round_trip(ops: NodeClient, clients: dict[str, NodeClient], node: NodeService) -> None:
    alice = clients["member"]
    purchase = ops.earn_purchase(ALICE, "order-1", 12_345, idempotency_key="p1")
    assert not purchase.replayed
    assert purchase.entry["kind"] == "earn"
    earned = purchase.entry["amount"]
    assert isinstance(earned, int)
    assert earned > 0
    after_earn = alice.balance(ALICE)
    assert (after_earn.spendable, after_earn.pending) == (1000, earned)

    reward = ops.earn_reward(ALICE, "review", "review-1", idempotency_key="r1").entry
    assert reward["amount"] == node.rules.rewards["review"]
    redeemed = alice.redeem(ALICE, 100, "gift-1", idempotency_key="d1").entry
    assert redeemed["kind"] == "redeem"
    moved = alice.transfer(ALICE, BOB, 50, "for coffee", idempotency_key="t1").entry
    assert moved["kind"] == "transfer"
    second = ops.earn_purchase(ALICE, "order-2", 5_000, idempotency_key="p2").entry
    revoked = ops.revoke(ALICE, str(second["id"]), "ops-1", "fraud", idempotency_key="v1").entry
    assert revoked["lot"] == second["id"]
    reversed_ = ops.reverse_purchase(ALICE, "order-1", idempotency_key="x1").entry
    assert reversed_["lot"] == purchase.entry["id"]

    balance = alice.balance(ALICE)
    assert balance == node.points.balance(ALICE)
    assert balance.spendable == 1000 + node.rules.rewards["review"] - 100 - 50
    assert balance.pending == 0
    assert ops.balance(BOB).spendable == 50

    lots = alice.lots(ALICE)
    assert lots == node.points.lots(ALICE)
    assert sum(lot.remaining for lot in lots) == balance.spendable + balance.pending

    history = alice.history(ALICE)
    assert [v.entry for v in history] == [v.entry for v in node.points.history(ALICE)]
    ids = {view.entry["id"] for view in history}
    assert {redeemed["id"], moved["id"], revoked["id"], reversed_["id"]} <= ids
    assert len(alice.history(ALICE, limit=2)) == 2

    # The wire entry is the stored one, byte for byte.
    assert canonical_json(redeemed) == canonical_json(node.ledger.entry(str(redeemed["id"])).entry)
    assert ops.run_expiry() == node.points.run_expiry()


def test_replay_returns_first_entry_and_conflict_changes_nothing(
    ops: NodeClient, clients: dict[str, NodeClient]
) -> None:
    alice = clients["member"]
    first = alice.redeem(ALICE, 30, "gift-7", idempotency_key="same-key")
    again = alice.redeem(ALICE, 30, "gift-7", idempotency_key="same-key")
    assert not first.replayed
    assert again.replayed
    assert again.entry == first.entry

    before = snapshot(ops, ALICE)
    assert before[0].spendable == 970
    with pytest.raises(FailedPrecondition, match="same-key"):
        alice.redeem(ALICE, 31, "gift-7", idempotency_key="same-key")
    assert snapshot(ops, ALICE) == before


def test_bulk_earn_streams_rows(ops: NodeClient, node: NodeService) -> None:
    count = 5_000
    bad = {17: -5, 4_000: 0}  # row number -> refused spend

    def rows() -> Iterator[PurchaseRow]:
        for n in range(1, count + 1):
            member = ALICE if n % 2 else BOB
            spend = bad.get(n, 1_000 + n)
            yield PurchaseRow(member, f"bulk-{n}", spend, "", f"bulk-key-{n}")
        yield PurchaseRow("nobody", "bulk-x", 1_000, "", "bulk-key-x")

    result = ops.earn_bulk(rows())
    assert result.accepted == count - len(bad)
    assert result.replayed == 0
    assert sorted(e.row for e in result.rejected) == [*sorted(bad), count + 1]
    assert all(e.message for e in result.rejected)
    assert {e.idempotency_key for e in result.rejected} >= {"bulk-key-17", "bulk-key-x"}

    pending = ops.balance(ALICE).pending + ops.balance(BOB).pending
    again = ops.earn_bulk(rows())
    assert (again.accepted, again.replayed) == (0, count - len(bad))
    assert ops.balance(ALICE).pending + ops.balance(BOB).pending == pending
    assert node.points.balance(BOB).pending == ops.balance(BOB).pending


def test_proofs_verify_offline(
    ops: NodeClient, clients: dict[str, NodeClient], node: NodeService
) -> None:
    auditor = clients["auditor"]
    key = VerifyKey.from_pem(auditor.public_key_pem().encode())

    first = ops.earn_purchase(ALICE, "order-1", 2_000, idempotency_key="p1").entry
    node.ledger.flush()
    first_height = _height(auditor.latest_header())
    second = ops.redeem(ALICE, 10, "gift-1", idempotency_key="d1").entry
    node.ledger.flush()
    second_header = auditor.latest_header()
    second_height = _height(second_header)
    assert second_height > first_height

    for entry in (first, second):
        proof = auditor.inclusion_proof(str(entry["id"]))
        assert proof["entry"] == entry
        verify_inclusion_document(proof, key)
        assert auditor.entry(str(entry["id"])).log_index is not None

    assert second_header is not None
    size = second_header["header"]["log_size"]  # type: ignore[call-overload,index]
    pinned = auditor.inclusion_proof(str(first["id"]), tree_size=size)
    verify_inclusion_document(pinned, key)

    verify_consistency_document(auditor.consistency_proof(first_height, second_height), key)

    signed, entries = auditor.block(second_height)
    assert signed == second_header
    assert second in entries
    SignedHeader.from_json(signed).verify(key)
    headers = auditor.headers(0)
    assert headers[-1] == second_header
    for header in headers:
        SignedHeader.from_json(header).verify(key)


def _height(signed: dict[str, Any] | None) -> int:
    assert signed is not None
    height = signed["header"]["height"]
    assert isinstance(height, int)
    return height


def test_watch_delivers_headers_sealed_after_subscribing(
    ops: NodeClient, clients: dict[str, NodeClient], node: NodeService
) -> None:
    auditor = clients["auditor"]
    node.ledger.flush()
    latest = auditor.latest_header()
    after = -1 if latest is None else _height(latest)
    key = VerifyKey.from_pem(auditor.public_key_pem().encode())

    with auditor.watch_headers(after, timeout=30) as watch:
        stream = iter(watch)
        ops.earn_purchase(ALICE, "order-w", 3_000, idempotency_key="pw")
        sealed = node.ledger.flush()
        assert sealed is not None
        received = next(stream)
        assert received == sealed.to_json()
        assert _height(received) == after + 1
        SignedHeader.from_json(received).verify(key)


def test_health_is_serving(clients: dict[str, NodeClient]) -> None:
    anonymous = clients["anonymous"]
    for service in ("", POINTS_SERVICE, LEDGER_SERVICE):
        assert anonymous.health(service) == "SERVING"
    with pytest.raises(NotFound):
        anonymous.health("coalition.v1.Nope")


def test_keys_and_roles(ops: NodeClient, clients: dict[str, NodeClient], port: int) -> None:
    alice, auditor, anonymous = clients["member"], clients["auditor"], clients["anonymous"]
    before = snapshot(ops, ALICE), snapshot(ops, BOB)

    refused: list[tuple[type[CoalitionError], Callable[[], object]]] = [
        (Unauthenticated, lambda: anonymous.balance(ALICE)),
        (Unauthenticated, lambda: anonymous.redeem(ALICE, 1, "g", idempotency_key="k1")),
        (Unauthenticated, lambda: anonymous.latest_header()),
        (PermissionDenied, lambda: alice.balance(BOB)),
        (PermissionDenied, lambda: alice.redeem(BOB, 1, "g", idempotency_key="k2")),
        (PermissionDenied, lambda: alice.transfer(BOB, ALICE, 1, "n", idempotency_key="k3")),
        (PermissionDenied, lambda: alice.adjust(ALICE, 5, "me", "n", idempotency_key="k4")),
        (PermissionDenied, lambda: alice.latest_header()),
        (PermissionDenied, lambda: auditor.redeem(ALICE, 1, "g", idempotency_key="k5")),
        (PermissionDenied, lambda: auditor.adjust(ALICE, 5, "a", "n", idempotency_key="k6")),
        (PermissionDenied, lambda: auditor.enroll("carol", idempotency_key="k7")),
        (PermissionDenied, lambda: auditor.balance(ALICE)),
        (PermissionDenied, lambda: auditor.earn_bulk([])),
        (Unauthenticated, lambda: anonymous.earn_bulk([])),
    ]
    for kind, call in refused:
        with pytest.raises(kind) as caught:
            call()
        assert str(caught.value), kind
    assert (snapshot(ops, ALICE), snapshot(ops, BOB)) == before

    bad_key = NodeClient(f"127.0.0.1:{port}", "not-a-key")
    with bad_key, pytest.raises(Unauthenticated, match="unknown API key"):
        bad_key.balance(ALICE)
    auditor.latest_header()  # the auditor reads the ledger


def test_status_codes_on_the_wire(ops: NodeClient, port: int, api_keys: dict[str, str]) -> None:
    """The raw codes and messages a non-Python client sees."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = points_pb2_grpc.PointsStub(channel)
        cases: list[tuple[str | None, Any, grpc.StatusCode]] = [
            (None, points_pb2.GetBalanceRequest(member_id=ALICE), grpc.StatusCode.UNAUTHENTICATED),
            (
                api_keys["member"],
                points_pb2.GetBalanceRequest(member_id=BOB),
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                api_keys["operator"],
                points_pb2.GetBalanceRequest(member_id="no body"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                api_keys["operator"],
                points_pb2.GetBalanceRequest(member_id="nobody"),
                grpc.StatusCode.NOT_FOUND,
            ),
        ]
        for secret, request, code in cases:
            metadata = (("authorization", f"Bearer {secret}"),) if secret else ()
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetBalance(request, metadata=metadata, timeout=10)
            assert caught.value.code() == code  # type: ignore[attr-defined]
            assert caught.value.details()  # type: ignore[attr-defined]

        metadata = (("authorization", f"Bearer {api_keys['member']}"),)
        body = {"member_id": ALICE, "amount": 5, "reference": "g", "idempotency_key": "wire-1"}
        stub.Redeem(points_pb2.RedeemRequest(**body), metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Redeem(points_pb2.RedeemRequest(**body | {"amount": 6}), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]


def test_refused_input_changes_nothing(
    ops: NodeClient, clients: dict[str, NodeClient], node: NodeService
) -> None:
    alice, auditor = clients["member"], clients["auditor"]
    over = node.rules.max_points_per_operation + 1
    ops.earn_purchase(ALICE, "order-1", 1_000, idempotency_key="p1")
    before = snapshot(ops, ALICE), snapshot(ops, BOB)

    refused: list[tuple[type[CoalitionError], str, Callable[[], object]]] = [
        (InvalidArgument, "positive", lambda: alice.redeem(ALICE, -5, "g", idempotency_key="n1")),
        (InvalidArgument, "positive", lambda: alice.redeem(ALICE, 0, "g", idempotency_key="n2")),
        (InvalidArgument, "limit", lambda: alice.redeem(ALICE, over, "g", idempotency_key="n3")),
        (
            InvalidArgument,
            "positive",
            lambda: alice.transfer(ALICE, BOB, -1, "n", idempotency_key="n4"),
        ),
        (
            InvalidArgument,
            "limit",
            lambda: ops.earn_purchase(
                ALICE, "o-9", node.rules.max_spend_minor + 1, idempotency_key="n5"
            ),
        ),
        (
            InvalidArgument,
            "positive",
            lambda: ops.earn_purchase(ALICE, "o-9", -100, idempotency_key="n6"),
        ),
        (NotFound, "nobody", lambda: ops.adjust("nobody", 5, "op", "n", idempotency_key="n7")),
        (
            InvalidArgument,
            "member id",
            lambda: ops.transfer(ALICE, "bad id!", 5, "n", idempotency_key="n8"),
        ),
        (InvalidArgument, "member id", lambda: ops.balance("bad id!")),
        (
            InvalidArgument,
            "idempotency key",
            lambda: alice.redeem(ALICE, 5, "g", idempotency_key="bad key!"),
        ),
        (
            InvalidArgument,
            "idempotency key",
            lambda: alice.redeem(ALICE, 5, "g", idempotency_key=""),
        ),
        (
            InvalidArgument,
            "entry id",
            lambda: ops.revoke(ALICE, "not-hex", "op", "n", idempotency_key="n9"),
        ),
        (InvalidArgument, "entry id", lambda: auditor.entry("xyz")),
        (NotFound, "no entry", lambda: auditor.entry("0" * 32)),
        (InvalidArgument, "height", lambda: auditor.block(-1)),
        (NotFound, "no block", lambda: auditor.block(10_000)),
        (InvalidArgument, "limit", lambda: ops.history(ALICE, limit=-3)),
        (
            FailedPrecondition,
            "spendable|insufficient|enough",
            lambda: alice.redeem(ALICE, 1_000_000, "g", idempotency_key="n10"),
        ),
    ]
    for kind, message, call in refused:
        with pytest.raises(kind, match=f"(?i){message}"):
            call()
    assert (snapshot(ops, ALICE), snapshot(ops, BOB)) == before


def test_a_bug_becomes_internal_with_the_traceback_logged_not_sent(
    node: NodeService, authenticator: Authenticator, api_keys: dict[str, str], caplog: Any
) -> None:
    """Fault injection: a servicer whose call hits a non-Coalition exception."""

    class Broken(PointsServicer):
        def allow(self, context: Any, action: Any, member_id: str | None = None) -> Any:
            raise KeyError("secret detail")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    points_pb2_grpc.add_PointsServicer_to_server(
        Broken(node.points, ApiKeyAuthorizer(authenticator)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = NodeClient(f"127.0.0.1:{port}", api_keys["operator"])
        with client, pytest.raises(TransportError) as caught:
            client.balance(ALICE)
        assert caught.value.code == grpc.StatusCode.INTERNAL
        assert "secret detail" not in str(caught.value)
        assert "GetBalance" in str(caught.value)
        assert any(
            record.exc_info and "secret detail" in str(record.exc_info[1])
            for record in caplog.records
        )
    finally:
        server.stop(None).wait(10)
