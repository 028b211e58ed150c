"""TLS on the member/operator ports (issue 11, "What to build" 3): a node whose
``node.toml`` has ``[tls] cert/key`` serves REST and gRPC over TLS only, and a bad
``[tls]`` stops it at start with the file named. The node is the real ``run_node``."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coalition.api.grpc.client import NodeClient
from coalition.demo.processes import free_ports
from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.node.auth import Role
from coalition.node.config import ServerTls, load_config
from coalition.ops.keygen import find_secret, generate_keys
from coalition.ops.tls import make_ca, make_node_cert, read_server_tls
from coalition.ops.tomlfiles import write_toml
from coalition.runtime.runner import run_node

from support.databases import at_current_schema


def write_tls(folder: Path) -> Path:
    """A CA and a certificate for 127.0.0.1/localhost; returns the CA's PEM file."""
    now = datetime.now(UTC)
    ca, ca_key = make_ca("member ports CA", now)
    cert, key = make_node_cert("testair", ca, ca_key, now)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "api.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "api.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "ca.pem"


@pytest.fixture
def tls_node(tmp_path: Path) -> Iterator[tuple[Path, str, str, Path]]:
    """A running node with ``[tls]``: (config, gRPC address, HTTP address, CA file)."""
    ca = write_tls(tmp_path / "tls")
    ports = free_ports(2)
    grpc_address, http_address = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
    database = f"sqlite:///{tmp_path / 'testair.db'}"
    at_current_schema(database)
    document = {
        "program": {"id": "testair"},
        "node": {"database": database, "grpc": grpc_address, "http": http_address},
        "tls": {"cert": "tls/api.pem", "key": "tls/api.key"},
    }
    config_path = write_toml(tmp_path / "node.toml", document)
    generate_keys(load_config(config_path))
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_node(load_config(config_path), stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        assert not failure, failure
        try:
            httpx.get(
                f"https://{http_address}/healthz",
                verify=ssl.create_default_context(cafile=ca),
                timeout=2,
            )
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the TLS node did not come up"
            time.sleep(0.1)
    try:
        yield config_path, grpc_address, http_address, ca
    finally:
        stop.set()
        thread.join(60)
    assert not failure, failure


def test_rest_and_grpc_member_ports_speak_tls(tls_node: tuple[Path, str, str, Path]) -> None:
    config_path, grpc_address, http_address, ca = tls_node
    auditor = find_secret(load_config(config_path), Role.AUDITOR)
    headers = {"Authorization": f"Bearer {auditor}"}
    response = httpx.get(
        f"https://{http_address}/v1/ledger/headers",
        headers=headers,
        verify=ssl.create_default_context(cafile=ca),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
        httpx.get(f"http://{http_address}/healthz", timeout=5)
    with pytest.raises(httpx.HTTPError):  # nor does a client that does not trust the CA
        httpx.get(f"https://{http_address}/healthz", timeout=5)

    with NodeClient(grpc_address, auditor, tls_roots=ca.read_bytes()) as client:
        assert client.headers(0) == []
    with grpc.insecure_channel(grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_bad_tls_table_is_refused_with_the_file_named(tmp_path: Path) -> None:
    write_tls(tmp_path)
    with pytest.raises(FailedPrecondition, match=r"missing\.pem"):
        read_server_tls(ServerTls(tmp_path / "missing.pem", tmp_path / "api.key"))
    with pytest.raises(InvalidArgument, match="is not the key of"):
        read_server_tls(ServerTls(tmp_path / "ca.pem", tmp_path / "api.key"))
    with pytest.raises(InvalidArgument, match="holds no PEM certificate"):
        read_server_tls(ServerTls(tmp_path / "api.key", tmp_path / "api.key"))
    chain, key = read_server_tls(ServerTls(tmp_path / "api.pem", tmp_path / "api.key"))
    assert chain.startswith(b"-----BEGIN CERTIFICATE") and b"PRIVATE KEY" in key
