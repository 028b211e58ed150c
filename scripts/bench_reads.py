#!/usr/bin/env python3
"""Latency of every read a user or the explorer makes, on a node of 10,000 and of
1,000,000 entries: O(page) means about equal.

    .venv/bin/python scripts/bench_reads.py                       # sizes 10,000 and 1,000,000
    .venv/bin/python scripts/bench_reads.py --sizes 300 --calls 5 # what the tests run
    .venv/bin/python scripts/bench_reads.py --json reads.json --keep /tmp/reads

Setup per size (untimed): skyair (A) and staybright (B) as two ``coalition run``
processes on SQLite (``bench_conversions.setup``: agreement, ``--members`` members enrolled
at both and funded at A), then ``size / 100`` conversions A -> B (flow entries on both
chains, so the flows read has flows to sum at every size), then the rest of the log
through the bulk ingest path (``Points.EarnBulk``, as ``coalition import-csv`` sends it)
on A, until A's log holds ``size`` entries; the sealer seals it and B cosigns A's headers.

**Timed**: ``--calls`` sequential HTTP calls of each read on A (one client, keep-alive),
median and p99 in ms; a first page and a deep page of each paged read: the blocks view
(headers + one witness request for 20 blocks), a member's history and lots, the flows,
settlement statements, one block, an inclusion proof, the explorer's about (the figures it
shows). Also, in this process, what the flows read cost before (every flow entry read and
folded on each request: ``conversion_flows`` over ``bodies_of_kinds``), as a baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
from bench_conversions import AMOUNT, A, B, _convert_worker, groups, member, setup  # noqa: E402
from benchlib import machine  # noqa: E402

from coalition.explorer.flows import FLOW_KINDS, conversion_flows  # noqa: E402
from coalition.node.views import PurchaseRow  # noqa: E402
from coalition.store.db import make_engine  # noqa: E402
from coalition.store.ledger import bodies_of_kinds, next_log_index  # noqa: E402

from support.processes import BrandProcess, make_coalition  # noqa: E402

PAGE = 50
BLOCKS = 20


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def timed(call: Callable[[], object], calls: int) -> dict[str, float]:
    """Median and p99 of ``calls`` sequential calls, in ms (after two untimed ones)."""
    for _ in range(2):
        call()
    spent = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        spent.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": statistics.median(spent), "p99_ms": percentile(spent, 0.99)}


def purchases(count: int, members: int, tag: str) -> Iterator[PurchaseRow]:
    for n in range(count):
        reference = f"{tag}-{n:08d}"
        yield PurchaseRow(member(n % members), reference, 100 + n % 900, "", f"bulk:{reference}")


class Api:
    """GET calls to one node's REST API that must answer 200."""

    def __init__(self, brand: BrandProcess) -> None:
        self.http = httpx.Client(base_url=f"http://{brand.http}", timeout=60)
        self.ledger = {"Authorization": f"Bearer {brand.api_keys['auditor']}"}
        self.operator = {"Authorization": f"Bearer {brand.api_keys['operator']}"}

    def get(self, path: str, *, member: bool = False) -> httpx.Response:
        response = self.http.get(path, headers=self.operator if member else self.ledger)
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: {response.status_code} {response.text[:300]}")
        return response

    def json(self, path: str, *, member: bool = False) -> Any:
        return self.get(path, member=member).json()


