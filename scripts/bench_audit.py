#!/usr/bin/env python3
"""Benchmark of the chain audit of a bundle of 1,000,000 entries, end to end.

    .venv/bin/python scripts/bench_audit.py                  # build (minutes), measure
    .venv/bin/python scripts/bench_audit.py --reuse          # reuse the cached bundle
    .venv/bin/python scripts/bench_audit.py --entries 100000 --runs 1

**Building** (untimed, cached in ``--dir``, default ``$TMPDIR/coalition-bench-audit``):
entries are made by the real ``points.operations`` functions (enrolls, purchase and
reward earns, redemptions, transfers, positive adjustments) against accounts kept by the
real ``points.replay.Replay``, so the chain replays cleanly; they are inserted as
``entries`` rows with their canonical bytes and leaf hashes and sealed by a real
``NodeService`` sealer into signed blocks of 1,000 entries, then exported with
``coalition.audit.bundle.export_bundle``.

**Measuring**: ``audit_chain(BundleSource(bundle), key)`` end to end (median of
``--runs``: read, leaf hashes, block and log roots, signatures and links, envelope checks,
replay), ``BundleSource.blocks()`` read alone, and the bare SHA-256 of the same entry
bytes (one ``hashlib.sha256`` per entry, over bytes already in memory), in the same run.
Two ways of auditing, alternately in each run (``--mode both``, the default): ``sharded``
(``coalition.audit.workers.ProcessWorkers``: the workers scan blocks and replay the chain
split by account) and ``pool`` (the audit's own worker pool: workers scan, this process
replays), each with the CPU per entry of this process and its workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from coalition.audit.bundle import BundleSource, export_bundle
from coalition.audit.workers import ProcessWorkers
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import leaf_hash
from coalition.node.config import SealerConfig
from coalition.points import operations
from coalition.points.accounts import account_id
from coalition.points.operations import EntryContext
from coalition.points.replay import Replay
from coalition.points.rules import ProgramRules
from coalition.runtime.wiring import open_service
from coalition.store.ledger import entries, set_head_to_log
from coalition.verify.chain_audit import audit_chain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, write_json

PROGRAM = "benchair"
SECRET = b"bench-account-secret-0123456789"
BLOCK = 1000
CHUNK = 50_000
MEMBERS = 20_000
START = datetime(2025, 1, 1, tzinfo=UTC)
"""Entries are dated from here, 30 s apart: 1,000,000 of them end before the real clock
the sealer dates their blocks with (an entry is never dated after its block)."""
RULES = ProgramRules(rewards={"signup": 500, "review": 50})


def _entries(size: int, seed: int = 7) -> Iterator[JsonObject]:
    """Yield ``size`` realistic entry bodies in log order: a replayable chain."""
    rng = random.Random(seed)
    rules = RULES
    state = Replay()
    members: list[str] = []
    at = START
    step = timedelta(seconds=30)
    n = 0
    while n < size:
        at += step
        ctx = EntryContext(PROGRAM, uuid.UUID(int=rng.getrandbits(128)).hex, at)
        roll = rng.random()
        body: JsonObject | None = None
        if len(members) < 100 or (roll < 0.04 and len(members) < MEMBERS):
            member = account_id(SECRET, f"M{len(members):06d}")
            body = operations.enroll(ctx, member)
            members.append(member)
        else:
            account = state.accounts[rng.choice(members)]
            balance = account.balance(at)
            if roll < 0.74 or balance < 50:
                if rng.random() < 0.8:
                    spend = rng.randrange(500, 50_000)
                    body = operations.earn_purchase(
                        ctx, rules, account.id, 0, f"P-{n:08d}", spend, "", reference_used=False
                    )
                else:
                    body = operations.earn_reward(
                        ctx, rules, account, "signup", f"R-{n:08d}", reference_used=False
                    )
            elif roll < 0.86:
                body = operations.redeem(ctx, rules, account, balance // 2, f"X-{n:08d}")
            elif roll < 0.95:
                target = rng.choice(members)
                if target != account.id:
                    body = operations.transfer(
                        ctx, rules, account, target, balance // 3, "for dinner"
                    )
            else:
                body = operations.adjust(ctx, rules, account, 25, f"ops-{n}", "goodwill")
        if body is None:
            continue
        state.apply(body)
        n += 1
        yield body


def build(folder: Path, size: int) -> None:
    for name in ("log.db", "log.db-wal", "log.db-shm", "chain.bundle", "meta.json"):
        (folder / name).unlink(missing_ok=True)
    key = SigningKey.generate()
    (folder / "key.pem").write_bytes(key.to_pem())
    url = f"sqlite:///{folder / 'log.db'}"
    sealer = SealerConfig(max_entries=BLOCK)
    service = open_service(url, PROGRAM, key, SECRET, RULES, sealer, sqlite_synchronous="OFF")
    t0 = time.perf_counter()
    try:
        rows: list[dict[str, object]] = []
        leaves: list[bytes] = []
        for index, body in enumerate(_entries(size)):
            data = canonical_json(body)
            leaves.append(leaf_hash(data))
            rows.append(
                {
                    "log_index": index,
                    "entry_id": body["id"],
                    "kind": body["kind"],
                    "account": body["account"],
                    "to_account": body.get("to"),
                    "body": data.decode(),
                    "leaf_hash": leaves[-1],
                    "idem_key": None,
                    "request_hash": None,
                }
            )
            if len(rows) == CHUNK or index == size - 1:
                with service.sequencer.engine.begin() as conn:
                    conn.execute(insert(entries), rows)
                    set_head_to_log(conn)
                service.sealer.added(len(leaves))
                service.ledger.flush()
                rows, leaves = [], []
                print(
                    f"\r  built {index + 1:,}/{size:,} ({time.perf_counter() - t0:.0f} s)", end=""
                )
        print()
    finally:
        service.close()
    summary = export_bundle(folder / "chain.bundle", url, PROGRAM, key.public_key)
    print(f"  exported {summary.entries:,} entries in {summary.blocks:,} blocks")
    (folder / "log.db").unlink()
    (folder / "meta.json").write_text(json.dumps({"size": size}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="log size")
    parser.add_argument("--runs", type=int, default=3, help="audits to take the median of")
    parser.add_argument("--workers", type=int, default=None, help="audit worker processes")
    parser.add_argument("--mode", choices=("both", "sharded", "pool"), default="both")
    parser.add_argument("--reuse", action="store_true", help="reuse the cached bundle")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "coalition-bench-audit"))
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    meta = folder / "meta.json"
    cached = json.loads(meta.read_text()) if meta.exists() else {}
    bundle = folder / "chain.bundle"
    if args.reuse and cached.get("size") == args.entries and bundle.exists():
        print(f"reusing the bundle of {args.entries:,} entries in {folder}")
    else:
        print(f"building a bundle of {args.entries:,} entries in {folder} (untimed) ...")
        build(folder, args.entries)
    key = SigningKey.from_pem((folder / "key.pem").read_bytes()).public_key
    print(f"bundle: {bundle.stat().st_size / 1e6:,.0f} MB")

    t0 = time.perf_counter()
    bodies: list[bytes] = []
    with BundleSource(bundle) as source:
        for _, block in source.blocks():
            bodies.extend(block.bodies)
    read_s = time.perf_counter() - t0
    n = len(bodies)
    t0 = time.perf_counter()
    for body in bodies:
        hashlib.sha256(body).digest()
    sha_s = time.perf_counter() - t0
    size_mb = sum(map(len, bodies)) / 1e6
    del bodies

    modes = ("pool", "sharded") if args.mode == "both" else (args.mode,)
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu_runs: dict[str, list[float]] = {mode: [] for mode in modes}
    main_cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    timings: dict[str, list[dict[str, int]]] = {mode: [] for mode in modes}
    for run in range(args.runs):
        for mode in modes:
            with BundleSource(bundle) as source:
                t0, cpu0, self0 = time.perf_counter(), _cpu_with_workers(), _cpu_self()
                if mode == "sharded":
                    with ProcessWorkers(args.workers) as workers:
                        report = audit_chain(source, key, parallel=workers)
                else:
                    report = audit_chain(source, key, workers=args.workers)
                runs[mode].append(time.perf_counter() - t0)
                cpu_runs[mode].append(_cpu_with_workers() - cpu0)
                main_cpu[mode].append(_cpu_self() - self0)
            if not report.ok or report.entries != n:
                print(report.render())
                return 1
            timings[mode].append(report.timings_ms)
            print(
                f"  audit run {run + 1} {mode:8s}: {runs[mode][-1]:.2f} s, CPU "
                f"{cpu_runs[mode][-1]:.2f} s (this process {main_cpu[mode][-1]:.2f} s)  "
                f"timings {report.timings_ms}"
            )
    sha_rate = n / sha_s
    print(f"entries {n:,} ({size_mb:,.0f} MB of entry bytes), blocks {report.blocks:,}")
    print(f"bare SHA-256 of the entry bytes   {sha_rate:12,.0f} entries/s ({sha_s:.2f} s)")
    print(f"BundleSource.blocks() read alone  {n / read_s:12,.0f} entries/s ({read_s:.2f} s)")
    figures: dict[str, dict[str, object]] = {}
    for mode in modes:
        audit_s = statistics.median(runs[mode])
        audit_rate = n / audit_s
        cpu_us = statistics.median(cpu_runs[mode]) / n * 1e6
        main_us = statistics.median(main_cpu[mode]) / n * 1e6
        label = f"audit {mode} (median of {len(runs[mode])})"
        print(f"{label:33s} {audit_rate:12,.0f} entries/s ({audit_s:.2f} s)")
        ratio = f"{audit_rate / sha_rate:.3f} (SHA-256 is {sha_rate / audit_rate:.1f}x faster)"
        print(f"  audit / bare SHA-256 = {ratio}")
        print(f"  auditor CPU per entry (this process and its workers, median) {cpu_us:.1f} us")
        print(f"  of which this process (median) {main_us:.1f} us")
        met = "met" if audit_rate >= 200_000 else "NOT met"
        print(f"  target 200,000 entries/s: {met}")
        figures[mode] = {
            "audit_runs_s": runs[mode],
            "cpu_runs_s": cpu_runs[mode],
            "audit_per_s": audit_rate,
            "cpu_us_per_entry": cpu_us,
            "auditing_process_cpu_us_per_entry": main_us,
            "ratio_to_bare_sha256": audit_rate / sha_rate,
            "timings_ms": timings[mode],
        }
    if len(modes) == 2:
        wall = statistics.median(runs["pool"]) / statistics.median(runs["sharded"])
        cpu = statistics.median(cpu_runs["sharded"]) / statistics.median(cpu_runs["pool"])
        print(f"sharded vs pool, same run: {wall:.2f}x faster, CPU per entry x{cpu:.2f}")
    write_json(
        args.json,
        {
            "entries": n,
            "blocks": report.blocks,
            "modes": figures,
            "bare_sha256_per_s": sha_rate,
            "read_alone_per_s": n / read_s,
            "ratios": {
                # the audit as `coalition audit` runs it (the last mode), then each mode
                "audit/bare_sha256": figures[modes[-1]]["ratio_to_bare_sha256"],
                **{f"audit_{m}/bare_sha256": figures[m]["ratio_to_bare_sha256"] for m in modes},
            },
            "target_per_s": 200_000,
        },
    )
    return 0


def _cpu_self() -> float:
    """CPU seconds of this process alone."""
    t = os.times()
    return t.user + t.system


def _cpu_with_workers() -> float:
    """CPU seconds of this process and its ended worker processes (``os.times``)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    sys.exit(main())
