#!/usr/bin/env python3
"""The node's CPU per single write, in process (no transport): what the write path costs.

    .venv/bin/python scripts/bench_write_path.py                 # 2,000 calls per operation
    .venv/bin/python scripts/bench_write_path.py --calls 5000 --lots 500 --json out.json
    .venv/bin/python scripts/bench_write_path.py --database postgresql   # a fresh schema

Setup (untimed): a node on a fresh SQLite file (``synchronous=NORMAL``, as the tests run
it), or with ``--database postgresql`` on a fresh schema of the tests' PostgreSQL server
(``tests/support/databases.py``), with two members: ``one`` holding one lot of
10,000,000 points, ``many`` holding ``--lots`` reward lots of 1,000 points. **Timed**:
one client thread calls, one at a time, ``redeem`` of 1 point for ``one`` and for
``many`` (each debit takes one lot), ``enroll`` of new members and ``earn_purchase`` for
them. CPU is the whole process's (the sealer's thread included) over the calls, per
call; the debit's ratio with ``--lots`` lots to one lot is the issue's "a debit's CPU
with 200 live lots / with 1".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from coalition.node.config import SealerConfig  # noqa: E402
from coalition.points.rules import ProgramRules  # noqa: E402

from support.databases import postgres_schema  # noqa: E402
from support.nodes import temporary_node  # noqa: E402


@contextmanager
def database(kind: str) -> Iterator[str]:
    """The URL of a fresh database of ``kind``, removed afterwards."""
    if kind == "postgresql":
        with postgres_schema() as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/node.db"


def timed(calls: int, call: Callable[[int], object]) -> dict[str, float]:
    """CPU and wall time per call, in microseconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    for n in range(calls):
        call(n)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_us": round(1e6 * cpu / calls, 1), "wall_us": round(1e6 * wall / calls, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per operation")
    parser.add_argument("--lots", type=int, default=200, help="live lots of member 'many'")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    rules = ProgramRules(rewards={"referral": 1000}, max_points_per_operation=10**9)
    with (
        database(args.database) as url,
        temporary_node(
            url,
            rules=rules,
            sealer=SealerConfig(max_entries=1000, max_delay_ms=50),
        ) as node,
    ):
        points = node.points
        points.enroll("one", idempotency_key="enroll-one")
        points.adjust("one", 10**7, "bench", "seed", idempotency_key="seed-one")
        points.enroll("many", idempotency_key="enroll-many")
        for n in range(args.lots):
            points.earn_reward("many", "referral", f"many-{n}", idempotency_key=f"seed-{n}")
        figures = {
            "redeem_1_lot": timed(
                args.calls, lambda n: points.redeem("one", 1, f"O{n}", idempotency_key=f"a{n}")
            ),
            f"redeem_{args.lots}_lots": timed(
                args.calls, lambda n: points.redeem("many", 1, f"O{n}", idempotency_key=f"b{n}")
            ),
            "enroll": timed(args.calls, lambda n: points.enroll(f"M{n}", idempotency_key=f"e{n}")),
            "earn": timed(
                args.calls,
                lambda n: points.earn_purchase(f"M{n}", f"P{n}", 1000, "", idempotency_key=f"p{n}"),
            ),
        }
    one, many = figures["redeem_1_lot"]["cpu_us"], figures[f"redeem_{args.lots}_lots"]["cpu_us"]
    result: dict[str, object] = {
        "database": args.database,
        "calls": args.calls,
        "lots": args.lots,
        "operations": figures,
        "debit_lots_ratio": round(many / one, 2),
    }
    for name, figure in figures.items():
        print(f"{name:>16}: {figure['cpu_us']:8.1f} us CPU/call  {figure['wall_us']:8.1f} us wall")
    print(f"a debit with {args.lots} lots / with 1: {result['debit_lots_ratio']}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
