"""Issue 11, classes 5 and 9 over REST and gRPC, on SQLite and PostgreSQL: idempotency
keys are scoped per caller (``node.idempotency``), and a member's transfer does not tell
it which member ids are enrolled.

Each test runs once per transport through ``Caller``, which sends one write as one API
key would and answers what the caller sees: the entry and whether it was a replay, or
the refusal's kind and message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from fastapi.testclient import TestClient

from coalition.api.grpc.client import NodeClient
from coalition.api.grpc.server import serve_grpc
from coalition.api.http.app import create_app
from coalition.audit.db_check import check_database
from coalition.errors import CoalitionError
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.node.service import NodeService

SECRETS = {
    "ops": "op-secret-key",
    "ops-2": "second-operator-key",  # another key of the same brand's integration
    "alice": "alice-secret-key",
    "bob": "bob-secret-key",
}


@dataclass(frozen=True)
class Seen:
    """What one call showed its caller: ``kind`` is ``written``, ``replayed`` or the
    refusal's error kind (``FailedPrecondition``, ...)."""

    kind: str
    entry: dict[str, Any] | None = None
    message: str = ""


class Caller(Protocol):
    def redeem(self, who: str, member: str, amount: int, key: str) -> Seen: ...
    def transfer(self, who: str, member: str, to: str, amount: int, key: str) -> Seen: ...
    def adjust(self, who: str, member: str, amount: int, key: str) -> Seen: ...
    def enroll(self, who: str, member: str, key: str) -> Seen: ...


REST_REFUSALS = {409: "FailedPrecondition", 404: "NotFound", 400: "InvalidArgument"}
"""The error kind a REST status stands for, named as the gRPC client raises it."""


class RestCaller:
    def __init__(self, client: TestClient) -> None:
        self._client = client

    def _post(self, who: str, path: str, body: dict[str, Any], key: str) -> Seen:
        headers = {"Authorization": f"Bearer {SECRETS[who]}", "Idempotency-Key": key}
        response = self._client.post(path, json=body, headers=headers)
        payload = response.json()
        if response.status_code in (200, 201):
            assert payload["replayed"] is (response.status_code == 200), response.text
            kind = "replayed" if payload["replayed"] else "written"
            return Seen(kind, payload["entry"])
        return Seen(REST_REFUSALS[response.status_code], message=payload["message"])

    def redeem(self, who: str, member: str, amount: int, key: str) -> Seen:
        body = {"amount": amount, "reference": f"ref-{key}"}
        return self._post(who, f"/v1/members/{member}/redemptions", body, key)

    def transfer(self, who: str, member: str, to: str, amount: int, key: str) -> Seen:
        body = {"to_member_id": to, "amount": amount, "note": "gift"}
        return self._post(who, f"/v1/members/{member}/transfers", body, key)

    def adjust(self, who: str, member: str, amount: int, key: str) -> Seen:
        body = {"amount": amount, "operator": "ops-1", "note": "goodwill"}
        return self._post(who, f"/v1/members/{member}/adjustments", body, key)

    def enroll(self, who: str, member: str, key: str) -> Seen:
        return self._post(who, "/v1/members", {"member_id": member}, key)


class GrpcCaller:
    def __init__(self, clients: dict[str, NodeClient]) -> None:
        self._clients = clients

    @staticmethod
    def _seen(call: Any) -> Seen:
        try:
            result = call()
        except CoalitionError as exc:
            return Seen(type(exc).__name__, message=str(exc))
        return Seen("replayed" if result.replayed else "written", result.entry)

    def redeem(self, who: str, member: str, amount: int, key: str) -> Seen:
        client = self._clients[who]
        return self._seen(lambda: client.redeem(member, amount, f"ref-{key}", idempotency_key=key))

    def transfer(self, who: str, member: str, to: str, amount: int, key: str) -> Seen:
        client = self._clients[who]
        return self._seen(lambda: client.transfer(member, to, amount, "gift", idempotency_key=key))

    def adjust(self, who: str, member: str, amount: int, key: str) -> Seen:
        client = self._clients[who]
        return self._seen(
            lambda: client.adjust(member, amount, "ops-1", "goodwill", idempotency_key=key)
        )

    def enroll(self, who: str, member: str, key: str) -> Seen:
        client = self._clients[who]
        return self._seen(lambda: client.enroll(member, idempotency_key=key))


