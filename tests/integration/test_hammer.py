"""The hammer (``scripts/hammer.py``) in CI, short: the demo coalition as real processes
under mixed load while its nemesis SIGKILLs, SIGSTOPs and restarts node processes (and,
on PostgreSQL, crashes its own instance), then the hammer's own checks.

Each test runs the script as a user would and reads its JSON report: nothing lost,
no invariant failed, every fault kind injected at least once (the nemesis's first round
is one of each), every kind of operation acknowledged, proofs verified while writing,
every conversion and hold ended. docs/reliability.md records a long run's figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.standby import pg_binaries_missing

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hammer.py"


def run_hammer(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    """Run the hammer with ``args``; its report (AssertionError with its output when it
    exits non-zero)."""
    report = tmp_path / "hammer.json"
    places = ("--work", str(tmp_path / "work"), "--json", str(report))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, *places],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    found = json.loads(report.read_text())
    assert isinstance(found, dict)
    return found


def assert_nothing_lost(report: dict[str, Any], faults: set[str]) -> None:
    assert report["ok"] is True
    assert report["lost"] == [] and report["failures"] == [] and report["unanswered"] == []
    assert set(report["faults"]) == faults, report["fault_schedule"]
    ops = report["operations"]
    assert all(ops.get(kind, 0) > 0 for kind in ("earn", "redeem", "convert", "hold")), ops
    assert ops.get("capture", 0) + ops.get("void", 0) > 0, ops
    assert report["proofs"].get("inclusion", 0) > 0, report["proofs"]
    assert report["proofs"].get("consistency", 0) > 0, report["proofs"]
    assert sum(report["conversions"].values()) == ops["convert"], report["conversions"]
    assert sum(report["holds"].values()) == ops["hold"], report["holds"]
    assert all(chain["supply"] > 0 for chain in report["chains"].values()), report["chains"]


def test_the_hammer_loses_nothing_on_sqlite_through_sigkill_sigstop_and_restarts(
    tmp_path: Path,
) -> None:
    report = run_hammer(
        tmp_path,
        *("--duration", "20", "--seed", "11", "--fault-interval", "2"),
        *("--members", "8", "--writers", "3"),
        timeout=420,
    )
    assert_nothing_lost(report, {"kill", "pause", "restart"})


def test_the_hammer_loses_nothing_on_postgres_with_two_processes_and_a_postgres_crash(
    tmp_path: Path,
) -> None:
    missing = pg_binaries_missing()
    if missing is not None:
        pytest.skip(missing)
    report = run_hammer(
        tmp_path,
        *("--postgres", "--processes", "2", "--duration", "20", "--seed", "11"),
        *("--fault-interval", "1", "--members", "8", "--writers", "3"),
        timeout=600,
    )
    assert_nothing_lost(report, {"kill", "pause", "restart", "postgres"})
    assert report["processes_per_program"] == 2
