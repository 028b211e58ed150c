#!/usr/bin/env python3
"""Benchmark of the node's bulk ingest against the raw floor, measured in the same run.

    .venv/bin/python scripts/bench_ingest.py                      # 200,000 purchases, 3 repeats
    .venv/bin/python scripts/bench_ingest.py --purchases 50000 --members 5000 --repeat 5
    .venv/bin/python scripts/bench_ingest.py --profile            # plus a cProfile of one run
    .venv/bin/python scripts/bench_ingest.py --json /tmp/ingest.json

**Node**: ``PointsService.earn_bulk`` (the bulk earning path partners use) on SQLite with
``synchronous=FULL``, as the node runs by default: the engine comes from
``coalition.store.db.make_engine`` with its default settings and the ``NodeService`` is
built directly (the tests' ``support.nodes.temporary_node`` uses ``synchronous=NORMAL`` and
is therefore not used). The sealer runs in its background thread as in production. The clock
runs from the call of ``earn_bulk`` until ``flush()`` returns, i.e. until every entry is
committed and sealed into signed, hash-chained blocks with their tree nodes written.

**Floor**: the same canonical entry bodies and lot rows the node wrote, read back from the
node's database beforehand (untimed), then, timed: SHA-256 of each body (the leaf hash) and
a SQLAlchemy Core ``executemany`` insert of the ``entries`` rows and the ``lots`` rows, one
transaction per batch of the same batch size, into the same schema on the same
engine settings. No decisions, no canonicalisation, no idempotency or member lookups, no
sealing: what any ingest into these tables must pay at least.

Both start from a copy of one database holding the enrolled members (enrollment is not
timed). Node and floor runs alternate so that machine noise hits both; the report gives
the median of each and the median of the per-repeat ratios, and the CPU per entry of each
(this process, every thread: the node runs in it, its sealer thread included), read from
``/proc`` around the timed part. ``--json`` writes the runs and the medians.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from benchlib import machine, own_cpu_seconds, write_json
from sqlalchemy import Engine, insert, select

from coalition.ledger.keys import SigningKey
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.node.views import PurchaseRow
from coalition.points.rules import ProgramRules, Tier
from coalition.runtime.wiring import open_service
from coalition.store.db import make_engine
from coalition.store.ledger import entries
from coalition.store.members import lots

PROGRAM = "benchair"
SECRET = b"bench-account-secret-0123456789"
MIX = (  # category, weight, min spend, max spend (minor units), as make_purchases_csv.py
    ("partners", 0.55, 800, 25_000),
    ("flights", 0.30, 4_900, 180_000),
    ("upgrades", 0.10, 2_500, 60_000),
    ("", 0.05, 500, 10_000),
)
TARGET_RATE = 20_000
TARGET_RATIO = 0.8  # issue 10's goal: bulk ingest / raw floor >= 0.80


def rules() -> ProgramRules:
    """A realistic program: categories and tiers, so every earn runs the real rules."""
    return ProgramRules(
        categories={"partners": Fraction(1), "flights": Fraction(2), "upgrades": Fraction(3, 2)},
        tiers=(
            Tier("base", 0, Fraction(1)),
            Tier("silver", 5_000, Fraction(5, 4)),
            Tier("gold", 20_000, Fraction(3, 2)),
        ),
    )


def member_id(n: int) -> str:
    return f"M{n:06d}"


def make_service(url: str, key: SigningKey, synchronous: str) -> NodeService:
    sealer = SealerConfig(max_entries=1000, max_delay_ms=200)
    return open_service(url, PROGRAM, key, SECRET, rules(), sealer, sqlite_synchronous=synchronous)


def build_template(folder: Path, members: int, key: SigningKey) -> Path:
    """A database with ``members`` enrolled (and sealed), written with synchronous=OFF
    because only its content matters; every timed run starts from a copy of it."""
    path = folder / "template.db"
    service = make_service(f"sqlite:///{path}", key, "OFF")
    try:
        for n in range(1, members + 1):
            service.points.enroll(member_id(n), idempotency_key=f"enroll:{n}")
        service.ledger.flush()
    finally:
        service.close()
    return path


def purchases(count: int, members: int, seed: int, prefix: str) -> list[PurchaseRow]:
    rng = random.Random(seed)
    categories = [c for c, _, _, _ in MIX]
    weights = [w for _, w, _, _ in MIX]
    ranges = {c: (lo, hi) for c, _, lo, hi in MIX}
    rows = []
    for n in range(1, count + 1):
        category = rng.choices(categories, weights)[0]
        lo, hi = ranges[category]
        reference = f"{prefix}-{n:08d}"
        rows.append(
            PurchaseRow(
                member_id(rng.randrange(1, members + 1)),
                reference,
                rng.randrange(lo, hi),
                category,
                f"bulk:{reference}",
            )
        )
    return rows


def copy_db(template: Path, dest: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        target = Path(str(dest) + suffix)
        if target.exists():
            target.unlink()
    shutil.copyfile(template, dest)
    return f"sqlite:///{dest}"


def run_node(
    url: str, key: SigningKey, rows: list[PurchaseRow], batch: int, profile: bool
) -> tuple[float, float, int, str]:
    """Seconds from the earn_bulk call until flush() returned; CPU seconds of this process
    (every thread) over the same time; entries; profile text."""
    service = make_service(url, key, "FULL")  # the node's default durability
    service.start()
    profiler = cProfile.Profile() if profile else None
    try:
        if profiler:
            profiler.enable()
        cpu0, t0 = own_cpu_seconds(), time.perf_counter()
        result = service.points.earn_bulk(rows, batch_size=batch)
        last = service.ledger.flush()
        elapsed, cpu = time.perf_counter() - t0, own_cpu_seconds() - cpu0
        if profiler:
            profiler.disable()
        if result.rejected or result.accepted != len(rows):
            raise SystemExit(f"bulk earn refused rows: {result.rejected[:3]}")
        assert last is not None and service.sealer.pending == 0
        assert last.header.log_size == service.sealer.log_size
    finally:
        service.close()
    text = ""
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(35)
        text = out.getvalue()
    return elapsed, cpu, result.accepted, text


def written_rows(url: str, first_index: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The entry rows and lot rows a bulk earn wrote (everything after ``first_index``)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            erows = [
                dict(r._mapping)
                for r in conn.execute(
                    select(entries)
                    .where(entries.c.log_index >= first_index)
                    .order_by(entries.c.log_index)
                )
            ]
            ids = {r["entry_id"] for r in erows}
            lrows = [dict(r._mapping) for r in conn.execute(select(lots)) if r.id in ids]
    finally:
        engine.dispose()
    by_id = {r["id"]: r for r in lrows}
    lrows = [by_id[r["entry_id"]] for r in erows]  # same order: one lot per earn entry
    return erows, lrows


def run_floor(
    url: str, erows: list[dict[str, Any]], lrows: list[dict[str, Any]], batch: int
) -> tuple[float, float]:
    """SHA-256 leaf hash of each canonical body plus executemany of the same rows:
    (seconds, CPU seconds of this process)."""
    engine: Engine = make_engine(url)  # same settings: WAL, synchronous=FULL
    try:
        prepared = [dict(r, leaf_hash=b"") for r in erows]
        bodies = [r["body"].encode() for r in erows]
        sha = hashlib.sha256
        cpu0, t0 = own_cpu_seconds(), time.perf_counter()
        for start in range(0, len(prepared), batch):
            chunk = prepared[start : start + batch]
            for row, data in zip(chunk, bodies[start : start + batch], strict=True):
                row["leaf_hash"] = sha(b"\x00" + data).digest()
            with engine.begin() as conn:
                conn.execute(insert(entries), chunk)
                conn.execute(insert(lots), lrows[start : start + batch])
        elapsed, cpu = time.perf_counter() - t0, own_cpu_seconds() - cpu0
        for row, orig in zip(prepared, erows, strict=True):
            assert row["leaf_hash"] == orig["leaf_hash"]
    finally:
        engine.dispose()
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=200_000, help="purchases per run")
    parser.add_argument("--members", type=int, default=20_000, help="enrolled members")
    parser.add_argument("--batch", type=int, default=2000, help="earn_bulk batch_size")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (median)")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra node run")
    parser.add_argument("--dir", help="work folder (default: a fresh temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    if args.purchases < 1 or args.members < 1 or args.repeat < 1:
        parser.error("purchases, members and repeat must be positive")

    print(f"machine: {machine()}")
    print(
        f"workload: {args.purchases:,} purchases over {args.members:,} members, "
        f"batch {args.batch}, sealer max_entries=1000, SQLite WAL synchronous=FULL"
    )
    folder_ctx = tempfile.TemporaryDirectory(prefix="coalition-bench-") if not args.dir else None
    folder = Path(folder_ctx.name if folder_ctx is not None else args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    t0 = time.perf_counter()
    template = build_template(folder, args.members, key)
    print(f"enrolled {args.members:,} members in {time.perf_counter() - t0:.1f} s (not timed)")

    node_rates: list[float] = []
    floor_rates: list[float] = []
    ratios: list[float] = []
    node_cpu: list[float] = []
    floor_cpu: list[float] = []
    try:
        for rep in range(args.repeat):
            rows = purchases(args.purchases, args.members, seed=rep, prefix=f"R{rep}")
            node_url = copy_db(template, folder / "node.db")
            node_s, node_c, count, _ = run_node(node_url, key, rows, args.batch, profile=False)
            erows, lrows = written_rows(node_url, args.members)
            floor_url = copy_db(template, folder / "floor.db")
            floor_s, floor_c = run_floor(floor_url, erows, lrows, args.batch)
            node_rate, floor_rate = count / node_s, count / floor_s
            node_rates.append(node_rate)
            floor_rates.append(floor_rate)
            ratios.append(node_rate / floor_rate)
            node_cpu.append(node_c * 1e6 / count)
            floor_cpu.append(floor_c * 1e6 / count)
            print(
                f"run {rep + 1}/{args.repeat}: node {node_rate:>9,.0f} entries/s ({node_s:.2f} s,"
                f" CPU {node_cpu[-1]:.1f} us/entry)   floor {floor_rate:>9,.0f} entries/s"
                f" ({floor_s:.2f} s, CPU {floor_cpu[-1]:.1f} us/entry)"
                f"   ratio {node_rate / floor_rate:.0%}"
            )
        node_med = statistics.median(node_rates)
        floor_med = statistics.median(floor_rates)
        ratio_med = statistics.median(ratios)
        print()
        print(f"{'':34}{'median':>12}{'min':>12}{'max':>12}")
        for name, values, fmt in (
            ("node earn_bulk+flush (entries/s)", node_rates, "{:>12,.0f}"),
            ("floor sha256+insert (entries/s)", floor_rates, "{:>12,.0f}"),
            ("node / floor", ratios, "{:>12.0%}"),
            ("node CPU (us/entry)", node_cpu, "{:>12.1f}"),
            ("floor CPU (us/entry)", floor_cpu, "{:>12.1f}"),
        ):
            cells = "".join(fmt.format(v) for v in (statistics.median(values), *_mm(values)))
            print(f"{name:34}{cells}")
        rate_ok = "met" if node_med >= TARGET_RATE else "NOT met"
        print(
            f"targets: >= {TARGET_RATE:,} entries/s: {rate_ok}"
            f"; >= {TARGET_RATIO:.0%} of floor: "
            f"{'met' if ratio_med >= TARGET_RATIO else 'NOT met'}"
            f" (floor median {floor_med:,.0f})"
        )
        runs = [
            {"node_per_s": n, "floor_per_s": f, "ratio": r, "node_cpu_us": nc, "floor_cpu_us": fc}
            for n, f, r, nc, fc in zip(
                node_rates, floor_rates, ratios, node_cpu, floor_cpu, strict=True
            )
        ]
        medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "dir")}
        write_json(args.json, {"settings": settings, "median": medians, "runs": runs})
        if args.profile:
            rows = purchases(args.purchases, args.members, seed=99, prefix="P")
            node_url = copy_db(template, folder / "node.db")
            _, _, _, text = run_node(node_url, key, rows, args.batch, profile=True)
            print("\ncProfile of one node run (main thread only; the sealer thread is not shown)")
            print(text)
    finally:
        if folder_ctx is not None:
            folder_ctx.cleanup()
    return 0


def _mm(values: list[float]) -> tuple[float, float]:
    return min(values), max(values)


if __name__ == "__main__":
    sys.exit(main())
