"""The gRPC servers keep answering while streams are open, and every key has a rate
limit (issue 11, class 1): real servers on 127.0.0.1 over real channels, on SQLite and
PostgreSQL.

Before the fix each open WatchHeaders stream held one of 16 workers, so 16 streams with
a read-only auditor key stopped the health check, every query and every write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coalition.api.errors import RETRY_AFTER_METADATA
from coalition.api.grpc.client import NodeClient
from coalition.api.grpc.server import serve_grpc
from coalition.api.http.app import create_app
from coalition.api.http.server import serve_http
from coalition.demo.processes import NodeProcess, free_ports
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.node.config import load_config
from coalition.node.limits import DEFAULT_LIMITS, Limits, RequestRates
from coalition.node.service import NodeService
from coalition.ops.keygen import find_secret, generate_keys
from coalition.ops.tomlfiles import write_toml
from coalition.v1 import ledger_pb2, ledger_pb2_grpc

FAR_AHEAD = 10**9
"""An ``after_height`` no test reaches: an admitted stream stays open and silent."""
AUDITORS = 5
"""Auditor keys: five times the per-caller limit is more than the server-wide one."""


def auditor_secret(n: int) -> str:
    return f"auditor-secret-{n}"


@pytest.fixture
def keys(api_keys: dict[str, str]) -> Authenticator:
    """The usual operator key and ``AUDITORS`` read-only auditor keys."""
    auditors = [
        ApiKey(f"audit-{n}", key_digest(auditor_secret(n)), Role.AUDITOR) for n in range(AUDITORS)
    ]
    operator = ApiKey("ops", key_digest(api_keys["operator"]), Role.OPERATOR)
    return Authenticator([operator, *auditors])


def serve(node: NodeService, authenticator: Authenticator, limits: Limits) -> Iterator[int]:
    server, port = serve_grpc(node, authenticator, "127.0.0.1", 0, limits=limits)
    try:
        yield port
    finally:
        server.stop(0).wait(10)


@pytest.fixture
def port(node: NodeService, keys: Authenticator) -> Iterator[int]:
    yield from serve(node, keys, DEFAULT_LIMITS)


@pytest.fixture
def channel(port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as made:
        yield made


def open_streams(channel: grpc.Channel, secret: str, count: int) -> list[grpc.Future]:
    stub = ledger_pb2_grpc.LedgerStub(channel)
    request = ledger_pb2.WatchHeadersRequest(after_height=FAR_AHEAD)
    metadata = (("authorization", f"Bearer {secret}"),)
    return [stub.WatchHeaders(request, metadata=metadata, timeout=60) for _ in range(count)]


def settle(calls: list[grpc.Future], refused: int, seconds: float = 10) -> list[grpc.Future]:
    """Wait until ``refused`` calls have ended; return those still open. Each ended one
    MUST be a RESOURCE_EXHAUSTED refusal that names the limit."""
    deadline = time.monotonic() + seconds
    while sum(call.done() for call in calls) < refused and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a call past the limit is refused at once: none ends later
    ended = [call for call in calls if call.done()]
    assert len(ended) == refused
    for call in ended:
        assert call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams" in call.details()
    return [call for call in calls if not call.done()]


def still_answering(channel: grpc.Channel, port: int, operator_secret: str, member: str) -> None:
    """The health check, a unary query and a write answer within five seconds."""
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with NodeClient(f"127.0.0.1:{port}", operator_secret, timeout=5) as operator:
        assert not operator.enroll(member, idempotency_key=f"enroll-{member}").replayed
        assert operator.balance(member).spendable == 0


def test_streams_of_one_auditor_key_leave_the_server_answering(
    channel: grpc.Channel, port: int, api_keys: dict[str, str]
) -> None:
    per_caller = DEFAULT_LIMITS.max_streams_per_caller
    calls = open_streams(channel, auditor_secret(0), 2 * per_caller + 4)
    open_calls = settle(calls, refused=per_caller + 4)
    assert len(open_calls) == per_caller
    still_answering(channel, port, api_keys["operator"], "m-one-key")
    for call in open_calls:
        call.cancel()


def test_every_stream_slot_taken_leaves_the_server_answering(
    channel: grpc.Channel, port: int, api_keys: dict[str, str]
) -> None:
    limits = DEFAULT_LIMITS
    calls = [
        call
        for n in range(AUDITORS)
        for call in open_streams(channel, auditor_secret(n), limits.max_streams_per_caller)
    ]
    assert len(calls) > limits.max_streams
    open_calls = settle(calls, refused=len(calls) - limits.max_streams)
    assert len(open_calls) == limits.max_streams
    still_answering(channel, port, api_keys["operator"], "m-all-slots")
    # A closed stream gives its slot back: a new stream is admitted and gets headers.
    for call in open_calls:
        call.cancel()
    with NodeClient(f"127.0.0.1:{port}", api_keys["operator"], timeout=5) as operator:
        operator.enroll("m-after", idempotency_key="enroll-m-after")
        deadline = time.monotonic() + 10
        while True:
            try:
                watch = operator.watch_headers(-1, timeout=5)
                next(iter(watch))
                break
            except Exception:  # a slot not given back yet, or no header sealed yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        watch.cancel()


def test_the_limits_in_all_and_per_caller_refuse_with_their_names(
    node: NodeService, keys: Authenticator
) -> None:
    limits = Limits(max_streams=4, max_streams_per_caller=3)
    for port in serve(node, keys, limits):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            first = open_streams(channel, auditor_secret(0), 4)
            open_first = settle(first, refused=1)
            ended = next(call for call in first if call.done())
            assert "max_streams_per_caller = 3" in ended.details()
            second = open_streams(channel, auditor_secret(1), 2)
            settle(second, refused=1)
            ended = next(call for call in second if call.done())
            assert "max_streams = 4" in ended.details()
            for call in [*open_first, *second]:
                call.cancel()


def test_a_stream_refused_by_authentication_gives_its_slot_back(
    node: NodeService, keys: Authenticator, api_keys: dict[str, str]
) -> None:
    limits = Limits(max_streams=2, max_streams_per_caller=2)
    for port in serve(node, keys, limits):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(5):  # more than the server's slots, one after another
                (call,) = open_streams(channel, "no-such-key", 1)
                with pytest.raises(grpc.RpcError) as refused:
                    next(call)
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            still_answering(channel, port, api_keys["operator"], "m-auth")


# ---------------------------------------------------------------------- rate limits

RATE = Limits(requests_per_second=4.0, burst=3)


@pytest.fixture
def limited(api_keys: dict[str, str]) -> Authenticator:
    keys = [
        ApiKey("ops", key_digest(api_keys["operator"]), Role.OPERATOR),
        ApiKey("audit", key_digest(api_keys["auditor"]), Role.AUDITOR),
    ]
    return Authenticator(keys, RequestRates(RATE.requests_per_second, RATE.burst))


def test_a_key_over_its_rate_gets_429_with_retry_after_then_recovers(
    node: NodeService, limited: Authenticator, api_keys: dict[str, str]
) -> None:
    server, thread, port = serve_http(create_app(node, limited))
    operator = {"Authorization": f"Bearer {api_keys['operator']}"}
    auditor = {"Authorization": f"Bearer {api_keys['auditor']}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            codes = [http.get("/v1/ledger/headers", headers=operator) for _ in range(RATE.burst)]
            assert {r.status_code for r in codes} == {200}
            enroll = {"member_id": "m-rate", "idempotency_key": "k"}
            refused = http.post("/v1/members", json=enroll, headers=operator)
            assert refused.status_code == 429
            assert refused.json()["error"] == "resource_exhausted"
            assert "rate limit" in refused.json()["message"]
            assert refused.headers["Retry-After"] == "1"
            assert http.get("/v1/members/m-rate/balance", headers=operator).status_code == 429
            # Another key has its own bucket; the health check has none.
            assert http.get("/v1/ledger/headers", headers=auditor).status_code == 200
            assert http.get("/healthz").status_code == 200
            time.sleep(float(refused.headers["Retry-After"]))
            written = http.post("/v1/members", json=enroll, headers=operator)
            assert written.status_code == 201, written.text
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_key_over_its_rate_gets_resource_exhausted_with_a_retry_hint_then_recovers(
    node: NodeService, limited: Authenticator, api_keys: dict[str, str]
) -> None:
    for port in serve(node, limited, DEFAULT_LIMITS):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ledger_pb2_grpc.LedgerStub(channel)
            metadata = (("authorization", f"Bearer {api_keys['operator']}"),)
            request = ledger_pb2.GetLatestHeaderRequest()
            for _ in range(RATE.burst):
                stub.GetLatestHeader(request, metadata=metadata, timeout=5)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetLatestHeader(request, metadata=metadata, timeout=5)
            error = refused.value
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "rate limit" in error.details()
            trailers = dict(error.trailing_metadata())
            assert trailers[RETRY_AFTER_METADATA] == "1"
            with NodeClient(f"127.0.0.1:{port}", api_keys["auditor"], timeout=5) as auditor:
                assert auditor.health() == "SERVING"
                auditor.public_key_pem()  # another key, its own bucket
            time.sleep(float(trailers[RETRY_AFTER_METADATA]))
            with NodeClient(f"127.0.0.1:{port}", api_keys["operator"], timeout=5) as operator:
                assert not operator.enroll("m-grpc-rate", idempotency_key="k-rate").replayed


def test_a_running_node_takes_its_limits_from_node_toml(tmp_path: Path) -> None:
    """``coalition run`` wires the ``[limits]`` table into both transports."""
    grpc_port, http_port = free_ports(2)
    document = {
        "program": {"id": "testair", "name": "Test Air"},
        "node": {
            "database": "sqlite:///data/testair.db",
            "grpc": f"127.0.0.1:{grpc_port}",
            "http": f"127.0.0.1:{http_port}",
        },
        "limits": {"max_streams_per_caller": 1, "requests_per_second": 0.5, "burst": 2},
    }
    config_path = write_toml(tmp_path / "node.toml", document)
    config = load_config(config_path)
    generate_keys(config)
    operator, auditor = find_secret(config, Role.OPERATOR), find_secret(config, Role.AUDITOR)
    node = NodeProcess(
        config_path,
        grpc=f"127.0.0.1:{grpc_port}",
        http=f"127.0.0.1:{http_port}",
        log_path=tmp_path / "node.log",
    )
    node.start()
    try:
        node.wait_ready(60)
        headers = {"Authorization": f"Bearer {operator}"}
        with httpx.Client(base_url=f"http://{node.http}", timeout=10) as http:
            codes = [http.get("/v1/ledger/headers", headers=headers).status_code for _ in "ab"]
            assert codes == [200, 200]
            refused = http.get("/v1/ledger/headers", headers=headers)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
        with grpc.insecure_channel(node.grpc) as channel:
            calls = open_streams(channel, auditor, 3)
            assert len(settle(calls, refused=2)) == 1
            calls[0].cancel()
    finally:
        node.stop(60)
