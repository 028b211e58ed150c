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
an ``executemany`` of one ``INSERT`` per table on the driver's own cursor (what the node's
writer runs, ``store.prepared``: no SQLAlchemy in between) for the ``entries`` rows and the
``lots`` rows, one transaction per batch of the same batch size, into the same schema on
the same engine settings. No decisions, no canonicalisation, no idempotency or member
lookups, no sealing: what any ingest into these tables must pay at least. The **Core
floor** is the same through SQLAlchemy Core's ``executemany`` (the floor this benchmark
used until the node's writer left Core: about 15% more CPU per entry than the driver's),
reported beside it so older figures stay comparable; the ratio the goal names is to the
driver floor, the cheaper one.

Both start from a copy of one database holding the enrolled members (enrollment is not
timed). Node, floor and Core floor runs alternate so that machine noise hits all three;
the report gives the median of each and the median of the per-repeat ratios, and the CPU
per entry of each (this process, every thread: the node runs in it, its sealer thread
included), read from ``/proc`` around the timed part, with the ratio of the floor's CPU to
the node's (steadier than the rates on a shared machine). ``--json`` writes the runs and
the medians.
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
from coalition.store.prepared import Statement, run_many

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


def _insert(table: Any) -> Statement:
    names = [column.name for column in table.columns]
    values = ", ".join(f":{name}" for name in names)
    return Statement(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({values})")


FLOOR_INSERTS = (_insert(entries), _insert(lots))


def run_floor(
    url: str, erows: list[dict[str, Any]], lrows: list[dict[str, Any]], batch: int, *, core: bool
) -> tuple[float, float]:
    """SHA-256 leaf hash of each canonical body plus executemany of the same rows, on the
    driver's cursor or (``core``) through SQLAlchemy Core: (seconds, CPU seconds of this
    process)."""
    engine: Engine = make_engine(url)  # same settings: WAL, synchronous=FULL
    insert_entries, insert_lots = FLOOR_INSERTS
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
                if core:
                    conn.execute(insert(entries), chunk)
                    conn.execute(insert(lots), lrows[start : start + batch])
                else:
                    run_many(conn, insert_entries, chunk)
                    run_many(conn, insert_lots, lrows[start : start + batch])
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

    runs: list[dict[str, float]] = []
    try:
        for rep in range(args.repeat):
            rows = purchases(args.purchases, args.members, seed=rep, prefix=f"R{rep}")
            node_url = copy_db(template, folder / "node.db")
            node_s, node_c, count, _ = run_node(node_url, key, rows, args.batch, profile=False)
            erows, lrows = written_rows(node_url, args.members)
            floor_s, floor_c = run_floor(
                copy_db(template, folder / "floor.db"), erows, lrows, args.batch, core=False
            )
            core_s, core_c = run_floor(
                copy_db(template, folder / "floor.db"), erows, lrows, args.batch, core=True
            )
            run = {
                "node_per_s": count / node_s,
                "floor_per_s": count / floor_s,
                "ratio": floor_s / node_s,
                "node_cpu_us": node_c * 1e6 / count,
                "floor_cpu_us": floor_c * 1e6 / count,
                "cpu_ratio": floor_c / node_c,
                "core_floor_per_s": count / core_s,
                "core_ratio": core_s / node_s,
                "core_floor_cpu_us": core_c * 1e6 / count,
            }
            runs.append(run)
            print(
                f"run {rep + 1}/{args.repeat}: node {run['node_per_s']:>8,.0f} entries/s"
                f" ({node_s:.2f} s, CPU {run['node_cpu_us']:.1f} us/entry)"
                f"   floor {run['floor_per_s']:>8,.0f} ({run['floor_cpu_us']:.1f} us)"
                f"   Core floor {run['core_floor_per_s']:>8,.0f}"
                f" ({run['core_floor_cpu_us']:.1f} us)"
                f"   ratio {run['ratio']:.0%} (Core {run['core_ratio']:.0%})"
            )
        medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print()
        print(f"{'':40}{'median':>10}{'min':>10}{'max':>10}")
        for name, key_, fmt in (
            ("node earn_bulk+flush (entries/s)", "node_per_s", "{:>10,.0f}"),
            ("floor sha256+insert (entries/s)", "floor_per_s", "{:>10,.0f}"),
            ("Core floor (entries/s)", "core_floor_per_s", "{:>10,.0f}"),
            ("node / floor", "ratio", "{:>10.0%}"),
            ("node / Core floor", "core_ratio", "{:>10.0%}"),
            ("node CPU (us/entry)", "node_cpu_us", "{:>10.1f}"),
            ("floor CPU (us/entry)", "floor_cpu_us", "{:>10.1f}"),
            ("Core floor CPU (us/entry)", "core_floor_cpu_us", "{:>10.1f}"),
            ("floor CPU / node CPU", "cpu_ratio", "{:>10.0%}"),
        ):
            values = [run[key_] for run in runs]
            cells = "".join(fmt.format(v) for v in (medians[key_], min(values), max(values)))
            print(f"{name:40}{cells}")
        rate_ok = "met" if medians["node_per_s"] >= TARGET_RATE else "NOT met"
        print(
            f"targets: >= {TARGET_RATE:,} entries/s: {rate_ok}"
            f"; >= {TARGET_RATIO:.0%} of floor: "
            f"{'met' if medians['ratio'] >= TARGET_RATIO else 'NOT met'}"
            f" (floor median {medians['floor_per_s']:,.0f})"
        )
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


if __name__ == "__main__":
    sys.exit(main())
