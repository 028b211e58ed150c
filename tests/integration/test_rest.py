"""The REST transport against a real NodeService (SQLite and PostgreSQL) and real uvicorn.

Every refused call is followed by a check that the member's balance and history did not
move: an error status alone does not prove that nothing was written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from coalition.api.http.app import create_app
from coalition.api.http.points import MAX_BULK_ROWS
from coalition.api.http.server import serve_http
from coalition.errors import VerificationError
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import canonical_json
from coalition.ledger.keys import VerifyKey
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.node.auth import Authenticator
from coalition.node.service import NodeService

ALICE = "alice"  # the member the fixture's member key belongs to
BOB = "bob"


@pytest.fixture
def client(node: NodeService, authenticator: Authenticator) -> Iterator[TestClient]:
    with TestClient(create_app(node, authenticator)) as test_client:
        yield test_client


@pytest.fixture
def keys(api_keys: dict[str, str]) -> dict[str, dict[str, str]]:
    """Authorization headers per role."""
    return {str(role): {"Authorization": f"Bearer {secret}"} for role, secret in api_keys.items()}


@pytest.fixture
def enrolled(client: TestClient, keys: dict[str, dict[str, str]]) -> TestClient:
    """Alice and Bob enrolled; Alice holds 1000 spendable points from an adjustment."""
    for member in (ALICE, BOB):
        body = {"member_id": member, "idempotency_key": f"enroll-{member}"}
        assert client.post("/v1/members", json=body, headers=keys["operator"]).status_code == 201
    credit = {"amount": 1000, "operator": "ops-1", "note": "welcome", "idempotency_key": "seed"}
    response = client.post(
        f"/v1/members/{ALICE}/adjustments", json=credit, headers=keys["operator"]
    )
    assert response.status_code == 201, response.text
    return client


def snapshot(client: TestClient, keys: dict[str, dict[str, str]], member: str) -> Any:
    """What must not change after a refused call: balance and every entry of the history.

    Log indexes are left out: the background sealer may seal entries in between.
    """
    op = keys["operator"]
    balance = client.get(f"/v1/members/{member}/balance", headers=op)
    history = client.get(f"/v1/members/{member}/history?limit=1000", headers=op)
    assert balance.status_code == 200, balance.text
    assert history.status_code == 200, history.text
    return balance.json(), [item["entry"] for item in history.json()]


def write(
    client: TestClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 201, response.text
    payload: dict[str, Any] = response.json()
    assert payload["replayed"] is False
    return payload["entry"]


def test_full_flow(
    enrolled: TestClient, node: NodeService, keys: dict[str, dict[str, str]]
) -> None:
    client, op, member = enrolled, keys["operator"], keys["member"]
    base = f"/v1/members/{ALICE}"

    purchase = write(
        client,
        f"{base}/earn",
        {"reference": "order-1", "spend_minor": 12_345, "idempotency_key": "p1"},
        op,
    )
    assert purchase["kind"] == "earn"
    assert purchase["amount"] > 0
    after_earn = client.get(f"{base}/balance", headers=member).json()
    assert after_earn["spendable"] == 1000
    assert after_earn["pending"] == purchase["amount"]

    rewards = sorted(node.rules.rewards)
    reward_points = 0
    if rewards:
        reward = write(
            client,
            f"{base}/rewards",
            {"event": rewards[0], "reference": "review-1", "idempotency_key": "r1"},
            op,
        )
        reward_points = reward["amount"]
        assert reward_points == node.rules.rewards[rewards[0]]

    redeemed = write(
        client,
        f"{base}/redemptions",
        {"amount": 100, "reference": "gift-1", "idempotency_key": "d1"},
        member,
    )
    assert redeemed["kind"] == "redeem"
    moved = write(
        client,
        f"{base}/transfers",
        {"to_member_id": BOB, "amount": 50, "note": "for coffee", "idempotency_key": "t1"},
        member,
    )
    assert moved["kind"] == "transfer"
    write(
        client,
        f"{base}/adjustments",
        {"amount": -10, "operator": "ops-1", "note": "correction", "idempotency_key": "a1"},
        op,
    )
    extra = write(
        client,
        f"{base}/adjustments",
        {"amount": 200, "operator": "ops-1", "note": "goodwill", "idempotency_key": "a2"},
        op,
    )
    second = write(
        client,
        f"{base}/earn",
        {"reference": "order-2", "spend_minor": 5_000, "idempotency_key": "p2"},
        op,
    )
    revoked = write(
        client,
        f"{base}/revocations",
        {
            "earn_entry_id": second["id"],
            "operator": "ops-1",
            "note": "fraud",
            "idempotency_key": "v1",
        },
        op,
    )
    assert revoked["lot"] == second["id"]
    reversed_ = write(
        client, f"{base}/reversals", {"reference": "order-1", "idempotency_key": "x1"}, op
    )
    assert reversed_["lot"] == purchase["id"]

    balance = client.get(f"{base}/balance", headers=member).json()
    assert balance["member_id"] == ALICE
    assert balance["spendable"] == 1000 + reward_points - 100 - 50 - 10 + 200
    assert balance["pending"] == 0
    assert client.get(f"/v1/members/{BOB}/balance", headers=op).json()["spendable"] == 50
    service_view = node.points.balance(ALICE)
    assert balance["spendable"] == service_view.spendable
    assert balance["account"] == service_view.account

    lots = client.get(f"{base}/lots", headers=member).json()
    assert {purchase["id"], extra["id"]} <= {lot["id"] for lot in lots}
    assert sum(lot["remaining"] for lot in lots) == balance["spendable"] + balance["pending"]

    history = client.get(f"{base}/history", headers=member).json()
    ids = {item["entry"]["id"] for item in history}
    assert {purchase["id"], redeemed["id"], moved["id"], revoked["id"], reversed_["id"]} <= ids
    limited = client.get(f"{base}/history?limit=2", headers=member).json()
    assert len(limited) == 2

    # The wire entry is the signed one, byte for byte.
    stored = node.ledger.entry(redeemed["id"]).entry
    assert canonical_json(redeemed) == canonical_json(stored)

    expiry = client.post("/v1/jobs/expiry", headers=op)
    assert expiry.status_code == 200, expiry.text
    assert expiry.json() == {"entries": 0, "points": 0}


def test_replay_returns_first_entry_and_conflict_changes_nothing(
    enrolled: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    client, member = enrolled, keys["member"]
    path = f"/v1/members/{ALICE}/redemptions"
    body = {"amount": 30, "reference": "gift-7", "idempotency_key": "same-key"}

    first = client.post(path, json=body, headers=member)
    assert first.status_code == 201, first.text
    again = client.post(path, json=body, headers=member)
    assert again.status_code == 200, again.text
    assert again.json() == {"entry": first.json()["entry"], "replayed": True}

    before = snapshot(client, keys, ALICE)
    conflict = client.post(path, json=body | {"amount": 31}, headers=member)
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"] == "idempotency_conflict"
    assert snapshot(client, keys, ALICE) == before
    assert before[0]["spendable"] == 970

    # The key may come from the Idempotency-Key header instead of the body.
    header_body = {"amount": 5, "reference": "gift-8"}
    by_header = client.post(path, json=header_body, headers=member | {"Idempotency-Key": "hk-1"})
    assert by_header.status_code == 201, by_header.text
    replay = client.post(path, json=header_body, headers=member | {"Idempotency-Key": "hk-1"})
    assert replay.status_code == 200
    assert replay.json()["entry"] == by_header.json()["entry"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-key", "Bearer ", "Basic dXNlcjpwYXNz"],
    ids=["missing", "unknown", "empty", "basic"],
)
def test_unauthenticated(enrolled: TestClient, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [
        ("GET", f"/v1/members/{ALICE}/balance"),
        ("POST", f"/v1/members/{ALICE}/redemptions"),
        ("GET", "/v1/ledger/headers"),
    ]:
        body = {"amount": 1, "reference": "r", "idempotency_key": "k"} if method == "POST" else None
        response = enrolled.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("role", "method", "path", "body"),
    [
        ("member", "GET", f"/v1/members/{BOB}/balance", None),
        ("member", "GET", f"/v1/members/{BOB}/history", None),
        ("member", "POST", f"/v1/members/{BOB}/redemptions", {"amount": 1, "reference": "x"}),
        (
            "member",
            "POST",
            f"/v1/members/{ALICE}/adjustments",
            {"amount": 5, "operator": "me", "note": "n"},
        ),
        ("member", "POST", f"/v1/members/{ALICE}/earn", {"reference": "o-9", "spend_minor": 500}),
        ("member", "GET", "/v1/ledger/headers/latest", None),
        ("member", "GET", "/v1/ledger/public-key", None),
        ("auditor", "POST", f"/v1/members/{ALICE}/redemptions", {"amount": 1, "reference": "x"}),
        ("auditor", "POST", "/v1/members", {"member_id": "carol"}),
        ("auditor", "POST", "/v1/jobs/expiry", None),
        ("auditor", "GET", f"/v1/members/{ALICE}/balance", None),
    ],
)
def test_forbidden(
    enrolled: TestClient,
    keys: dict[str, dict[str, str]],
    role: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    before = snapshot(enrolled, keys, ALICE), snapshot(enrolled, keys, BOB)
    if body is not None:
        body = body | {"idempotency_key": "forbidden-1"}
    response = enrolled.request(method, path, json=body, headers=keys[role])
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "permission_denied"
    assert (snapshot(enrolled, keys, ALICE), snapshot(enrolled, keys, BOB)) == before


REDEEM = f"/v1/members/{ALICE}/redemptions"
EARN = f"/v1/members/{ALICE}/earn"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (REDEEM, {"amount": -5, "reference": "g"}, 400),
        (REDEEM, {"amount": 0, "reference": "g"}, 400),
        (REDEEM, {"amount": 1.5, "reference": "g"}, 400),
        (REDEEM, {"amount": 10.0, "reference": "g"}, 400),
        (REDEEM, {"amount": "10", "reference": "g"}, 422),
        (REDEEM, {"amount": True, "reference": "g"}, 422),
        (REDEEM, {"amount": None, "reference": "g"}, 422),
        (REDEEM, {"amount": 2**53, "reference": "g"}, 400),
        (REDEEM, {"amount": 100_000_001, "reference": "g"}, 400),
        (REDEEM, {"amount": 1001, "reference": "g"}, 409),
        (REDEEM, {"amount": 10, "reference": "bad reference!"}, 400),
        (REDEEM, {"amount": 10, "reference": "g", "surprise": 1}, 422),
        (REDEEM, {"reference": "g"}, 422),
        (EARN, {"reference": "o-1", "spend_minor": 0}, 400),
        (EARN, {"reference": "o-1", "spend_minor": -100}, 400),
        (EARN, {"reference": "o-1", "spend_minor": 99.99}, 400),
        (EARN, {"reference": "o-1", "spend_minor": "1000"}, 422),
        (EARN, {"reference": "o-1", "spend_minor": 10_000_000_001}, 400),
        (EARN, {"reference": "o-1", "spend_minor": 1000, "category": "no-such"}, 400),
        (
            f"/v1/members/{ALICE}/transfers",
            {"to_member_id": "bad id!", "amount": 10, "note": "n"},
            400,
        ),
        (
            f"/v1/members/{ALICE}/transfers",
            {"to_member_id": ALICE, "amount": 10, "note": "n"},
            400,
        ),
        (
            f"/v1/members/{ALICE}/adjustments",
            {"amount": 0, "operator": "ops-1", "note": "n"},
            400,
        ),
        (
            f"/v1/members/{ALICE}/adjustments",
            {"amount": -5000, "operator": "ops-1", "note": "n"},
            409,
        ),
        (
            f"/v1/members/{ALICE}/revocations",
            {"earn_entry_id": "no-such-entry", "operator": "ops-1", "note": "n"},
            400,
        ),
        (
            f"/v1/members/{ALICE}/revocations",
            {"earn_entry_id": "0" * 32, "operator": "ops-1", "note": "n"},
            404,
        ),
        (f"/v1/members/{ALICE}/reversals", {"reference": "never-bought"}, 404),
        ("/v1/members/nobody/earn", {"reference": "o-1", "spend_minor": 1000}, 404),
        ("/v1/members/bad%20id!/earn", {"reference": "o-1", "spend_minor": 1000}, 400),
        ("/v1/members", {"member_id": "bad id!"}, 400),
        ("/v1/members", {"member_id": ALICE * 30}, 400),
    ],
)
def test_refused_request_changes_nothing(
    enrolled: TestClient,
    keys: dict[str, dict[str, str]],
    path: str,
    body: dict[str, Any],
    status: int,
) -> None:
    before = snapshot(enrolled, keys, ALICE)
    response = enrolled.post(
        path, json=body | {"idempotency_key": "refused-1"}, headers=keys["operator"]
    )
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "message"}
    assert response.json()["message"]
    assert snapshot(enrolled, keys, ALICE) == before


@pytest.mark.parametrize(
    ("body_key", "header_key"),
    [
        ("has space", None),
        ("", None),
        ("k" * 129, None),
        ("tab\tkey", None),
        (None, None),
        ("body-key", "header-key"),
        (None, "bad key!"),
    ],
    ids=["space", "empty", "too-long", "control", "missing", "disagree", "bad-header"],
)
def test_malformed_idempotency_key_changes_nothing(
    enrolled: TestClient,
    keys: dict[str, dict[str, str]],
    body_key: str | None,
    header_key: str | None,
) -> None:
    before = snapshot(enrolled, keys, ALICE)
    body: dict[str, Any] = {"amount": 10, "reference": "g-1"}
    if body_key is not None:
        body["idempotency_key"] = body_key
    headers = keys["member"] | ({"Idempotency-Key": header_key} if header_key else {})
    response = enrolled.post(REDEEM, json=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_argument"
    assert snapshot(enrolled, keys, ALICE) == before


def test_query_parameters_are_checked(
    enrolled: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    op = keys["operator"]
    expected = {
        f"/v1/members/{ALICE}/history?limit=0": 400,
        f"/v1/members/{ALICE}/history?limit=1001": 400,
        f"/v1/members/{ALICE}/history?limit=1.5": 422,
        f"/v1/members/{ALICE}/history?limit=abc": 422,
        f"/v1/members/{ALICE}/history?limit={2**53}": 422,
        "/v1/members/nobody/balance": 404,
        "/v1/members/bad%20id!/lots": 400,
        "/v1/ledger/headers?start=-1": 400,
        "/v1/ledger/headers?limit=0": 400,
        f"/v1/ledger/headers?start={10**30}": 422,
        "/v1/ledger/consistency?first=0": 422,
        "/v1/ledger/blocks/-1": 400,
        "/v1/ledger/blocks/999999": 404,
        "/v1/ledger/entries/no-such-entry": 400,
        f"/v1/ledger/entries/{'0' * 32}": 404,
        f"/v1/ledger/entries/{'0' * 32}/proof": 404,
    }
    actual = {path: enrolled.get(path, headers=op).status_code for path in expected}
    assert actual == expected


def test_bulk_earn(enrolled: TestClient, keys: dict[str, dict[str, str]]) -> None:
    op = keys["operator"]
    rows = [
        {
            "member_id": ALICE,
            "reference": f"bulk-{n}",
            "spend_minor": 1000,
            "idempotency_key": f"b{n}",
        }
        for n in range(3)
    ]
    rows.append(
        {"member_id": "nobody", "reference": "bulk-x", "spend_minor": 1000, "idempotency_key": "bx"}
    )
    first = enrolled.post("/v1/earn/bulk", json=rows, headers=op)
    assert first.status_code == 200, first.text
    result = first.json()
    assert (result["accepted"], result["replayed"]) == (3, 0)
    assert [(e["row"], e["idempotency_key"]) for e in result["rejected"]] == [
        (4, "bx")
    ]  # rows count from 1
    again = enrolled.post("/v1/earn/bulk", json=rows[:3], headers=op).json()
    assert (again["accepted"], again["replayed"], again["rejected"]) == (0, 3, [])

    before = snapshot(enrolled, keys, ALICE)
    bad_row = [rows[0] | {"spend_minor": 10.5, "idempotency_key": "b-float"}]
    assert enrolled.post("/v1/earn/bulk", json=bad_row, headers=op).status_code == 400
    too_many = [
        {
            "member_id": ALICE,
            "reference": f"many-{n}",
            "spend_minor": 100,
            "idempotency_key": f"m{n}",
        }
        for n in range(MAX_BULK_ROWS + 1)
    ]
    assert enrolled.post("/v1/earn/bulk", json=too_many, headers=op).status_code == 422
    assert enrolled.post("/v1/earn/bulk", json=rows[0], headers=op).status_code == 422
    assert snapshot(enrolled, keys, ALICE) == before


def test_ledger_documents_verify(
    enrolled: TestClient, node: NodeService, keys: dict[str, dict[str, str]]
) -> None:
    client, auditor = enrolled, keys["auditor"]
    first_header = node.ledger.flush()
    assert first_header is not None
    entry = write(
        client,
        REDEEM,
        {"amount": 25, "reference": "gift-p", "idempotency_key": "proof-1"},
        keys["member"],
    )
    assert client.get(f"/v1/ledger/entries/{entry['id']}", headers=auditor).status_code == 200
    second_header = node.ledger.flush()
    assert second_header is not None

    pem = client.get("/v1/ledger/public-key", headers=auditor)
    assert pem.status_code == 200
    assert pem.headers["content-type"].startswith("text/plain")
    key = VerifyKey.from_pem(pem.text.encode())
    assert key == node.public_key

    latest = client.get("/v1/ledger/headers/latest", headers=auditor)
    assert latest.status_code == 200, latest.text
    signed = SignedHeader.from_json(latest.json())
    signed.verify(key)
    assert signed == second_header

    listed = client.get("/v1/ledger/headers?start=0&limit=1000", headers=auditor).json()
    assert [SignedHeader.from_json(h) for h in listed][-1] == second_header
    for document in listed:
        SignedHeader.from_json(document).verify(key)

    height = second_header.header.height
    block = client.get(f"/v1/ledger/blocks/{height}", headers=auditor)
    assert block.status_code == 200, block.text
    assert SignedHeader.from_json(block.json()["header"]) == second_header
    assert entry in block.json()["entries"]

    found = client.get(f"/v1/ledger/entries/{entry['id']}", headers=auditor).json()
    assert found["entry"] == entry
    assert found["log_index"] is not None

    proof = client.get(f"/v1/ledger/entries/{entry['id']}/proof", headers=auditor)
    assert proof.status_code == 200, proof.text
    verify_inclusion_document(proof.json(), key)
    assert proof.json()["entry"] == entry

    first, second = first_header.header.height, second_header.header.height
    consistency = client.get(
        f"/v1/ledger/consistency?first={first}&second={second}", headers=auditor
    )
    assert consistency.status_code == 200, consistency.text
    verify_consistency_document(consistency.json(), key)

    tampered = proof.json()
    tampered["entry"] = tampered["entry"] | {"amount": 26}
    with pytest.raises(VerificationError):
        verify_inclusion_document(tampered, key)


def test_healthz_and_openapi(
    client: TestClient, node: NodeService, keys: dict[str, dict[str, str]]
) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    integrity = body["integrity"]
    assert body == {
        "status": "ok",
        "storage": None,
        "program": node.program,
        "log_size": 0,
        "pid": os.getpid(),
        "sealer": True,
        "read_only": False,
        "primary": None,
        "integrity": integrity,
    }
    assert integrity["status"] == "ok" and integrity["start_check"]["status"] == "ok"
    nothing_sealed = client.get("/v1/ledger/headers/latest", headers=keys["auditor"])
    assert nothing_sealed.status_code == 404
    assert nothing_sealed.json()["error"] == "not_found"

    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == f"Coalition node {node.program}"
    expected = {
        ("post", "/v1/members"),
        ("post", "/v1/members/{member_id}/earn"),
        ("post", "/v1/members/{member_id}/rewards"),
        ("post", "/v1/members/{member_id}/reversals"),
        ("post", "/v1/members/{member_id}/redemptions"),
        ("post", "/v1/members/{member_id}/transfers"),
        ("post", "/v1/members/{member_id}/adjustments"),
        ("post", "/v1/members/{member_id}/revocations"),
        ("post", "/v1/earn/bulk"),
        ("post", "/v1/jobs/expiry"),
        ("get", "/v1/members/{member_id}/balance"),
        ("get", "/v1/members/{member_id}/lots"),
        ("get", "/v1/members/{member_id}/history"),
        ("get", "/v1/ledger/public-key"),
        ("get", "/v1/ledger/key-rotations"),
        ("get", "/v1/ledger/headers/latest"),
        ("get", "/v1/ledger/headers"),
        ("get", "/v1/ledger/blocks/{height}"),
        ("get", "/v1/ledger/entries/{entry_id}"),
        ("get", "/v1/ledger/entries/{entry_id}/proof"),
        ("get", "/v1/ledger/consistency"),
        ("get", "/v1/ledger/bundle"),
        ("get", "/v1/explorer/about"),
        ("get", "/v1/explorer/flows"),
        ("get", "/v1/explorer/kinds"),
        ("post", "/v1/operator/keys"),
        ("get", "/v1/operator/keys"),
        ("post", "/v1/operator/keys/{name}/revoke"),
        ("get", "/healthz"),
    }
    listed = {(method, path) for path, ops in schema["paths"].items() for method in ops}
    assert expected == listed
    for path, ops in schema["paths"].items():
        for method, operation in ops.items():
            assert operation.get("summary"), (method, path)
            assert operation.get("tags"), (method, path)
            if path != "/healthz":
                assert operation.get("security"), (method, path)


def test_real_uvicorn_server(
    node: NodeService, authenticator: Authenticator, keys: dict[str, dict[str, str]]
) -> None:
    server, thread, port = serve_http(create_app(node, authenticator))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.get("/healthz").json()["program"] == node.program
            enrolled = http.post(
                "/v1/members",
                json={"member_id": ALICE, "idempotency_key": "e-a"},
                headers=keys["operator"],
            )
            assert enrolled.status_code == 201, enrolled.text
            assert http.get(f"/v1/members/{ALICE}/balance").status_code == 401
            balance = http.get(f"/v1/members/{ALICE}/balance", headers=keys["member"])
            assert balance.status_code == 200, balance.text
            assert balance.json()["spendable"] == 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_responses_are_not_held_back_by_the_clients_delayed_ack(
    node: NodeService, authenticator: Authenticator
) -> None:
    """Regression: uvicorn writes a response's headers and body in two segments; without
    TCP_NODELAY on the server's sockets the body waited for the client's delayed ACK, so
    every REST call took at least 40 ms (10 calls: 440 ms; now a few ms each)."""
    server, thread, port = serve_http(create_app(node, authenticator))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            http.get("/healthz")  # connect
            began = time.perf_counter()
            for _ in range(10):
                assert http.get("/healthz").status_code == 200
            elapsed = time.perf_counter() - began
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert elapsed < 0.3, f"10 calls took {elapsed * 1000:.0f} ms"
