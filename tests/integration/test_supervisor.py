"""``coalition run --processes N`` for real: a supervisor of N worker processes of one node
on one PostgreSQL database, sharing the node's gRPC and HTTP ports (SO_REUSEPORT).

Connections spread over the workers (``/healthz`` answers with different pids), writes
through the shared port all land in one dense log, a SIGKILLed worker is restarted (and
the restart logged), and SIGTERM to the supervisor stops every worker gracefully with
everything sealed. SQLite and port 0 are refused before any worker starts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from coalition.api.grpc.client import NodeClient, TransportError
from coalition.demo.processes import NodeProcess, free_ports
from coalition.node.auth import Role
from coalition.node.config import load_config
from coalition.ops.keygen import find_secret, generate_keys
from coalition.ops.tomlfiles import write_toml
from coalition.runtime.supervisor import Supervisor
from coalition.store.db import make_engine

from support.databases import postgres_databases
from support.processes import healthz

COALITION = [sys.executable, "-m", "coalition.cli"]


def node_folder(folder: Path, database: str, *, grpc_port: int | None = None) -> NodeProcess:
    """A lone brand's node.toml and keys on fixed free ports (``grpc_port`` overrides)."""
    ports = free_ports(2)
    grpc = f"127.0.0.1:{ports[0] if grpc_port is None else grpc_port}"
    http = f"127.0.0.1:{ports[1]}"
    document = {
        "program": {"id": "testair", "name": "Test Air"},
        "node": {"database": database, "grpc": grpc, "http": http},
        "sealer": {"max_delay_ms": 20},
    }
    config = write_toml(folder / "node.toml", document)
    generate_keys(load_config(config))
    return NodeProcess(
        config, grpc=grpc, http=http, log_path=folder / "node.log", args=("--processes", "3")
    )


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COALITION, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_several_processes_on_sqlite_are_refused_before_any_starts(tmp_path: Path) -> None:
    node = node_folder(tmp_path, "sqlite:///data/testair.db")
    result = run("run", "--config", str(node.config_path), "--processes", "2")
    assert result.returncode == 1
    assert "database is SQLite, which one process owns" in result.stderr
    assert "postgresql://" in result.stderr
    assert not (tmp_path / "data" / "testair.db").exists(), "nothing was opened"


def test_several_processes_on_port_0_are_refused(tmp_path: Path) -> None:
    node = node_folder(tmp_path, "postgresql://postgres@127.0.0.1:5432/test", grpc_port=0)
    result = run("run", "--config", str(node.config_path), "--processes", "2")
    assert result.returncode == 1
    assert "[node] grpc is '127.0.0.1:0'" in result.stderr
    assert "set a fixed port" in result.stderr


def test_processes_must_be_a_positive_count(tmp_path: Path) -> None:
    node = node_folder(tmp_path, "sqlite:///data/testair.db")
    result = run("run", "--config", str(node.config_path), "--processes", "0")
    assert result.returncode == 2
    assert "must be at least 1" in result.stderr


@pytest.fixture
def database(postgres_available: None) -> Iterator[str]:
    with postgres_databases(["testair"]) as urls:
        yield urls["testair"]


def _pids(node: NodeProcess, tries: int = 60) -> set[int]:
    """The pids that answer ``/healthz`` on the shared port (each call a new connection)."""
    return {int(healthz(node)["pid"]) for _ in range(tries)}


def _enroll(node: NodeProcess, key: str, member: str, deadline: float) -> str:
    """Enroll through the shared port on a fresh connection, retrying (same idempotency
    key) while a worker is down; the entry id."""
    while True:
        try:
            with NodeClient(node.grpc, key, timeout=5) as client:
                return str(client.enroll(member, idempotency_key=f"e-{member}").entry["id"])
        except TransportError:
            assert time.monotonic() < deadline, f"no worker answered:\n{node.log_tail()}"
            time.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_supervisor_runs_restarts_and_stops_its_workers(tmp_path: Path, database: str) -> None:
    node = node_folder(tmp_path, database)
    key = find_secret(load_config(node.config_path), Role.OPERATOR)
    acknowledged: dict[str, str] = {}
    answering: set[int] = set()
    node.start()
    try:
        node.wait_ready(60)
        deadline = time.monotonic() + 30
        pids: set[int] = set()
        while len(pids) < 3:  # all three workers come up and share the HTTP port
            pids |= _pids(node, 20)
            assert time.monotonic() < deadline, f"only workers {pids} answered"
        deadline = time.monotonic() + 60
        for n in range(30):
            acknowledged[f"A{n:02d}"] = _enroll(node, key, f"A{n:02d}", deadline)

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        for n in range(30):  # writes go on through the two others while it restarts
            acknowledged[f"B{n:02d}"] = _enroll(node, key, f"B{n:02d}", deadline)
        while True:
            answering = _pids(node, 20)
            if victim not in answering and len(answering - pids) == 1 and len(answering) == 3:
                break
            assert time.monotonic() < deadline, (
                f"no restarted worker: {answering}\n{node.log_tail()}"
            )
            time.sleep(0.2)
        restarted = re.search(
            rf"worker (\d) \(pid {victim}\) exited with -9 .*restarting it", node.log_text()
        )
        assert restarted, node.log_tail()
    finally:
        node.stop(90)
    assert node.process is not None and node.process.returncode == 0
    log = node.log_text()
    assert len(re.findall(r"worker \d \(pid \d+\) stopped \(exit 0\)", log)) == 3, log[-3000:]
    for pid in pids | answering:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    engine = make_engine(database)
    try:
        with engine.connect() as conn:
            ids = [r.entry_id for r in conn.execute(text("SELECT entry_id FROM entries"))]
            size = conn.execute(text("SELECT max(log_size) FROM blocks")).scalar_one()
            indexes = conn.execute(text("SELECT min(log_index), max(log_index) FROM entries")).one()
    finally:
        engine.dispose()
    assert sorted(ids) == sorted(acknowledged.values()), "each acknowledged write exactly once"
    assert tuple(indexes) == (0, len(ids) - 1), "the log is dense"
    assert size == len(ids), "every entry was sealed when the workers stopped"


def test_a_worker_that_keeps_failing_at_start_stops_the_supervisor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Five exits in a row, each soon after its start, are a configuration problem: the
    supervisor stops restarting (and the other workers) and fails, each exit logged."""
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    sleeping = [sys.executable, "-c", "import time; time.sleep(60)"]
    starts: list[int] = []

    def command(supervisor_pid: int) -> list[str]:
        """Worker 1 starts once and runs; worker 2 exits at every start."""
        starts.append(supervisor_pid)
        return sleeping if len(starts) == 1 else failing

    supervisor = Supervisor(tmp_path / "node.toml", 2, command=command, backoff=(0.01, 0.05))
    caplog.set_level("INFO", logger="coalition.supervisor")
    began = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - began < 30
    restarts = [r.getMessage() for r in caplog.records if "restarting it in" in r.getMessage()]
    assert len(restarts) >= 4 and all("exited with 3" in m for m in restarts)
    assert any(
        "not restarting; stopping the other workers" in r.getMessage() for r in caplog.records
    )
    assert supervisor.pids == [], "the worker that ran was stopped too"
    assert set(starts) == {os.getpid()}, "each worker is told its supervisor's pid"
