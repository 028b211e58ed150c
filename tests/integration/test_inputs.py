"""Issue 11's input-handling classes, each guarded on real servers on loopback (uvicorn
and gRPC, SQLite and PostgreSQL): the body gate (key before body, size limit, the one
JSON parser), short refusals, the error shape, malformed protobuf, the bearer scheme and
the response headers. Every refusal is followed by a check that nothing moved."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from coalition.api.errors import MAX_MESSAGE_CHARS
from coalition.api.grpc.client import NodeClient
from coalition.api.grpc.server import serve_grpc
from coalition.api.http.app import create_app
from coalition.api.http.body import MAX_BODY_BYTES
from coalition.api.http.server import serve_http
from coalition.errors import InvalidArgument
from coalition.node.auth import Authenticator
from coalition.node.service import NodeService
from coalition.v1 import points_pb2

ALICE = "alice"
REDEEM = f"/v1/members/{ALICE}/redemptions"


@pytest.fixture
def http(node: NodeService, authenticator: Authenticator) -> Iterator[httpx.Client]:
    server, thread, port = serve_http(create_app(node, authenticator))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def op(api_keys: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_keys['operator']}"}


@pytest.fixture
def enrolled(http: httpx.Client, op: dict[str, str]) -> httpx.Client:
    """Alice enrolled with 1000 spendable points."""
    assert http.post("/v1/members", json={"member_id": ALICE}, headers=op | idem("e")).is_success
    seed = {"amount": 1000, "operator": "ops", "note": "welcome"}
    response = http.post(f"/v1/members/{ALICE}/adjustments", json=seed, headers=op | idem("s"))
    assert response.status_code == 201, response.text
    return http


def idem(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def state(http: httpx.Client, op: dict[str, str]) -> Any:
    balance = http.get(f"/v1/members/{ALICE}/balance", headers=op)
    history = http.get(f"/v1/members/{ALICE}/history?limit=1000", headers=op)
    assert balance.status_code == history.status_code == 200
    return balance.json(), [item["entry"] for item in history.json()]


def raw_post(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """Send a request's head and the start of its body on a raw socket and read the
    answer without sending the rest: what the server does before reading a body."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
            _header(answer, b"content-length") or 0
        ):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def _header(answer: bytes, name: bytes) -> bytes | None:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _port(http: httpx.Client) -> int:
    port = http.base_url.port
    assert port is not None
    return port


# --------------------------------------------------------------------- class 2: bodies


def test_a_large_body_without_a_key_is_refused_before_it_is_read(http: httpx.Client) -> None:
    declared = 150 * 1024 * 1024
    started = time.monotonic()
    status, body = raw_post(
        _port(http),
        REDEEM,
        {"Content-Type": "application/json", "Content-Length": str(declared)},
        b'{"amount": 1' + b" " * 4096,  # the 150 MiB are never sent
    )
    assert status == 401
    assert json.loads(body)["error"] == "unauthenticated"
    assert time.monotonic() - started < 5


