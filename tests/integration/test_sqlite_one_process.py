"""SQLite stays one process per node (issue 10, item 4): a second node on the same file is
refused at start with why and what to use instead, also a real second ``coalition run``,
while the read-only tools keep working beside the running node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coalition.demo.processes import NodeProcess, free_ports
from coalition.errors import FailedPrecondition

from support.nodes import temporary_node

COALITION = [sys.executable, "-m", "coalition.cli"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    return subprocess.run(
        [*COALITION, *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**clean, **(env or {})},
    )


def test_a_second_node_on_one_sqlite_file_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    with temporary_node(url) as first:
        with (
            pytest.raises(FailedPrecondition, match="a node on SQLite is one process"),
            temporary_node(url, key=first.signing_key),
        ):
            pass
        first.points.enroll("kim", idempotency_key="e")
    with temporary_node(url, key=first.signing_key) as again:  # the lock went with the first node
        assert again.points.balance("kim").spendable == 0


def test_a_second_coalition_run_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "data" / "node.db"
    config = tmp_path / "node.toml"
    grpc, http, grpc2, http2 = (f"127.0.0.1:{port}" for port in free_ports(4))
    config.write_text(
        f'[program]\nid = "skyair"\n\n[node]\ndatabase = "sqlite:///{database}"\n'
        f'grpc = "{grpc}"\nhttp = "{http}"\n'
    )
    made = _run("keygen", "--config", str(config))
    assert made.returncode == 0, made.stderr
    node = NodeProcess(config, grpc=grpc, http=http, log_path=tmp_path / "first.log")
    node.start()
    try:
        node.wait_ready(60)
        second = _run(
            "run",
            "--config",
            str(config),
            env={"COALITION_GRPC_ADDRESS": grpc2, "COALITION_HTTP_ADDRESS": http2},
        )
        said = second.stdout + second.stderr
        assert second.returncode != 0, said
        assert "is already used by another running node" in said, said
        assert "use PostgreSQL" in said, said
        checked = _run("check", "--database", f"sqlite:///{database}")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        audited = _run("audit", "--config", str(config))
        assert audited.returncode == 0, audited.stdout + audited.stderr
        node.check_running()
    finally:
        node.stop()