@pytest.fixture
def scoped_authenticator() -> Authenticator:
    return Authenticator(
        [
            ApiKey("ops", key_digest(SECRETS["ops"]), Role.OPERATOR),
            ApiKey("ops-2", key_digest(SECRETS["ops-2"]), Role.OPERATOR),
            ApiKey("alice", key_digest(SECRETS["alice"]), Role.MEMBER, "alice"),
            ApiKey("bob", key_digest(SECRETS["bob"]), Role.MEMBER, "bob"),
        ]
    )


@pytest.fixture(params=["rest", "grpc"])
def caller(
    request: pytest.FixtureRequest, node: NodeService, scoped_authenticator: Authenticator
) -> Iterator[Caller]:
    """Alice, Bob and Carol enrolled, Alice and Bob with 1000 points each."""
    for member in ("alice", "bob", "carol"):
        node.points.enroll(member, idempotency_key=f"enroll-{member}")
    for member in ("alice", "bob"):
        node.points.adjust(member, 1000, "ops", "seed", idempotency_key=f"seed-{member}")
    if request.param == "rest":
        with TestClient(create_app(node, scoped_authenticator)) as client:
            yield RestCaller(client)
        return
    server, port = serve_grpc(node, scoped_authenticator, "127.0.0.1", 0)
    clients = {who: NodeClient(f"127.0.0.1:{port}", secret) for who, secret in SECRETS.items()}
    try:
        yield GrpcCaller(clients)
    finally:
        for client in clients.values():
            client.close()
        server.stop(None).wait(10)


def test_a_members_key_neither_blocks_nor_probes_the_operators(
    caller: Caller, node: NodeService
) -> None:
    """The key a member used first leaves the operator's later write with the same key
    (for another member) alone, and a member learns nothing from a key the operator used."""
    mine = caller.redeem("alice", "alice", 10, "shared-key")
    assert mine.kind == "written"
    theirs = caller.adjust("ops", "carol", 50, "shared-key")
    assert theirs.kind == "written", theirs.message  # was 409 when keys were one namespace
    assert theirs.entry is not None and theirs.entry["kind"] == "adjust"
    # A key the operator used before tells the member nothing: it is a new key for her.
    operator_first = caller.adjust("ops", "carol", 5, "operator-key")
    assert operator_first.kind == "written"
    probe = caller.redeem("alice", "alice", 1, "operator-key")
    assert probe.kind == "written", probe.message
    # Each caller still replays its own request, and only its own.
    assert caller.redeem("alice", "alice", 10, "shared-key") == Seen("replayed", mine.entry)
    assert caller.adjust("ops", "carol", 50, "shared-key") == Seen("replayed", theirs.entry)
    assert node.points.balance("alice").spendable == 1000 - 10 - 1
    assert node.points.balance("carol").spendable == 55


def test_the_same_key_from_two_members_writes_for_each(caller: Caller, node: NodeService) -> None:
    alice = caller.redeem("alice", "alice", 100, "checkout-1")
    bob = caller.redeem("bob", "bob", 200, "checkout-1")
    assert (alice.kind, bob.kind) == ("written", "written"), (alice.message, bob.message)
    assert caller.redeem("alice", "alice", 100, "checkout-1") == Seen("replayed", alice.entry)
    assert caller.redeem("bob", "bob", 200, "checkout-1") == Seen("replayed", bob.entry)
    assert node.points.balance("alice").spendable == 900
    assert node.points.balance("bob").spendable == 800