def test_a_body_over_the_limit_is_refused_with_413(
    enrolled: httpx.Client, op: dict[str, str]
) -> None:
    before = state(enrolled, op)
    headers = op | idem("big") | {"Content-Type": "application/json"}
    status, body = raw_post(
        _port(enrolled), REDEEM, headers | {"Content-Length": str(MAX_BODY_BYTES + 1)}, b"{"
    )
    assert status == 413
    refusal = json.loads(body)
    assert refusal["error"] == "request_too_large"
    assert "MAX_BODY_BYTES" in refusal["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, refused while read
        yield b'{"amount": 10, "reference": "g", "pad": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = enrolled.post(REDEEM, content=chunks(), headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "request_too_large"
    assert state(enrolled, op) == before


def test_a_refusal_quotes_only_a_short_prefix_of_the_refused_value(
    enrolled: httpx.Client,
    op: dict[str, str],
    node: NodeService,
    authenticator: Authenticator,
    api_keys: dict[str, str],
) -> None:
    before = state(enrolled, op)
    note = "n" * (2 * 1024 * 1024)
    response = enrolled.post(
        f"/v1/members/{ALICE}/adjustments",
        json={"amount": 1, "operator": "ops", "note": note},
        headers=op | idem("long"),
    )
    assert response.status_code == 400, response.text[:200]
    assert len(response.content) < 400
    assert "2,097,152 characters" in response.json()["message"]
    long_category = {"reference": "r", "spend_minor": 100, "category": "c" * 1_000_000}
    response = enrolled.post(
        f"/v1/members/{ALICE}/earn", json=long_category, headers=op | idem("category")
    )
    assert response.status_code == 400
    assert len(response.content) < 400
    bad_id = "x!" * 100_000
    response = enrolled.post("/v1/members", json={"member_id": bad_id}, headers=op | idem("id"))
    assert response.status_code == 400
    assert len(response.content) < 400
    assert state(enrolled, op) == before

    server, port = serve_grpc(node, authenticator, "127.0.0.1", 0)
    try:
        with NodeClient(f"127.0.0.1:{port}", api_keys["operator"]) as client:
            with pytest.raises(InvalidArgument) as refused:  # not RESOURCE_EXHAUSTED
                client.adjust(ALICE, 1, "ops", note, idempotency_key="long-grpc")
            assert len(str(refused.value)) <= MAX_MESSAGE_CHARS
            with pytest.raises(InvalidArgument) as refused:
                client.transfer(ALICE, bad_id, 1, "n", idempotency_key="id-grpc")
            assert len(str(refused.value)) < 400
    finally:
        server.stop(None).wait(10)
    assert state(enrolled, op) == before


# ------------------------------------------------ classes 4 and 6: one strict JSON parser


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b'{"amount": NaN, "reference": "g"}', "NaN"),
        (b'{"amount": Infinity, "reference": "g"}', "Infinity"),
        (b'{"amount": -Infinity, "reference": "g"}', "-Infinity"),
        (b'{"amount": 1E400, "reference": "g"}', "1E400"),
        (b'{"amount": 10, "reference": "g", "x": [1, {"y": NaN}]}', "NaN"),
        (b'{"amount": 10, "reference": "g", "x": {"y": 1E400}}', "1E400"),
        (b'{"amount": 1, "amount": 2, "reference": "g"}', "duplicate object key 'amount'"),
        (b'{"amount": 10.0, "reference": "g"}', "floating-point"),
        (b'{"amount": 9007199254740992, "reference": "g"}', "2**53"),
        (b'{"amount": 10, "reference": "g"', "invalid JSON"),
    ],
)
def test_json_bodies_go_through_the_one_strict_parser(
    enrolled: httpx.Client, op: dict[str, str], text: bytes, says: str
) -> None:
    before = state(enrolled, op)
    headers = op | idem("strict") | {"Content-Type": "application/json"}
    response = enrolled.post(REDEEM, content=text, headers=headers)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error", "message"}
    assert response.json()["error"] == "invalid_argument"
    assert says in response.json()["message"]
    assert state(enrolled, op) == before