def wait_until(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def build(a: BrandProcess, api: Api, size: int, members: int) -> dict[str, int]:
    """A's log up to ``size`` entries: conversions first, then bulk earns."""
    conversions = max(5, size // 100)
    numbers = list(range(conversions))
    _convert_worker([a.grpc], a.api_keys["operator"], "reads", numbers, members, 8)
    wait_until(
        lambda: len(api.json("/v1/explorer/flows?bucket_s=86400")["flows"]) > 0, "flows", 120
    )
    # Everything written so far (enrolments, funding, conversions, completions) counts.
    engine = make_engine(a.database_url)
    try:
        with engine.connect() as conn:
            written = next_log_index(conn)
    finally:
        engine.dispose()
    rest = max(0, size - written)
    with a.client(timeout=3600) as client:
        result = client.earn_bulk(purchases(rest, members, "reads"))
    if result.rejected:
        raise SystemExit(f"bulk earn refused rows: {result.rejected[:3]}")
    wait_until(lambda: api.json("/v1/explorer/about")["log_size"] >= size, "sealing", 600)
    height = api.json("/v1/explorer/about")["height"]
    wait_until(
        lambda: api.json(f"/v1/blocks/{height}/witnesses")["witnessed"], "B's cosignature", 600
    )
    return {"conversions": conversions, "bulk_earns": rest, "height": height}


def deep_cursors(api: Api, who: str) -> dict[str, str]:
    """Cursors of deep pages, found untimed: the member's history below the first 5% of
    the log, the member's lots near their end, the flows before the newest bucket."""
    size = api.json("/v1/explorer/about")["log_size"]
    lots: list[Any] = []
    path: str | None = f"/v1/members/{who}/lots?limit=1000"
    while path is not None:
        response = api.get(path, member=True)
        lots += response.json()
        link = response.headers.get("link")
        path = None if link is None else link.split(">", 1)[0].lstrip("<")
    flows = api.json("/v1/explorer/flows?bucket_s=60&limit=1")
    newest = flows["flows"][0]["bucket"] if flows["flows"] else None
    return {
        "history_before": str(max(1, size // 20)),
        "lots_after": lots[max(0, len(lots) - PAGE - 1)]["id"],
        "flows_before": newest or "2000-01-01T00:00:00.000000Z",
        "lots": str(len(lots)),
    }


def measure(a: BrandProcess, api: Api, calls: int) -> dict[str, dict[str, float]]:
    about = api.json("/v1/explorer/about")
    height = about["height"]
    who = member(0)
    deep = deep_cursors(api, who)
    newest = max(0, height - BLOCKS + 1)
    early = api.json(f"/v1/ledger/blocks/{min(1, height)}")["entries"][0]["id"]

    def blocks_view(start: int) -> Callable[[], object]:
        def view() -> object:
            api.get(f"/v1/ledger/headers?start={start}&limit={BLOCKS}")
            return api.get(f"/v1/blocks/witnesses?start={start}&limit={BLOCKS}")

        return view

    m = f"/v1/members/{who}"
    reads: dict[str, Callable[[], object]] = {
        "about": lambda: api.get("/v1/explorer/about"),
        "blocks view, newest 20": blocks_view(newest),
        "blocks view, oldest 20": blocks_view(0),
        "block (entries)": lambda: api.get(f"/v1/ledger/blocks/{height}"),
        "inclusion proof": lambda: api.get(f"/v1/ledger/entries/{early}/proof"),
        "history, first page": lambda: api.get(f"{m}/history?limit={PAGE}", member=True),
        "history, deep page": lambda: api.get(
            f"{m}/history?limit={PAGE}&before={deep['history_before']}", member=True
        ),
        "lots, first page": lambda: api.get(f"{m}/lots?limit={PAGE}", member=True),
        "lots, deep page": lambda: api.get(
            f"{m}/lots?limit={PAGE}&after={deep['lots_after']}", member=True
        ),
        "balance": lambda: api.get(f"{m}/balance", member=True),
        "flows, hourly, newest 48": lambda: api.get("/v1/explorer/flows?bucket_s=3600&limit=48"),
        "flows, minutes, deep page": lambda: api.get(
            f"/v1/explorer/flows?bucket_s=60&limit=48&before={deep['flows_before']}"
        ),
        "statements, first page": lambda: api.get("/v1/settlement/statements?limit=100"),
    }
    results = {name: timed(call, calls) for name, call in reads.items()}
    engine = make_engine(a.database_url)
    try:

        def old_flows() -> object:
            with engine.connect() as conn:
                return conversion_flows(bodies_of_kinds(conn, FLOW_KINDS), a.program, 3600)

        results["flows before this change (in-process fold)"] = timed(
            old_flows, max(3, calls // 20)
        )
    finally:
        engine.dispose()
    results["_lots_of_member"] = {"p50_ms": float(deep["lots"]), "p99_ms": float(deep["lots"])}
    return results


def run_size(folder: Path, size: int, members: int, calls: int) -> dict[str, Any]:
    conversions = max(5, size // 100)
    per_member = (conversions // members + 2) * AMOUNT
    coalition = make_coalition(folder, (A, B))
    a, b = coalition.brands[A], coalition.brands[B]
    ga, gb = groups(a, b, {A: a.database_url, B: b.database_url}, 1)
    try:
        setup(a, b, ga, gb, members, per_member)
        api = Api(a)
        try:
            built = build(a, api, size, members)
            results = measure(a, api, calls)
        finally:
            api.http.close()
    finally:
        ga.stop()
        gb.stop()
    return {"entries": size, **built, "reads": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000", help="log sizes, comma separated")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per read")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="coalition-bench-reads-"))
    print(machine())
    runs = []
    for size in sizes:
        print(f"building a node of {size:,} entries ...", flush=True)
        (folder / str(size)).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run = run_size(folder / str(size), size, args.members, args.calls)
        run["setup_s"] = round(time.perf_counter() - t0, 1)
        runs.append(run)
    heads = "".join(f"{format(r['entries'], ',') + ' entries p50 / p99 ms':>34}" for r in runs)
    print(f"{'read':48}{heads}")
    for name in runs[0]["reads"]:
        if name.startswith("_"):
            continue
        cells = "".join(
            f"{r['reads'][name]['p50_ms']:>20.2f} / {r['reads'][name]['p99_ms']:>9.2f}"
            for r in runs
        )
        ratio = (
            f"   x{runs[-1]['reads'][name]['p50_ms'] / runs[0]['reads'][name]['p50_ms']:.2f}"
            if len(runs) > 1
            else ""
        )
        print(f"{name:48}{cells}{ratio}")
    for r in runs:
        print(
            f"{r['entries']:,} entries: {r['conversions']:,} conversions, {r['bulk_earns']:,} bulk "
            f"earns, {r['height'] + 1:,} blocks, member {member(0)} holds "
            f"{int(r['reads']['_lots_of_member']['p50_ms']):,} lots; setup {r['setup_s']} s"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2) + "\n")
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
