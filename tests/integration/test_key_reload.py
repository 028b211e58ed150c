"""SIGHUP reloads a node's API keys without a restart (issue 11, class 11): a real
``coalition run`` process, and every worker of a supervisor (``--processes``, on
PostgreSQL). A key removed from the keys file stops working after the reload, the others
keep working, and the node never restarts."""

from __future__ import annotations

import os
import re
import signal
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coalition.demo.processes import NodeProcess, free_ports
from coalition.node.auth import Role
from coalition.node.config import load_config
from coalition.ops.keygen import find_secret, generate_keys
from coalition.ops.tomlfiles import write_toml

from support.databases import postgres_databases


def node_folder(folder: Path, database: str, args: tuple[str, ...] = ()) -> NodeProcess:
    ports = free_ports(2)
    grpc, http = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
    document = {
        "program": {"id": "testair", "name": "Test Air"},
        "node": {"database": database, "grpc": grpc, "http": http},
    }
    config = write_toml(folder / "node.toml", document)
    generate_keys(load_config(config))
    return NodeProcess(config, grpc=grpc, http=http, log_path=folder / "node.log", args=args)


def status(node: NodeProcess, secret: str) -> int:
    """The status of a ledger read with ``secret``, on a new connection each time (so
    each worker behind a shared port is asked in turn)."""
    with httpx.Client(base_url=f"http://{node.http}", timeout=10) as client:
        response = client.get("/v1/ledger/headers", headers={"Authorization": f"bearer {secret}"})
    return response.status_code


def remove_role(node: NodeProcess, role: Role) -> None:
    keys_path = load_config(node.config_path).api_keys_path
    document = tomllib.loads(keys_path.read_text())
    kept = [key for key in document["api_keys"] if key["role"] != role]
    assert len(kept) < len(document["api_keys"])
    write_toml(keys_path, {"api_keys": kept})


def reload_and_check(node: NodeProcess, reloads: int, tries: int) -> None:
    config = load_config(node.config_path)
    operator, auditor = find_secret(config, Role.OPERATOR), find_secret(config, Role.AUDITOR)
    assert {status(node, operator) for _ in range(tries)} == {200}
    assert {status(node, auditor) for _ in range(tries)} == {200}
    remove_role(node, Role.AUDITOR)
    assert status(node, auditor) == 200, "no reload without SIGHUP"
    os.kill(node.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while len(re.findall(r"reloaded \d+ API keys", node.log_text())) < reloads:
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.1)
    assert {status(node, auditor) for _ in range(tries)} == {401}, "the removed key is refused"
    assert {status(node, operator) for _ in range(tries)} == {200}, "the others still work"
    assert node.running, node.log_tail()


def test_sighup_reloads_the_api_keys_of_a_running_node(tmp_path: Path) -> None:
    node = node_folder(tmp_path, "sqlite:///data/testair.db")
    node.start()
    try:
        node.wait_ready(60)
        reload_and_check(node, reloads=1, tries=3)
        (load_config(node.config_path).api_keys_path).write_text("not toml [")
        os.kill(node.pid, signal.SIGHUP)  # a broken file keeps the keys in force
        deadline = time.monotonic() + 30
        while "API keys not reloaded" not in node.log_text():
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.1)
        operator = find_secret(load_config(node.config_path), Role.OPERATOR)
        assert status(node, operator) == 200
    finally:
        node.stop(60)
    assert node.starts == 1
    assert "stopping" in node.log_text() and "received SIGHUP" not in node.log_text()


@pytest.fixture
def database(postgres_available: None) -> Iterator[str]:
    with postgres_databases(["testair"]) as urls:
        yield urls["testair"]


@pytest.mark.postgres
@pytest.mark.slow
def test_sighup_reloads_the_api_keys_of_every_worker(tmp_path: Path, database: str) -> None:
    node = node_folder(tmp_path, database, ("--processes", "2"))
    node.start()
    try:
        node.wait_ready(60)
        deadline = time.monotonic() + 60
        while len(re.findall(r"serving gRPC", node.log_text())) < 2:
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.2)
        reload_and_check(node, reloads=2, tries=20)
        assert "asking 2 workers to reload" in node.log_text()
        assert "restarting it" not in node.log_text(), node.log_tail()
    finally:
        node.stop(90)
    assert node.process is not None and node.process.returncode == 0
