#!/usr/bin/env python3
"""End-to-end benchmark of conversions between two brand nodes, against a bare gRPC call.

    .venv/bin/python scripts/bench_conversions.py                  # 5,000 conversions, 32 clients
    .venv/bin/python scripts/bench_conversions.py --conversions 20000 --clients 64
    .venv/bin/python scripts/bench_conversions.py --keep /tmp/run  # keep the folder
    .venv/bin/python scripts/bench_conversions.py --database postgres --processes 2
    .venv/bin/python scripts/bench_conversions.py --json /tmp/conversions.json

Setup (untimed): in a temporary folder, skyair (A) and staybright (B) from ``nodes/``, each
``coalition run --config`` as its own process on free 127.0.0.1 ports with its own SQLite
file (WAL, ``synchronous=FULL`` as shipped), keys from ``coalition keygen --manifest`` and
mutual TLS from ``coalition tls-init`` (the fault tests' ``tests/support/processes.py``);
a 3:2 agreement with a 1% fee; ``--members`` members enrolled at both and funded at A.
With ``--database postgres`` each node has a scratch database of its own on the tests'
PostgreSQL server (``$COALITION_TEST_POSTGRES_URL``), dropped afterwards; ``--processes
2`` runs two ``coalition run`` processes of each node's ``node.toml`` on that database
(``benchlib.NodeGroup``: member ports of their own; partners call the first process,
whose port the manifest names), and the clients' channels alternate between A's
processes. SQLite takes one process per node.

**Timed**, in the same run:

* conversions: ``--clients`` concurrent clients (threads spread over ``--procs`` client
  processes, one gRPC channel per thread) call ``Conversions.Convert`` on A's member API
  until ``--conversions`` are made. A conversion's latency runs from the moment its client
  sends the call to the time of its ``convert-complete`` entry on A's chain (the receipt
  signed by B verified and recorded): quote, ``convert-out``, the outbox's batch over
  mutual TLS, B's checks and ``convert-in``, B's signed receipt, A's checks. Throughput is
  conversions / (last ``convert-complete`` - first send). Every conversion must complete.
* a single-entry write: the same clients redeem 1 point per call (``Points.Redeem``, one
  ``redeem`` entry through the same node's group commit), as many calls as conversions:
  what one ordinary write costs this node on this machine.
* bare round trips: the same clients call ``grpc.health.v1.Health/Check`` (a trivial unary
  call) on A's member API (the channel the Convert calls use) and, over mutual TLS with
  A's certificate, on B's partner port (the channel the outbox uses).

The conversions' latency is also split into legs, from the entries' times: the
Convert call, the outbox (A's ``convert-out`` to B's ``convert-in``) and the answer
(B's ``convert-in`` to A's ``convert-complete``). Each phase prints the CPU per operation
of A's and B's node processes and, on PostgreSQL,
of both databases' backends (``benchlib.BackendCpu``), then conversions against each
baseline: throughput ratio, p50 and p99 over the baseline's. Afterwards both nodes stop
(SIGTERM) and ``audit_partners`` audits both chains and reconciles them; the run fails
unless everything is sound. ``--json`` writes every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from sqlalchemy import Engine, create_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
from benchlib import (  # noqa: E402
    POSTGRES_URL,
    Figures,
    NodeGroup,
    Writes,
    bare,
    database_name,
    libpq_url,
    machine,
    measured,
    percentile,
    scratch_database,
    split,
    summary,
    write_json,
    write_run,
)

from coalition.audit import audit_partners  # noqa: E402
from coalition.audit.sources import DatabaseSource  # noqa: E402
from coalition.ledger.entries import format_time, parse_time  # noqa: E402
from coalition.node.manifest import Manifest  # noqa: E402
from coalition.ops.tls import TlsFiles  # noqa: E402
from coalition.progress import phase  # noqa: E402
from coalition.store.db import normalise_url  # noqa: E402
from coalition.store.ledger import bodies_of_kinds  # noqa: E402
from coalition.v1 import conversions_pb2, conversions_pb2_grpc  # noqa: E402

from support.processes import BrandProcess, make_coalition  # noqa: E402

A, B = "skyair", "staybright"
AMOUNT = 1000


MEMBER = "B%05d"


def member(n: int) -> str:
    return MEMBER % n


def agreement() -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "type": "coalition.agreement.v1",
        "id": "bench-skyair-staybright",
        "version": 1,
        "from_program": A,
        "to_program": B,
        "rate": [3, 2],
        "fee_bps": 100,
        "min_points": 100,
        "max_points": 100_000,
        "daily_cap_points": 10**9,
        "point_value": [1, 1],
        "currency": "EUR",
        "valid_from": format_time(now - timedelta(minutes=5)),
        "valid_until": format_time(now + timedelta(days=1)),
        "proposed_by": A,
    }


def groups(
    a: BrandProcess, b: BrandProcess, urls: dict[str, str], processes: int
) -> tuple[NodeGroup, NodeGroup]:
    """Each brand's processes on its database, the first on the brand's own ports."""
    return tuple(  # type: ignore[return-value]
        NodeGroup(
            brand.config,
            urls[brand.program],
            processes,
            first=(brand.grpc, brand.http),
            partner_grpc=brand.partner_grpc,
        )
        for brand in (a, b)
    )


def setup(
    a: BrandProcess, b: BrandProcess, ga: NodeGroup, gb: NodeGroup, members: int, per_member: int
) -> None:
    """Start B then A, sign the agreement, enroll and fund the members (through each
    node's first process)."""
    gb.start()
    ga.start()
    metadata = (("authorization", f"Bearer {a.api_keys['operator']}"),)
    request = conversions_pb2.ProposeAgreementRequest(
        agreement_json=json.dumps(agreement()).encode()
    )
    with grpc.insecure_channel(a.grpc) as channel:
        stub = conversions_pb2_grpc.AgreementsStub(channel)
        for _ in range(100):
            try:
                stub.ProposeAgreement(request, metadata=metadata, timeout=10)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                time.sleep(0.3)
        else:
            raise SystemExit("B never countersigned the agreement")

    def fund(n: int) -> None:
        with a.client() as ca, b.client() as cb:
            ca.enroll(member(n), idempotency_key=f"enroll-{n}")
            cb.enroll(member(n), idempotency_key=f"enroll-{n}")
            ca.adjust(member(n), per_member, "bench", "seed", idempotency_key=f"seed-{n}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fund, range(members)))


# --- client processes -----------------------------------------------------------------


def _convert_worker(
    targets: list[str], api_key: str, tag: str, numbers: list[int], members: int, threads: int
) -> list[tuple[str, float, float]]:
    """Convert in ``threads`` threads (thread ``t`` on target ``t`` mod the targets);
    (conversion id, send time, reply time) each. Idempotency keys carry the run's
    ``tag``, so no run replays another's conversions."""
    metadata = (("authorization", f"Bearer {api_key}"),)
    results: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def run(target: str, part: list[int]) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = conversions_pb2_grpc.ConversionsStub(channel)
            mine = []
            for n in part:
                request = conversions_pb2.ConvertRequest(
                    member_id=member(n % members),
                    to_program=B,
                    to_member_id=member(n % members),
                    amount=AMOUNT,
                    idempotency_key=f"bench-{tag}-{n}",
                )
                sent = time.time()
                reply = stub.Convert(request, metadata=metadata, timeout=30)
                mine.append((reply.id, sent, time.time()))
        with lock:
            results.extend(mine)

    parts = [numbers[t::threads] for t in range(threads)]
    workers = [
        threading.Thread(target=run, args=(targets[t % len(targets)], p))
        for t, p in enumerate(parts)
        if p
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def entry_times(engine: Engine, kind: str) -> dict[str, float]:
    """Conversion id -> time of its ``kind`` entry on the engine's chain (epoch seconds)."""
    with engine.connect() as conn:
        entries = bodies_of_kinds(conn, [kind])
    found: dict[str, float] = {}
    for entry in entries:
        conversion, at = entry["conversion"], entry["at"]
        assert isinstance(conversion, dict) and isinstance(at, str)
        found[str(conversion["id"])] = parse_time(at).timestamp()
    return found


def completions(engine: Engine) -> dict[str, float]:
    """Conversion id -> time of its convert-complete entry on A (epoch seconds)."""
    return entry_times(engine, "convert-complete")


def legs(made: list[tuple[str, float, float]], a_url: str, b_url: str) -> Figures:
    """p50 and p99 of each leg of a conversion, from its entries' times (one host, one
    clock): the Convert call (send to reply), the outbox (A's convert-out to B's
    convert-in: wait for a sender, the call, B's group commit) and the answer (B's
    convert-in to A's convert-complete: B's reply, A's checks and write)."""
    times: dict[str, dict[str, float]] = {}
    for url, kind in ((a_url, "convert-out"), (b_url, "convert-in"), (a_url, "convert-complete")):
        engine = create_engine(normalise_url(url))
        try:
            times[kind] = entry_times(engine, kind)
        finally:
            engine.dispose()
    spans = {
        "call": [replied - sent for _, sent, replied in made],
        "outbox": [times["convert-in"][c] - times["convert-out"][c] for c, _, _ in made],
        "answer": [times["convert-complete"][c] - times["convert-in"][c] for c, _, _ in made],
    }
    figures: Figures = {}
    for name, values in spans.items():
        figures[f"{name}_p50_ms"] = percentile(values, 50) * 1000
        figures[f"{name}_p99_ms"] = percentile(values, 99) * 1000
    return figures


def convert_run(
    pool: ProcessPoolExecutor,
    a: BrandProcess,
    ga: NodeGroup,
    b_url: str,
    count: int,
    clients: int,
    procs: int,
    members: int,
) -> Figures:
    threads = [t for t in split(clients, procs) if t]
    numbers = list(range(count))
    chunks, start = [], 0
    for t in threads:
        share = count * t // clients
        chunks.append(numbers[start : start + share])
        start += share
    chunks[-1].extend(numbers[start:])
    key, tag = a.api_keys["operator"], uuid.uuid4().hex[:12]
    futures = [
        pool.submit(_convert_worker, ga.grpc[p:] + ga.grpc[:p], key, tag, chunk, members, t)
        for p, (chunk, t) in enumerate(zip(chunks, threads, strict=True))
    ]
    made = [x for f in futures for x in f.result()]
    assert len(made) == count
    deadline = time.monotonic() + 120
    engine = create_engine(normalise_url(ga.database_url))
    try:
        while True:
            done = completions(engine)
            if all(cid in done for cid, _, _ in made):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(done)} of {count} conversions completed in time")
            time.sleep(0.2)
    finally:
        engine.dispose()
    first = min(sent for _, sent, _ in made)
    last = max(done[cid] for cid, _, _ in made)
    latencies = [done[cid] - sent for cid, sent, _ in made]
    result = summary(count, last - first, latencies)
    result.update(legs(made, ga.database_url, b_url))
    return result


def audit(folder: Path, urls: dict[str, str]) -> str:
    manifest = Manifest.load(folder / "coalition.toml")
    sources = {A: DatabaseSource(urls[A]), B: DatabaseSource(urls[B])}
    try:
        reports, cross = audit_partners(
            sources, manifest.public_key, pending_before=None, progress=phase
        )
    finally:
        for source in sources.values():
            source.close()
    problems = [r.render() for r in reports.values() if not r.ok]
    if not cross.ok:
        problems.append(cross.render())
    if problems:
        raise SystemExit("audit failed:\n" + "\n".join(problems))
    totals = cross.totals[(A, B)]
    return (
        f"audit OK: {reports[A].entries:,} + {reports[B].entries:,} entries, "
        f"{totals.completed:,} conversions completed, {totals.credited:,} points credited"
    )


def timed(
    a: BrandProcess,
    ga: NodeGroup,
    gb: NodeGroup,
    tls: tuple[bytes, bytes, bytes, str],
    watch: tuple[str, list[str]] | None,
    args: argparse.Namespace,
) -> dict[str, Figures]:
    """The warm-up, then the timed phases, each with both nodes' CPU per operation."""
    n, c, p, m = args.conversions, args.clients, args.procs, args.members
    pids = {"a": ga.pids, "b": gb.pids}
    redeems = Writes(
        "redeem", "grpc", tuple(ga.grpc), a.api_keys["operator"], m, uuid.uuid4().hex[:8], MEMBER
    )
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.procs, mp_context=context) as pool:
        # warm up: channels, the outbox, both databases
        convert_run(pool, a, ga, gb.database_url, min(200, n), c, p, m)
        return {
            "bare_member": measured(
                lambda: bare(pool, ga.grpc, None, args.bare_calls, c, p), pids, watch
            ),
            "bare_partner_mtls": measured(
                lambda: bare(pool, [str(gb.partner_grpc)], tls, args.bare_calls, c, p),
                pids,
                watch,
            ),
            "redeem_write": measured(lambda: write_run(pool, redeems, n, c, p), pids, watch),
            "conversions": measured(
                lambda: convert_run(pool, a, ga, gb.database_url, n, c, p, m), pids, watch
            ),
        }


def report(results: dict[str, Figures]) -> dict[str, float]:
    """Print every phase and the conversions' ratios to each baseline; the ratios."""
    conv = results["conversions"]
    for name, r in results.items():
        text = (
            f"{name:18} {r['per_s']:8,.0f}/s   p50 {r['p50_ms']:7.2f} ms   "
            f"p99 {r['p99_ms']:7.2f} ms   CPU/op A {r['cpu_a_ms']:5.2f} ms, "
            f"B {r['cpu_b_ms']:5.2f} ms"
        )
        if "cpu_pg_ms" in r:
            text += f", PostgreSQL {r['cpu_pg_ms']:5.2f} ms"
        print(f"{text}   machine busy {r['machine_busy']:.0%}")
    print(
        "legs of a conversion (p50 / p99): "
        + ", ".join(
            f"{leg} {conv[f'{leg}_p50_ms']:.1f} / {conv[f'{leg}_p99_ms']:.1f} ms"
            for leg in ("call", "outbox", "answer")
        )
    )
    ratios = {}
    for name in ("bare_member", "bare_partner_mtls", "redeem_write"):
        r = results[name]
        ratios[f"conversions/{name}"] = conv["per_s"] / r["per_s"]
        ratios[f"conversions/{name}_p50"] = conv["p50_ms"] / r["p50_ms"]
        ratios[f"conversions/{name}_p99"] = conv["p99_ms"] / r["p99_ms"]
        print(
            f"conversions / {name}: throughput {ratios[f'conversions/{name}']:.1%}, "
            f"p50 x{ratios[f'conversions/{name}_p50']:.1f}, "
            f"p99 x{ratios[f'conversions/{name}_p99']:.1f}"
        )
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversions", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--bare-calls", type=int, default=20000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--processes", type=int, choices=(1, 2), default=1, help="per node")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    if args.database == "sqlite" and args.processes != 1:
        parser.error("SQLite takes one process per node; use --database postgres for two")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: the folder must be new or empty")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="coalition-bench-conv-"))
    folder.mkdir(parents=True, exist_ok=True)
    per_member = ((args.conversions + min(200, args.conversions)) // args.members + 2) * AMOUNT
    print(machine())
    print(
        f"{args.conversions:,} conversions of {AMOUNT} points, {args.members} members, "
        f"{args.clients} clients in {args.procs} processes; {args.database}, "
        f"{args.processes} process(es) per node"
    )
    coalition = make_coalition(folder, (A, B))
    a, b = coalition.brands[A], coalition.brands[B]
    with ExitStack() as stack:
        if args.database == "postgres":
            urls = {p: stack.enter_context(scratch_database(POSTGRES_URL)) for p in (A, B)}
            watch = (libpq_url(POSTGRES_URL), [database_name(u) for u in urls.values()])
        else:
            urls, watch = {A: a.database_url, B: b.database_url}, None
        ga, gb = groups(a, b, urls, args.processes)
        try:
            setup(a, b, ga, gb, args.members, per_member)
            manifest = Manifest.load(folder / "coalition.toml")
            tls = (*TlsFiles.for_program(manifest, A).read(), B)
            results = timed(a, ga, gb, tls, watch, args)
        finally:
            for group in (ga, gb):
                group.stop()
        verdict = audit(folder, urls)
    ratios = report(results)
    print(verdict)
    settings = {k: v for k, v in vars(args).items() if k not in ("keep", "json")}
    write_json(args.json, {"settings": settings, "ratios": ratios, **results})
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
