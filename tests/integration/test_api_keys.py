"""API keys issued, listed, expired and revoked at run time (issue 11, "What to build" 3),
on SQLite and PostgreSQL: through the store the CLI and the routes share, through the
REST routes, through ``coalition keys``, and across two services on one PostgreSQL
database (a change made by one is in force in the other within the poll bound)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from coalition.api.grpc.server import serve_grpc
from coalition.api.http.app import create_app
from coalition.cli import main
from coalition.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from coalition.node.api_keys import ApiKeyStore
from coalition.node.auth import (
    POLL_INTERVAL_S,
    Action,
    ApiKey,
    Authenticator,
    Role,
    key_digest,
)
from coalition.node.config import load_config
from coalition.node.service import NodeService
from coalition.ops.keygen import find_secret, generate_keys
from coalition.ops.tomlfiles import write_toml
from coalition.runtime.wiring import build_node
from coalition.store.db import make_engine
from coalition.v1 import keys_pb2, keys_pb2_grpc, ledger_pb2, ledger_pb2_grpc

from support.databases import at_current_schema
from support.nodes import Clock

FILE_OPERATOR = ApiKey("ops-file", key_digest("file-operator-secret"), Role.OPERATOR)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    at_current_schema(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def test_an_issued_key_works_and_a_revoked_one_is_refused_with_a_message(engine: Engine) -> None:
    store = ApiKeyStore(engine)
    auth = Authenticator([FILE_OPERATOR], issued=store, poll_interval_s=0)
    issued = store.issue("alice-app", Role.MEMBER, "alice")
    assert issued.secret.startswith("ck_") and issued.key.digest == key_digest(issued.secret)
    principal = auth.check(bearer(issued.secret), Action.MEMBER_READ, "alice")
    assert (principal.name, principal.role, principal.member_id) == (
        "alice-app",
        Role.MEMBER,
        "alice",
    )
    with pytest.raises(Exception, match="only act on its own account"):
        auth.check(bearer(issued.secret), Action.MEMBER_READ, "bob")
    store.revoke("alice-app")
    with pytest.raises(Unauthenticated, match=r"'alice-app' was revoked at .*new key"):
        auth.check(bearer(issued.secret), Action.MEMBER_READ, "alice")
    assert auth.check(bearer("file-operator-secret"), Action.OPERATE).name == "ops-file"


def test_a_key_past_its_expiry_is_refused_with_a_message(engine: Engine) -> None:
    clock = Clock()
    store = ApiKeyStore(engine, clock)
    auth = Authenticator([], issued=store, clock=clock, poll_interval_s=0)
    issued = store.issue("nightly", Role.AUDITOR, expires_at=clock.now + timedelta(hours=1))
    assert auth.check(bearer(issued.secret), Action.LEDGER_READ).name == "nightly"
    clock.advance(minutes=59, seconds=59)
    assert auth.check(bearer(issued.secret), Action.LEDGER_READ).name == "nightly"
    clock.advance(seconds=1)
    with pytest.raises(Unauthenticated, match=r"'nightly' expired at 2026-01-01T13:00:00"):
        auth.check(bearer(issued.secret), Action.LEDGER_READ)
    with pytest.raises(InvalidArgument, match="not in the future"):
        store.issue("late", Role.AUDITOR, expires_at=clock.now)


def test_bad_issues_and_revocations_are_refused_and_change_nothing(engine: Engine) -> None:
    store = ApiKeyStore(engine)
    store.issue("ops-2", Role.OPERATOR)
    refused: list[tuple[type[Exception], str, object]] = [
        (InvalidArgument, "needs the member_id", lambda: store.issue("m", Role.MEMBER)),
        (InvalidArgument, "only member keys", lambda: store.issue("a", "auditor", "alice")),
        (InvalidArgument, "unknown role", lambda: store.issue("x", "admin")),
        (InvalidArgument, "malformed API key name", lambda: store.issue("", "auditor")),
        (InvalidArgument, "malformed member id", lambda: store.issue("m", "member", "a b")),
        (FailedPrecondition, "is taken", lambda: store.issue("ops-2", Role.AUDITOR)),
        (
            FailedPrecondition,
            "taken by the keys file",
            lambda: store.issue("ops-file", Role.AUDITOR, file_keys=[FILE_OPERATOR]),
        ),
        (NotFound, "no API key named", lambda: store.revoke("nobody")),
        (
            FailedPrecondition,
            "comes from the node's keys file",
            lambda: store.revoke("ops-file", file_keys=[FILE_OPERATOR]),
        ),
    ]
    standby = ApiKeyStore(engine, read_only_primary=("testair", "10.0.0.1:8080"))
    refused += [
        (FailedPrecondition, "send writes to the primary", lambda: standby.issue("s", "auditor")),
        (FailedPrecondition, "send writes to the primary", lambda: standby.revoke("ops-2")),
    ]
    for kind, message, call in refused:
        with pytest.raises(kind, match=message):
            call()  # type: ignore[operator]
    assert [k.name for k in standby.issued()] == ["ops-2"], "a standby lists the keys"
    assert [(k.name, k.revoked_at) for k in store.issued()] == [("ops-2", None)]


def test_the_last_usable_operator_key_cannot_be_revoked(engine: Engine) -> None:
    clock = Clock()
    store = ApiKeyStore(engine, clock)
    store.issue("ops-1", Role.OPERATOR)
    store.issue("ops-2", Role.OPERATOR)
    store.issue("ops-brief", Role.OPERATOR, expires_at=clock.now + timedelta(minutes=5))
    store.revoke("ops-2")
    clock.advance(minutes=5)  # an expired operator key is no one left to manage the node
    with pytest.raises(FailedPrecondition, match="last usable operator key"):
        store.revoke("ops-1")
    assert [k.name for k in store.issued() if k.usable(clock.now)] == ["ops-1"]
    with pytest.raises(FailedPrecondition, match="already revoked"):
        store.revoke("ops-2")
    assert store.revoke("ops-1", file_keys=[FILE_OPERATOR]).revoked_at == clock.now


def test_a_list_shows_no_secret_or_digest(node: NodeService) -> None:
    auth = Authenticator([FILE_OPERATOR], issued=node.api_keys, poll_interval_s=0)
    operator = {"Authorization": bearer("file-operator-secret")}
    with TestClient(create_app(node, auth)) as client:
        body = {"name": "reporting", "role": "auditor", "expires_at": "2099-01-01T00:00:00Z"}
        response = client.post("/v1/operator/keys", json=body, headers=operator)
        assert response.status_code == 201, response.text
        secret = response.json()["secret"]
        listed = client.get("/v1/operator/keys", headers=operator)
        assert listed.status_code == 200
        assert secret not in listed.text and key_digest(secret) not in listed.text
        assert {(k["name"], k["source"], k["usable"]) for k in listed.json()} == {
            ("ops-file", "file", True),
            ("reporting", "database", True),
        }
        assert set(listed.json()[1]) == {
            "name",
            "role",
            "member_id",
            "source",
            "created_at",
            "expires_at",
            "revoked_at",
            "usable",
        }


def test_rest_issue_use_revoke_round_trip(node: NodeService) -> None:
    auth = Authenticator([FILE_OPERATOR], issued=node.api_keys, poll_interval_s=0)
    operator = {"Authorization": bearer("file-operator-secret")}
    with TestClient(create_app(node, auth)) as client:
        body = {"name": "audit-1", "role": "auditor"}
        secret = client.post("/v1/operator/keys", json=body, headers=operator).json()["secret"]
        auditor = {"Authorization": bearer(secret)}
        assert client.get("/v1/ledger/headers", headers=auditor).status_code == 200
        assert client.get("/v1/operator/keys", headers=auditor).status_code == 403
        again = client.post("/v1/operator/keys", json=body, headers=operator)
        assert again.status_code == 409 and "is taken" in again.json()["message"]
        member = {"name": "m", "role": "member"}
        bad = client.post("/v1/operator/keys", json=member, headers=operator)
        assert bad.status_code == 400 and "member_id" in bad.json()["message"]
        revoked = client.post("/v1/operator/keys/audit-1/revoke", headers=operator)
        assert revoked.status_code == 200 and revoked.json()["usable"] is False
        refused = client.get("/v1/ledger/headers", headers=auditor)
        assert refused.status_code == 401
        assert "'audit-1' was revoked" in refused.json()["message"]
        last = client.post("/v1/operator/keys/ops-file/revoke", headers=operator)
        assert last.status_code == 409 and "keys file" in last.json()["message"]


@pytest.mark.postgres
def test_a_change_is_in_force_in_another_service_on_the_same_database_within_the_bound(
    postgres_available: None,
) -> None:
    """Two services (two engines, two authenticators with the production poll interval)
    on one PostgreSQL database, as two processes of a node are."""
    from support.databases import postgres_schema

    with postgres_schema() as url:
        at_current_schema(url)
        engines = [make_engine(url), make_engine(url)]
        try:
            here, there = (ApiKeyStore(e) for e in engines)
            writer = Authenticator([FILE_OPERATOR], issued=here)
            reader = Authenticator([FILE_OPERATOR], issued=there)
            assert not _accepted(reader, "never-issued")
            issued = here.issue("shared", Role.AUDITOR)
            _wait_out_the_bound(time.monotonic())
            assert _accepted(reader, issued.secret), "issued in one, accepted in the other"
            here.revoke("shared")
            _wait_out_the_bound(time.monotonic())
            assert not _accepted(reader, issued.secret), "revoked in one, refused in the other"
            with pytest.raises(Unauthenticated, match="was revoked"):
                writer.check(bearer(issued.secret), Action.LEDGER_READ)
        finally:
            for engine in engines:
                engine.dispose()


def _accepted(auth: Authenticator, secret: str) -> bool:
    try:
        auth.check(bearer(secret), Action.LEDGER_READ)
    except Unauthenticated:
        return False
    return True


def test_cli_keys_issue_list_revoke_round_trip(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {"program": {"id": "testair"}, "node": {"database": database_url}}
    config_path = write_toml(tmp_path / "node.toml", document)
    config = load_config(config_path)
    generate_keys(config)
    build_node(config).close()  # the node migrated its database once
    args = ["keys", "issue", "--config", str(config_path), "--name", "kiosk"]
    assert main([*args, "--role", "member", "--member-id", "alice", "--expires-in", "30d"]) == 0
    out = capsys.readouterr().out
    secret = out.split("secret ", 1)[1].split()[0]
    assert "kiosk" in out and "usable" in out and "shown once" in out
    assert main(["keys", "list", "--config", str(config_path)]) == 0
    listed = capsys.readouterr().out
    assert secret not in listed and "kiosk" in listed and "operator" in listed
    operator = find_secret(config, Role.OPERATOR)
    assert operator not in listed
    engine = make_engine(config.database_url)
    try:
        auth = Authenticator([], issued=ApiKeyStore(engine), poll_interval_s=0)
        assert auth.check(bearer(secret), Action.MEMBER_SPEND, "alice").name == "kiosk"
        assert main(["keys", "revoke", "--config", str(config_path), "--name", "kiosk"]) == 0
        assert "revoked" in capsys.readouterr().out
        with pytest.raises(Unauthenticated, match="was revoked"):
            auth.check(bearer(secret), Action.MEMBER_SPEND, "alice")
    finally:
        engine.dispose()
    assert main(["keys", "revoke", "--config", str(config_path), "--name", "operator"]) == 1
    assert "keys file" in capsys.readouterr().err


def test_grpc_issue_list_revoke_round_trip(node: NodeService) -> None:
    auth = Authenticator([FILE_OPERATOR], issued=node.api_keys, poll_interval_s=0)
    server, port = serve_grpc(node, auth)
    operator = (("authorization", bearer("file-operator-secret")),)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            keys = keys_pb2_grpc.ApiKeysStub(channel)
            request = keys_pb2.IssueKeyRequest(
                name="pos-7", role="member", member_id="alice", expires_at="2099-01-01T00:00:00Z"
            )
            issued = keys.IssueKey(request, metadata=operator, timeout=10)
            assert issued.key.usable and issued.key.source == "database"
            member = (("authorization", bearer(issued.secret)),)
            with pytest.raises(grpc.RpcError) as denied:
                keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=member, timeout=10)
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
            listed = keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=operator, timeout=10)
            assert [k.name for k in listed.keys] == ["ops-file", "pos-7"]
            assert issued.secret not in str(listed)
            with pytest.raises(grpc.RpcError) as bad:
                keys.IssueKey(
                    keys_pb2.IssueKeyRequest(name="x", role="auditor", expires_at="soon"),
                    metadata=operator,
                    timeout=10,
                )
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "RFC 3339" in (bad.value.details() or "")
            revoked = keys.RevokeKey(
                keys_pb2.RevokeKeyRequest(name="pos-7"), metadata=operator, timeout=10
            )
            assert revoked.revoked_at and not revoked.usable
            with pytest.raises(grpc.RpcError) as refused:
                keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=member, timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "'pos-7' was revoked" in (refused.value.details() or "")
            with pytest.raises(grpc.RpcError) as last:
                keys.RevokeKey(
                    keys_pb2.RevokeKeyRequest(name="ops-file"), metadata=operator, timeout=10
                )
            assert last.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        server.stop(None).wait(10)


def test_a_keys_file_reload_keeps_the_issued_keys(engine: Engine) -> None:
    store = ApiKeyStore(engine)
    issued = store.issue("batch", Role.AUDITOR)
    auth = Authenticator([FILE_OPERATOR], issued=store, poll_interval_s=0)
    assert auth.replace([ApiKey("ops-new", key_digest("new-secret"), Role.OPERATOR)]) == 1
    assert auth.check(bearer(issued.secret), Action.LEDGER_READ).name == "batch"
    assert auth.check(bearer("new-secret"), Action.OPERATE).name == "ops-new"
    with pytest.raises(Unauthenticated, match="unknown API key"):
        auth.check(bearer("file-operator-secret"), Action.OPERATE)


@pytest.mark.postgres
@pytest.mark.slow
def test_every_process_of_a_running_node_takes_an_issue_and_a_revocation(
    tmp_path: Path, postgres_available: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``coalition run --processes 2`` on one PostgreSQL database: a key issued and then
    revoked with ``coalition keys`` against the database is accepted, then refused, by
    every worker (each new connection may reach either) within the poll bound."""
    from coalition.demo.processes import NodeProcess, free_ports

    from support.databases import postgres_databases

    with postgres_databases(["testair"]) as urls:
        ports = free_ports(2)
        grpc_address, http = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
        document = {
            "program": {"id": "testair"},
            "node": {"database": urls["testair"], "grpc": grpc_address, "http": http},
        }
        config_path = write_toml(tmp_path / "node.toml", document)
        generate_keys(load_config(config_path))
        node = NodeProcess(
            config_path,
            grpc=grpc_address,
            http=http,
            log_path=tmp_path / "node.log",
            args=("--processes", "2"),
        )
        node.start()
        try:
            node.wait_ready(60)
            deadline = time.monotonic() + 60
            while node.log_text().count("serving gRPC") < 2:
                assert time.monotonic() < deadline, node.log_tail()
                time.sleep(0.2)
            config = str(config_path)
            issue = ["keys", "issue", "--config", config, "--name", "ci", "--role", "auditor"]
            assert main(issue) == 0
            secret = capsys.readouterr().out.split("secret ", 1)[1].split()[0]
            _wait_out_the_bound(time.monotonic())
            assert _statuses(http, secret) == {200}, "every worker takes the new key"
            assert main(["keys", "revoke", "--config", config, "--name", "ci"]) == 0
            _wait_out_the_bound(time.monotonic())
            assert _statuses(http, secret) == {401}, "every worker refuses the revoked key"
            assert node.running, node.log_tail()
        finally:
            node.stop(90)