def test_a_key_with_another_request_conflicts_for_its_own_caller_only(
    caller: Caller, node: NodeService
) -> None:
    first = caller.redeem("alice", "alice", 100, "k-once")
    assert first.kind == "written"
    again = caller.redeem("alice", "alice", 300, "k-once")
    assert again.kind == "FailedPrecondition"
    assert "idempotency key k-once was used for a different request" in again.message
    # Bob's and the operator's requests with the same key are theirs: no conflict.
    assert caller.redeem("bob", "bob", 300, "k-once").kind == "written"
    assert caller.adjust("ops", "alice", 7, "k-once").kind == "written"
    assert node.points.balance("alice").spendable == 1000 - 100 + 7


def test_every_operator_key_of_the_program_shares_one_scope(
    caller: Caller, node: NodeService
) -> None:
    """A request retried through another operator key of the brand's integration replays
    (one scope for the program's operator keys), and conflicts the same way."""
    first = caller.adjust("ops", "carol", 40, "crm-17")
    assert caller.adjust("ops-2", "carol", 40, "crm-17") == Seen("replayed", first.entry)
    assert caller.adjust("ops-2", "carol", 41, "crm-17").kind == "FailedPrecondition"
    assert node.points.balance("carol").spendable == 40


def test_keys_recorded_before_scopes_keep_replaying(caller: Caller, node: NodeService) -> None:
    """Rows written before keys were scoped hold the bare key (the operator scope's
    encoding): the operator's keys replay as before, and a member's retry of a request it
    sent before the upgrade replays too, while another request under that key is new."""
    before = node.points.redeem("alice", 30, "ref-legacy", idempotency_key="legacy")  # bare key
    operator = node.points.adjust("carol", 9, "ops-1", "goodwill", idempotency_key="legacy-op")
    assert caller.redeem("alice", "alice", 30, "legacy") == Seen("replayed", before.entry)
    assert caller.adjust("ops", "carol", 9, "legacy-op") == Seen("replayed", operator.entry)
    # Bob's own request under Alice's old key is not hers: written, no conflict, no replay.
    assert caller.redeem("bob", "bob", 30, "legacy").kind == "written"
    assert node.points.balance("alice").spendable == 970
    assert node.points.balance("bob").spendable == 970


def test_a_transfer_to_an_unenrolled_id_answers_as_to_an_enrolled_one(
    caller: Caller, node: NodeService, database_url: str
) -> None:
    """No enrolment oracle: a member's transfer to an id nobody enrolled is written like
    one to an enrolled member (the id is enrolled by it), and refusals read the same."""
    known = caller.transfer("alice", "alice", "carol", 100, "t-known")
    unknown = caller.transfer("alice", "alice", "dora", 100, "t-unknown")
    assert (known.kind, unknown.kind) == ("written", "written"), unknown.message
    assert known.entry is not None and unknown.entry is not None
    assert known.entry.keys() == unknown.entry.keys()
    assert (known.entry["kind"], unknown.entry["kind"]) == ("transfer", "transfer")
    # Refusals say the same whichever the recipient.
    too_much = [
        caller.transfer("alice", "alice", to, 10_000, f"t-big-{to}") for to in ("carol", "eve")
    ]
    assert [s.kind for s in too_much] == ["FailedPrecondition"] * 2
    assert too_much[0].message == too_much[1].message
    assert caller.transfer("alice", "alice", "dora", 100, "t-unknown") == Seen(
        "replayed", unknown.entry
    )
    # The points wait in dora's account; eve got nothing (her transfer was refused).
    assert node.points.balance("dora").spendable == 100
    assert node.points.balance("alice").spendable == 800
    assert caller.enroll("ops", "dora", "enroll-dora").kind == "FailedPrecondition"
    with pytest.raises(CoalitionError, match="unknown member eve"):
        node.points.balance("eve")
    node.ledger.flush()
    report = check_database(database_url)
    assert report.ok, report.render()
