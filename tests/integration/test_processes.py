"""The one process harness (``coalition.demo.processes``): a ``coalition run`` child is
ready when gRPC health says SERVING and ``/healthz`` answers; waiting gives up with the
node's log when the process exits or the timeout passes; stop is SIGTERM (exit 0, every
entry sealed), and a SIGKILL the harness sent is not a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from coalition.api.grpc.client import NodeClient
from coalition.demo.processes import NodeProcess, free_ports, not_ready, wait_ready
from coalition.errors import CoalitionError
from coalition.node.auth import Role
from coalition.node.config import load_config
from coalition.ops.keygen import find_secret, generate_keys
from coalition.ops.tomlfiles import write_toml


def lone_node(folder: Path, *, keys: bool = True) -> NodeProcess:
    """A brand without a coalition on free ports, its keys made unless ``keys`` is False."""
    grpc, http = (f"127.0.0.1:{p}" for p in free_ports(2))
    document = {
        "program": {"id": "testair", "name": "Test Air"},
        "node": {"database": "sqlite:///data/testair.db", "grpc": grpc, "http": http},
        "sealer": {"max_delay_ms": 20},
    }
    config = write_toml(folder / "node.toml", document)
    if keys:
        generate_keys(load_config(config))
    return NodeProcess(config, grpc=grpc, http=http, log_path=folder / "node.log")


def test_a_node_is_ready_then_stops_on_sigterm_with_everything_sealed(tmp_path: Path) -> None:
    node = lone_node(tmp_path)
    assert not_ready(node.grpc, node.http) is not None
    node.start()
    try:
        node.wait_ready(30)
        assert not_ready(node.grpc, node.http) is None
        key = find_secret(load_config(node.config_path), Role.OPERATOR)
        with NodeClient(node.grpc, key) as client:
            client.enroll("alice", idempotency_key="e1")
    finally:
        node.stop()
    assert node.process is not None and node.process.returncode == 0
    assert "every entry is sealed (log size 1)" in node.log_text()


def test_waiting_gives_up_with_the_log_when_the_node_exits_at_start(tmp_path: Path) -> None:
    node = lone_node(tmp_path, keys=False)
    node.start()
    with pytest.raises(CoalitionError, match=r"exited with 1:\n(.|\n)*no API keys file"):
        node.wait_ready(30)
    with pytest.raises(CoalitionError, match="exited with 1"):
        node.stop()


def test_waiting_gives_up_after_the_timeout_with_the_log(tmp_path: Path) -> None:
    """A node that answers gRPC health but no /healthz at the address waited on."""
    node = lone_node(tmp_path)
    node.start()
    try:
        node.wait_ready(30)
        elsewhere = f"127.0.0.1:{free_ports(1)[0]}"
        with pytest.raises(CoalitionError, match=r"not ready after 1 s \(GET http(.|\n)*serving"):
            wait_ready(node.grpc, elsewhere, timeout=1, process=node)
    finally:
        node.stop()


def test_a_node_the_harness_killed_is_no_failure_and_restarts(tmp_path: Path) -> None:
    node = lone_node(tmp_path)
    node.start()
    node.wait_ready(30)
    node.kill()
    assert not node.running
    node.stop()  # killed by us: not an error
    node.start()
    try:
        node.wait_ready(30)
        assert node.starts == 2
    finally:
        node.stop()
