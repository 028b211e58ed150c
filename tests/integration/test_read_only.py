"""Read-only processes for real: a private PostgreSQL primary and its hot standby
(``support.standby``), a ``coalition run`` node writing to the primary, and a second
``coalition run`` of the same node.toml's brand, ``[node] read_only = true``, on the
standby.

The read-only process answers reads as of what the standby replayed: headers, entries,
balances, history, a proof that verifies offline with the program's key, the bundle and
the explorer; it refuses every write, over gRPC (FAILED_PRECONDITION) and REST (409),
with a message naming the primary, and it seals nothing, runs no job and migrates
nothing: on a database whose schema is not this version's it refuses to start.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coalition.api.grpc.client import NodeClient
from coalition.demo.processes import NodeProcess, free_ports
from coalition.errors import CoalitionError, FailedPrecondition
from coalition.ledger.keys import VerifyKey
from coalition.ledger.proofs import verify_inclusion_document
from coalition.node.auth import Role
from coalition.node.config import load_config
from coalition.ops.keygen import find_secret, generate_keys
from coalition.ops.tomlfiles import write_toml

from support.databases import postgres_databases
from support.processes import healthz
from support.standby import Pair, pg_binaries_missing, primary_and_standby

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def standby(postgres_available: None) -> Iterator[Pair]:
    missing = pg_binaries_missing()
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"cannot run a private primary and standby in CI: {missing}")
        pytest.skip(missing)
    with primary_and_standby() as pair:
        yield pair


def write_node(folder: Path, name: str, node: dict[str, Any]) -> NodeProcess:
    """``folder/name`` for the brand testair on free ports, with ``node``'s settings."""
    grpc, http = (f"127.0.0.1:{p}" for p in free_ports(2))
    document = {
        "program": {"id": "testair", "name": "Test Air"},
        "node": {"grpc": grpc, "http": http, **node},
        "sealer": {"max_delay_ms": 20},
    }
    config = write_toml(folder / name, document)
    return NodeProcess(config, grpc=grpc, http=http, log_path=folder / f"{name}.log")


def rest(process: NodeProcess, key: str, path: str, body: object = None) -> tuple[int, Any]:
    """(status, JSON body) of a REST call to ``process``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{process.http}{path}",
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            raw = reply.read()
            status = reply.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def test_a_read_only_process_on_a_hot_standby_reads_and_refuses_writes(
    tmp_path: Path, standby: Pair
) -> None:
    primary = write_node(tmp_path, "node.toml", {"database": standby.primary_url})
    generate_keys(load_config(primary.config_path))
    replica = write_node(
        tmp_path,
        "standby.toml",
        {"database": standby.standby_url, "read_only": True, "primary": primary.grpc},
    )
    config = load_config(primary.config_path)
    key = find_secret(config, Role.OPERATOR)
    public_key = VerifyKey.from_pem((tmp_path / "keys" / "public_key.pem").read_bytes())
    try:
        primary.start()
        primary.wait_ready(60)
        with NodeClient(primary.grpc, key) as client:
            client.enroll("alice", idempotency_key="e-alice")
            earned = client.earn_purchase("alice", "r1", 12_00, idempotency_key="earn-1").entry
            balance = client.balance("alice")
        replica.start()
        replica.wait_ready(60)
        deadline = time.monotonic() + 30
        while healthz(replica)["log_size"] < 2:  # sealed on the primary, replayed here
            assert time.monotonic() < deadline, replica.log_tail()
            time.sleep(0.1)
        health = healthz(replica)
        assert health["sealer"] is False and health["log_size"] == healthz(primary)["log_size"]
        # A load balancer learns from /healthz alone where this process's writes go.
        assert health["read_only"] is True and health["primary"] == primary.grpc
        assert healthz(primary)["read_only"] is False and healthz(primary)["primary"] is None

        with NodeClient(replica.grpc, key) as client:
            assert client.balance("alice") == balance
            assert client.history("alice")[0].entry["id"] == earned["id"]
            assert client.latest_header() is not None and len(client.headers(0)) >= 1
            proof = client.inclusion_proof(str(earned["id"]))
            verify_inclusion_document(proof, public_key)  # offline, with the program's key
            with pytest.raises(FailedPrecondition, match=f"read-only.*primary at {primary.grpc}"):
                client.enroll("bob", idempotency_key="e-bob")
            with pytest.raises(FailedPrecondition, match=primary.grpc):
                client.earn_purchase("alice", "r2", 5_00, idempotency_key="earn-2")
            with pytest.raises(FailedPrecondition, match=primary.grpc):
                client.run_expiry()
            with pytest.raises(FailedPrecondition, match=primary.grpc):
                client.enroll("alice", idempotency_key="e-alice")  # even a replay

        status, body = rest(
            replica, key, "/v1/members", {"member_id": "bob", "idempotency_key": "e-bob"}
        )
        assert status == 409, body
        assert body["error"] == "failed_precondition" and primary.grpc in body["message"]
        status, body = rest(replica, key, "/v1/members/alice/balance")
        assert status == 200 and body["spendable"] == balance.spendable
        status, body = rest(replica, key, f"/v1/ledger/entries/{earned['id']}/proof")
        assert status == 200
        verify_inclusion_document(body, public_key)
        status, bundle = rest(replica, key, "/v1/ledger/bundle")
        assert status == 200 and earned["id"] in str(bundle)
        status, about = rest(replica, key, "/v1/explorer/about")
        assert status == 200 and about["log_size"] == health["log_size"]
        status, page = rest(replica, key, "/explorer/")
        assert status == 200 and "<html" in str(page).lower()

        with NodeClient(primary.grpc, key) as client:  # the primary goes on writing
            client.enroll("bob", idempotency_key="e-bob")
        while healthz(replica)["log_size"] < 3:
            assert time.monotonic() < deadline + 30, replica.log_tail()
            time.sleep(0.1)
        with NodeClient(replica.grpc, key) as client:
            assert client.balance("bob").spendable == 0
            # sealed by the primary after this process started: known as sealed here
            assert client.history("bob")[0].log_index == 2
            assert client.entry(str(client.history("bob")[0].entry["id"])).log_index == 2
    finally:
        failures = []
        for process in (replica, primary):
            try:
                process.stop()
            except CoalitionError as exc:
                failures.append(exc)
    assert not failures, failures
    log = replica.log_text()
    assert "read-only (writes go to" in log and "read-only node testair stopped" in log
    assert "expired" not in log


def test_a_read_only_process_migrates_nothing(tmp_path: Path, postgres_available: None) -> None:
    with postgres_databases(["empty"]) as urls:
        replica = write_node(
            tmp_path,
            "node.toml",
            {"database": urls["empty"], "read_only": True, "primary": "primary.example:50051"},
        )
        generate_keys(load_config(replica.config_path))
        replica.start()
        with pytest.raises(CoalitionError, match="exited with 1") as caught:
            replica.wait_ready(60)
        assert "a read-only process migrates nothing" in str(caught.value)
        assert "upgrade the primary (primary.example:50051) first" in str(caught.value)
        with pytest.raises(CoalitionError):
            replica.stop()
