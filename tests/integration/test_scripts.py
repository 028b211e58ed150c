"""Every script under ``scripts/`` still runs: each Python script answers ``--help`` (so it
imports against today's package), the benchmarks and the CSV writer run end to end at a
tiny size, the shell scripts parse, and every ``scripts/NAME.py --option`` the docs tell
readers to run names a script that offers that option. ``mypy`` checks the scripts too
(``[tool.mypy] files``), so a script calling a moved or changed API fails before it runs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
LIBRARIES = {"benchlib.py"}
"""Modules the scripts import (not run by themselves): checked by importing them."""
PYTHON_SCRIPTS = sorted(p for p in SCRIPTS.glob("*.py") if p.name not in LIBRARIES)
SHELL_SCRIPTS = sorted(p for p in SCRIPTS.iterdir() if p.is_file() and p.suffix in ("", ".sh"))
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "nodes" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
COMMAND = re.compile(r"scripts/(\w+\.py)([^#`\n]*)")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@functools.cache
def help_texts() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every Python script's ``--help``, asked of all at once (each is an interpreter that
    imports the package; they start side by side on every core instead of one by one)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        answers = pool.map(lambda path: run(str(path), "--help"), PYTHON_SCRIPTS)
        return {path.name: answer for path, answer in zip(PYTHON_SCRIPTS, answers, strict=True)}


def help_text(script: str) -> str:
    known = help_texts()
    result = known[script] if script in known else run(str(SCRIPTS / script), "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("script", PYTHON_SCRIPTS, ids=lambda p: p.name)
def test_every_python_script_imports_and_answers_help(script: Path) -> None:
    assert help_text(script.name).startswith(f"usage: {script.name}")


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_every_script_library_imports(library: str) -> None:
    name = library.removesuffix(".py")
    code = f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import {name}; print({name}.__doc__)"
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert "benchmarks" in result.stdout


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_every_shell_script_parses(script: Path) -> None:
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


def test_mypy_checks_every_script() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert "scripts" in config["files"]


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, options) for every ``scripts/NAME.py ...`` in the docs and in the
    scripts' own docstrings."""
    found = []
    for path in [*DOCUMENTS, *PYTHON_SCRIPTS]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in COMMAND.finditer(line):
                options = re.findall(r"(?<!\S)(--[a-z][-a-z]*)", match.group(2))
                found.append((f"{path.relative_to(ROOT)}:{number}", match.group(1), options))
    return found


def test_the_documented_commands_are_real() -> None:
    commands = documented_commands()
    assert {script for _, script, _ in commands} >= {"bench_import.py", "gen_compose.py"}
    helps = {script: help_text(script) for script in {s for _, s, _ in commands}}
    for where, script, options in commands:
        for option in options:
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", helps[script]), (
                f"{where}: {script} has no option {option}"
            )


def test_make_purchases_csv_writes_the_rows_asked_for() -> None:
    result = run(str(SCRIPTS / "make_purchases_csv.py"), "5", "--members", "2")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[1:]
    assert len(rows) == 5 and all(row.split(",")[0] in ("M0001", "M0002") for row in rows)


@pytest.mark.parametrize(
    ("script", "args", "last_words", "ratio"),
    [
        (
            "bench_ingest.py",
            ["--purchases", "200", "--members", "20", "--repeat", "1"],
            "floor",
            None,
        ),
        (
            "bench_proofs.py",
            ["--entries", "2000", "--samples", "20"],
            "path hashes",
            "inclusion_proof/bare_ed25519_verify",
        ),
        (
            "bench_audit.py",
            ["--entries", "2000", "--runs", "1", "--workers", "0"],
            "entries/s",
            "audit/bare_sha256",
        ),
    ],
)
def test_the_in_process_benchmarks_run_at_a_tiny_size_and_write_json(
    tmp_path: Path, script: str, args: list[str], last_words: str, ratio: str | None
) -> None:
    """One run of each: its printed figures end as they should and ``--json`` holds them
    (one run, where two tests each ran it before)."""
    document, printed = run_json_and_print(
        script, [*args, "--dir", str(tmp_path / "work")], tmp_path
    )
    assert last_words in printed
    if ratio is not None:
        assert document["ratios"][ratio] > 0
    else:  # bench_ingest
        assert document["median"]["ratio"] > 0 and document["median"]["node_cpu_us"] > 0
        assert len(document["runs"]) == 1


