"""``coalition run`` as a real process: it scrubs its log in the background and says so in
``/healthz``; started on a database whose rows were changed while it was stopped, it
exits non-zero with the fault named on its log and no traceback, and serves nothing."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from coalition.errors import CoalitionError
from coalition.ops.tomlfiles import write_toml

from support.processes import healthz, make_coalition


def _with_integrity(config: Path, **settings: object) -> None:
    document = tomllib.loads(config.read_text(encoding="utf-8"))
    document["integrity"] = settings
    write_toml(config, document)


def test_a_running_node_scrubs_and_a_tampered_one_refuses_to_start(tmp_path: Path) -> None:
    coalition = make_coalition(tmp_path, members=("alice", "bob"))
    brand = coalition.brands["skyair"]
    _with_integrity(
        brand.config, verify_at_start_blocks=50, scrub_entries_per_second=10_000, scrub_pause_s=0.2
    )
    brand.start()
    try:
        with brand.client() as client:
            for member in ("alice", "bob"):
                client.enroll(member, idempotency_key=f"enroll-{member}")
        deadline = time.monotonic() + 30
        while True:
            found = healthz(brand.node)
            scrub = found["integrity"]["scrub"]
            if scrub["passes_completed"] >= 1 and scrub["entries_checked"] >= 1:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
        assert found["status"] == "ok" and found["integrity"]["status"] == "ok"
        assert found["integrity"]["start_check"]["status"] == "ok"
    finally:
        brand.stop()
    assert "integrity scrub pass" in brand.node.log_text()

    engine = create_engine(brand.database_url)
    with engine.begin() as conn:
        index, body = conn.execute(
            text("SELECT log_index, body FROM entries ORDER BY log_index DESC LIMIT 1")
        ).one()
        conn.execute(
            text("UPDATE entries SET body = :b WHERE log_index = :i"),
            {"b": body.replace('"at":"20', '"at":"19', 1), "i": index},
        )
    engine.dispose()

    brand.node.start()
    with pytest.raises(CoalitionError, match="exited with 1"):
        brand.node.wait_ready(60)
    log = brand.node.log_text()
    assert "stored ledger fails its own verification, so the node does not start" in log
    assert "[entry-tampered] (height" in log and f"log index {index}" in log
    assert "Traceback" not in log
