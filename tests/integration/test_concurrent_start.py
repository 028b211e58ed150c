"""Four real ``coalition run`` processes started at once on one fresh PostgreSQL database
all come up: the schema upgrade runs under an advisory lock, so none crashes on the
``create_all`` race (``UniqueViolation`` on ``pg_type``) that existed before migrations;
and they serve one node, exactly one of them holding the sealer's lease (``/healthz``).

The database is created with a unique name in the local server and dropped afterwards;
each process binds free ports, must answer ``/healthz``, and stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from coalition.demo.processes import free_ports
from coalition.store.db import normalise_url
from coalition.store.schema import head_revision

from support.databases import POSTGRES_URL

COALITION = [sys.executable, "-m", "coalition.cli"]
PROCESSES = 4
READY_SECONDS = 120.0


@pytest.fixture
def fresh_database(postgres_available: None) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    name = f"coalition_start_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _health(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        report: dict[str, object] = json.loads(answer.read())
    return report


def _healthy(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200 and "log_size" in json.loads(answer.read())
    except OSError:
        return False


@pytest.mark.postgres
@pytest.mark.slow
def test_four_first_starts_on_one_fresh_database_all_come_up(
    fresh_database: str, tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[program]\nid = "skyair"\n\n[node]\ndatabase = "{fresh_database}"\n')
    made = subprocess.run(
        [*COALITION, "keygen", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    ports = free_ports(2 * PROCESSES)
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"node-{n}.log" for n in range(PROCESSES)]
    try:
        for n, log in enumerate(logs):
            env = {
                "COALITION_GRPC_ADDRESS": f"127.0.0.1:{ports[2 * n]}",
                "COALITION_HTTP_ADDRESS": f"127.0.0.1:{ports[2 * n + 1]}",
                "PYTHONUNBUFFERED": "1",
            }
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*COALITION, "run", "--config", str(config)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**_environment(), **env},
                    )
                )
        waiting = set(range(PROCESSES))
        deadline = time.monotonic() + READY_SECONDS
        while waiting and time.monotonic() < deadline:
            for n in sorted(waiting):
                exited = procs[n].poll()
                assert exited is None, f"node {n} exited with {exited}:\n{logs[n].read_text()}"
                if _healthy(ports[2 * n + 1]):
                    waiting.discard(n)
            time.sleep(0.2)
        assert not waiting, f"nodes {sorted(waiting)} not healthy after {READY_SECONDS} s"
        # One node, four processes: each answers as itself, exactly one seals.
        reports = [_health(ports[2 * n + 1]) for n in range(PROCESSES)]
        assert len({r["pid"] for r in reports}) == PROCESSES
        assert sum(bool(r["sealer"]) for r in reports) == 1, reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for n, proc in enumerate(procs):
        assert proc.returncode == 0, f"node {n} stopped with {proc.returncode}"
        assert "UniqueViolation" not in logs[n].read_text()
    engine = create_engine(normalise_url(fresh_database))
    with engine.connect() as conn:
        revisions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    assert revisions == [head_revision()]


def _environment() -> dict[str, str]:
    """This process's environment without the overrides a node would take from it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