SLACK_S = 1.0
"""The "one query" of the bound, generous for a loaded CI machine."""


def _wait_out_the_bound(changed_at: float) -> None:
    """Sleep until ``POLL_INTERVAL_S`` plus ``SLACK_S`` after a change committed."""
    time.sleep(max(0.0, changed_at + POLL_INTERVAL_S + SLACK_S - time.monotonic()))


def _statuses(http: str, secret: str, tries: int = 10) -> set[int]:
    """Statuses of a ledger read with ``secret``, each on a new connection, so that each
    worker behind the shared port is asked."""
    found = set()
    for _ in range(tries):
        with httpx.Client(base_url=f"http://{http}", timeout=10) as client:
            response = client.get("/v1/ledger/headers", headers={"Authorization": bearer(secret)})
        found.add(response.status_code)
    return found


def test_an_open_header_stream_ends_when_its_key_is_revoked(node: NodeService) -> None:
    auth = Authenticator([FILE_OPERATOR], issued=node.api_keys, poll_interval_s=0)
    issued = node.api_keys.issue("watcher", Role.AUDITOR)
    server, port = serve_grpc(node, auth)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ledger = ledger_pb2_grpc.LedgerStub(channel)
            stream = ledger.WatchHeaders(
                ledger_pb2.WatchHeadersRequest(after_height=-1),
                metadata=(("authorization", bearer(issued.secret)),),
                timeout=30,
            )
            node.points.enroll("alice", idempotency_key="enroll-alice")
            assert next(stream).signed_header_json, "the stream serves while the key is usable"
            node.api_keys.revoke("watcher")
            node.points.enroll("bob", idempotency_key="enroll-bob")
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)
            assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "'watcher' was revoked" in (ended.value.details() or "")
    finally:
        server.stop(None).wait(10)