def test_bench_body_gate_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "gate.json"
    result = run(
        str(SCRIPTS / "bench_body_gate.py"), "--repeats", "1", "--scale", "0.01",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    bodies = json.loads(out.read_text())["bodies"]
    assert set(bodies) == {"redeem", "bulk 1,000", "bulk 10,000"}
    assert all(b["gated_cpu_us"] >= 0 and b["bytes"] > 0 for b in bodies.values())


def test_bench_write_path_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "writes.json"
    result = run(
        str(SCRIPTS / "bench_write_path.py"), "--calls", "20", "--lots", "10", "--json", str(out)
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures["operations"]) == {"redeem_1_lot", "redeem_10_lots", "enroll", "earn"}
    assert all(f["cpu_us"] > 0 for f in figures["operations"].values())
    assert figures["debit_lots_ratio"] > 0


@pytest.mark.slow
def test_bench_import_runs_a_real_node_at_a_tiny_size(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = run(
        str(SCRIPTS / "bench_import.py"),
        "--rows",
        "50",
        "--members",
        "5",
        "--keep",
        str(work),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "accepted 50, replayed 0, rejected 0" in result.stdout
    assert "node stopped with SIGTERM, exit status 0" in result.stdout


@pytest.mark.slow
def test_bench_conversions_runs_two_nodes_at_a_tiny_size(tmp_path: Path) -> None:
    args = ["--conversions", "10", "--clients", "1", "--procs", "1", "--members", "4"]
    args += ["--bare-calls", "20", "--keep", str(tmp_path / "work")]
    result = run(str(SCRIPTS / "bench_conversions.py"), *args, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    completed = re.search(r"^audit OK: .*, (\d+) conversions completed", result.stdout, re.M)
    assert completed is not None and int(completed.group(1)) >= 10  # the warm-up's count too


def run_json(script: str, args: list[str], work: Path, timeout: float = 300) -> dict[str, Any]:
    """Run a benchmark with ``--json`` into ``work``; its exit status 0, the document."""
    return run_json_and_print(script, args, work, timeout)[0]


def run_json_and_print(
    script: str, args: list[str], work: Path, timeout: float = 300
) -> tuple[dict[str, Any], str]:
    """``run_json``, and what the benchmark printed."""
    out = work / f"{script}.json"
    result = run(str(SCRIPTS / script), *args, "--json", str(out), timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document: dict[str, Any] = json.loads(out.read_text())
    assert document["machine"].startswith("CPU ")
    return document, result.stdout


TINY_WRITES = ["--writes", "20", "--clients", "2", "--procs", "1", "--members", "4"]
TINY_WRITES += ["--bare-calls", "40"]


def test_bench_writes_runs_on_sqlite_at_a_tiny_size(tmp_path: Path) -> None:
    found = run_json("bench_writes.py", TINY_WRITES, tmp_path)
    for phase in ("redeem_grpc", "redeem_rest", "earn_grpc", "earn_rest"):
        assert found[phase]["count"] == 20 and found[phase]["errors"] == 0
        assert found[phase]["cpu_node_ms"] > 0 and found[phase]["switches_node"] > 0
        assert found["ratios"][f"{phase}/bare_grpc"] > 0
    assert "pgbench" not in found and found["bare_grpc"]["count"] == 40


def test_bench_writes_refuses_two_processes_on_sqlite() -> None:
    result = run(str(SCRIPTS / "bench_writes.py"), "--processes", "2")
    assert result.returncode == 2 and "SQLite takes one node process" in result.stderr


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_available")
def test_bench_writes_runs_two_processes_on_postgres_against_pgbench(tmp_path: Path) -> None:
    args = [*TINY_WRITES, "--database", "postgres", "--processes", "2", "--compare-one"]
    args += ["--phases", "redeem_grpc,earn_rest", "--pgbench-seconds", "1"]
    found = run_json("bench_writes.py", args, tmp_path)
    for figures in (found, found["one_process"]):
        assert figures["redeem_grpc"]["errors"] == 0 and figures["earn_rest"]["errors"] == 0
        assert "cpu_pg_ms" in figures["redeem_grpc"]
    assert found["pgbench"]["per_s"] > 0
    assert found["ratios"]["redeem_grpc/pgbench"] > 0
    assert found["ratios"]["earn_rest/one_process"] > 0
    assert found["ratios"]["earn_rest/one_process_cpu"] > 0


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_available")
def test_bench_conversions_runs_two_processes_a_node_on_postgres(tmp_path: Path) -> None:
    args = ["--conversions", "10", "--clients", "2", "--procs", "1", "--members", "4"]
    args += ["--bare-calls", "20", "--database", "postgres", "--processes", "2"]
    found = run_json("bench_conversions.py", args, tmp_path, timeout=600)
    assert found["conversions"]["count"] == 10 and found["conversions"]["cpu_pg_ms"] > 0
    assert found["ratios"]["conversions/bare_member_p99"] > 0


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_available")
def test_bench_failover_measures_a_takeover_and_loses_nothing(tmp_path: Path) -> None:
    args = ["--processes", "2", "--rounds", "1", "--settle", "1", "--writers", "2"]
    found = run_json("bench_failover.py", args, tmp_path, timeout=600)
    assert 0 < found["median"]["failover_ms"] < 30_000 and found["acknowledged"] > 0


@pytest.mark.slow
def test_bench_reads_measures_every_read_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "reads.json"
    args = ["--sizes", "300", "--calls", "3", "--members", "4", "--json", str(out)]
    result = run(str(SCRIPTS / "bench_reads.py"), *args, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [measured] = json.loads(out.read_text())["runs"]
    assert measured["entries"] == 300 and measured["conversions"] == 5
    for name in ("blocks view, newest 20", "history, deep page", "flows, hourly, newest 48"):
        assert 0 < measured["reads"][name]["p50_ms"] <= measured["reads"][name]["p99_ms"]
    assert "300 entries: 5 conversions" in result.stdout