def test_the_bulk_earn_body_goes_through_the_same_parser(
    enrolled: httpx.Client, op: dict[str, str]
) -> None:
    before = state(enrolled, op)
    row = b'{"member_id": "alice", "reference": "r", "spend_minor": 100, "idempotency_key": "k"'
    for text in (b"[" + row + b', "spend_minor": 5}]', b"[" + row + b', "x": NaN}]'):
        response = enrolled.post(
            "/v1/earn/bulk", content=text, headers=op | {"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
    assert state(enrolled, op) == before


def test_no_transport_module_parses_json_itself() -> None:
    """One parser for every transport: the edges call ``ledger.canonical.parse_json``
    (through the body gate over HTTP), never their own decoder."""
    api = Path(__file__).parents[2] / "src" / "coalition" / "api"
    offenders = [
        str(path.relative_to(api))
        for path in api.rglob("*.py")
        for needle in ("json.loads", "orjson.loads", "msgspec.json.decode", ".json()")
        if needle in path.read_text()
    ]
    assert offenders == []


# ------------------------------------------------------------ class 8: the error shape


def test_every_refusal_has_the_documented_error_shape(
    enrolled: httpx.Client, op: dict[str, str]
) -> None:
    cases = [
        (
            enrolled.post(REDEEM, json={"amount": "10", "reference": "g"}, headers=op | idem("t")),
            422,
        ),
        (enrolled.post(REDEEM, json={"reference": "g"}, headers=op | idem("m")), 422),
        (enrolled.post(REDEEM, json={"amount": 10, "reference": "g"}, headers=op), 400),
        (enrolled.get("/v1/no-such-route", headers=op), 404),
        (enrolled.put("/v1/members", headers=op), 405),
        (enrolled.post(REDEEM, json={"amount": 10, "reference": "g"}), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error", "message"}, response.text
        assert response.json()["message"]
    missing_key = cases[2][0].json()["message"]
    assert "idempotency key" in missing_key


def test_openapi_says_the_idempotency_key_is_required(enrolled: httpx.Client) -> None:
    document = enrolled.get("/openapi.json").json()
    operation = document["paths"]["/v1/members/{member_id}/redemptions"]["post"]
    header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
    assert header["description"].startswith("Required on every write")
    for status in ("400", "401", "403", "404", "409", "413", "422"):
        assert status in operation["responses"], status
    error_ref = operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert error_ref.endswith("/ErrorOut")
    assert f"{MAX_BODY_BYTES:,} bytes" in document["info"]["description"]


# ---------------------------------------------------------- class 7: malformed protobuf


GARBAGE = (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f")


@pytest.mark.parametrize(
    "method",
    [
        "/coalition.v1.Points/Redeem",
        "/coalition.v1.Points/GetBalance",
        "/coalition.v1.Ledger/GetHeaders",
        "/coalition.v1.Ledger/WatchHeaders",
        "/grpc.health.v1.Health/Check",
    ],
)
def test_malformed_protobuf_is_invalid_argument(
    node: NodeService, authenticator: Authenticator, api_keys: dict[str, str], method: str
) -> None:
    server, port = serve_grpc(node, authenticator, "127.0.0.1", 0)
    metadata = (("authorization", f"Bearer {api_keys['operator']}"),)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for garbage in GARBAGE:
                if "WatchHeaders" in method:
                    call: Any = channel.unary_stream(method)
                    with pytest.raises(grpc.RpcError) as failed:
                        list(call(garbage, metadata=metadata, timeout=10))
                else:
                    with pytest.raises(grpc.RpcError) as failed:
                        channel.unary_unary(method)(garbage, metadata=metadata, timeout=10)
                assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "malformed request message" in str(failed.value.details())
            stream = channel.stream_unary("/coalition.v1.Points/EarnBulk")
            with pytest.raises(grpc.RpcError) as failed:
                stream(iter(GARBAGE), metadata=metadata, timeout=10)
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(None).wait(10)


# ------------------------------------------------------- class 11: the bearer scheme


def test_the_bearer_scheme_is_case_insensitive(
    enrolled: httpx.Client,
    api_keys: dict[str, str],
    node: NodeService,
    authenticator: Authenticator,
) -> None:
    secret = api_keys["operator"]
    for scheme in ("bearer", "BEARER", "Bearer"):
        response = enrolled.get(
            f"/v1/members/{ALICE}/balance", headers={"Authorization": f"{scheme} {secret}"}
        )
        assert response.status_code == 200, (scheme, response.text)
    server, port = serve_grpc(node, authenticator, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            balance = channel.unary_unary("/coalition.v1.Points/GetBalance")
            request = points_pb2.GetBalanceRequest(member_id=ALICE).SerializeToString()
            reply = balance(request, metadata=(("authorization", f"bearer {secret}"),))
            assert reply and check(b"", timeout=10) is not None
    finally:
        server.stop(None).wait(10)


# ----------------------------------------------------------- class 13: headers and docs


def test_api_answers_carry_no_store_and_security_headers(
    enrolled: httpx.Client, op: dict[str, str]
) -> None:
    answers = [
        enrolled.get(f"/v1/members/{ALICE}/balance", headers=op),
        enrolled.post(REDEEM, json={"amount": 10}, headers=op),  # refused by the schema
        enrolled.post(REDEEM, json={"amount": 10, "reference": "g"}),  # refused by the gate
        enrolled.get("/openapi.json"),
        enrolled.get("/healthz"),
    ]
    for response in answers:
        assert response.headers["cache-control"] == "no-store", response.url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
    page = enrolled.get("/explorer/")
    assert page.headers["cache-control"] == "no-cache"  # the explorer's own, kept
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_docs_pages_that_would_load_a_cdn_are_off(enrolled: httpx.Client) -> None:
    for path in ("/docs", "/redoc"):
        assert enrolled.get(path).status_code == 404
    document = enrolled.get("/openapi.json")
    assert document.status_code == 200
    assert document.json()["paths"]
