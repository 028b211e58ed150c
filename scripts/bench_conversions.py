#!/usr/bin/env python3
"""End-to-end benchmark of conversions between two brand nodes, against a bare gRPC call.

    .venv/bin/python scripts/bench_conversions.py                  # 5,000 conversions, 32 clients
    .venv/bin/python scripts/bench_conversions.py --conversions 20000 --clients 64
    .venv/bin/python scripts/bench_conversions.py --keep /tmp/run  # keep the folder

Setup (untimed): in a temporary folder, skyair (A) and staybright (B) from ``nodes/``, each
``coalition run --config`` as its own process on free 127.0.0.1 ports with its own SQLite
file (WAL, ``synchronous=FULL`` as shipped), keys from ``coalition keygen --manifest`` and
mutual TLS from ``coalition tls-init`` (the fault tests' ``tests/support/processes.py``);
a 3:2 agreement with a 1% fee; ``--members`` members enrolled at both and funded at A.

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

Afterwards both nodes stop (SIGTERM) and ``audit_partners`` audits both chains and
reconciles them; the run fails unless everything is sound.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Engine, create_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
from bench_ingest import machine  # noqa: E402

from coalition.audit import audit_partners  # noqa: E402
from coalition.audit.sources import DatabaseSource  # noqa: E402
from coalition.ledger.entries import format_time, parse_time  # noqa: E402
from coalition.node.manifest import Manifest  # noqa: E402
from coalition.ops.tls import TlsFiles  # noqa: E402
from coalition.progress import phase  # noqa: E402
from coalition.store.ledger import bodies_of_kinds  # noqa: E402
from coalition.v1 import conversions_pb2, conversions_pb2_grpc  # noqa: E402

from support.processes import BrandProcess, make_coalition  # noqa: E402

A, B = "skyair", "staybright"
AMOUNT = 1000


def member(n: int) -> str:
    return f"B{n:05d}"


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


def setup(folder: Path, members: int, per_member: int) -> tuple[BrandProcess, BrandProcess]:
    coalition = make_coalition(folder, (A, B))
    a, b = coalition.brands[A], coalition.brands[B]
    b.start()
    a.start()
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
    return a, b


# --- client processes -----------------------------------------------------------------


def _convert_worker(
    target: str, api_key: str, tag: str, numbers: list[int], members: int, threads: int
) -> list[tuple[str, float, float]]:
    """Convert in ``threads`` threads; (conversion id, send time, reply time) each.
    Idempotency keys carry the run's ``tag``, so no run replays another's conversions."""
    metadata = (("authorization", f"Bearer {api_key}"),)
    results: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def run(part: list[int]) -> None:
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
    workers = [threading.Thread(target=run, args=(p,)) for p in parts if p]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def _health_worker(
    target: str, tls: tuple[bytes, bytes, bytes] | None, calls: int, threads: int
) -> list[float]:
    """``calls`` Health/Check round trips from ``threads`` threads; latencies in s."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run(count: int) -> None:
        if tls is None:
            channel = grpc.insecure_channel(target)
        else:
            ca, cert, key = tls
            credentials = grpc.ssl_channel_credentials(ca, key, cert)
            channel = grpc.secure_channel(
                target, credentials, options=[("grpc.ssl_target_name_override", B)]
            )
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connect first, untimed
        mine = []
        for _ in range(count):
            began = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            mine.append(time.perf_counter() - began)
        channel.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=run, args=(calls // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies


def _redeem_worker(
    target: str, api_key: str, numbers: list[int], members: int, threads: int
) -> list[float]:
    """One-point redemptions (a single-entry write each) from ``threads`` threads."""
    from coalition.v1 import points_pb2, points_pb2_grpc

    metadata = (("authorization", f"Bearer {api_key}"),)
    latencies: list[float] = []
    lock = threading.Lock()

    def run(part: list[int]) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = points_pb2_grpc.PointsStub(channel)
            mine = []
            for n in part:
                request = points_pb2.RedeemRequest(
                    member_id=member(n % members),
                    amount=1,
                    reference=f"bench-redeem-{n}",
                    idempotency_key=f"bench-redeem-{n}",
                )
                began = time.perf_counter()
                stub.Redeem(request, metadata=metadata, timeout=30)
                mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=run, args=(numbers[t::threads],)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies


def split(clients: int, procs: int) -> list[int]:
    return [clients // procs + (1 if p < clients % procs else 0) for p in range(procs)]


def bare(
    pool: ProcessPoolExecutor,
    target: str,
    tls: tuple[bytes, bytes, bytes] | None,
    calls: int,
    clients: int,
    procs: int,
) -> dict[str, float]:
    threads = [t for t in split(clients, procs) if t]
    began = time.perf_counter()
    futures = [pool.submit(_health_worker, target, tls, calls * t // clients, t) for t in threads]
    latencies = [x for f in futures for x in f.result()]
    elapsed = time.perf_counter() - began
    return summary(len(latencies), elapsed, latencies)


def write_run(
    pool: ProcessPoolExecutor, a: BrandProcess, count: int, clients: int, procs: int, members: int
) -> dict[str, float]:
    threads = [t for t in split(clients, procs) if t]
    numbers = list(range(count))
    key = a.api_keys["operator"]
    began = time.perf_counter()
    futures = [
        pool.submit(_redeem_worker, a.grpc, key, numbers[p :: len(threads)], members, t)
        for p, t in enumerate(threads)
    ]
    latencies = [x for f in futures for x in f.result()]
    return summary(len(latencies), time.perf_counter() - began, latencies)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values) / os.sysconf("SC_CLK_TCK")
    idle = (values[3] + values[4]) / os.sysconf("SC_CLK_TCK")
    return total - idle, total


def measured(
    run: Callable[[], dict[str, float]], a: BrandProcess, b: BrandProcess
) -> dict[str, float]:
    """``run()``'s figures plus the CPU each node process spent per operation (ms) and
    how busy the machine was."""
    assert a.proc is not None and b.proc is not None
    before = (cpu_seconds(a.proc.pid), cpu_seconds(b.proc.pid), *machine_busy())
    result = run()
    after = (cpu_seconds(a.proc.pid), cpu_seconds(b.proc.pid), *machine_busy())
    count = result["count"]
    result["cpu_a_ms"] = (after[0] - before[0]) * 1000 / count
    result["cpu_b_ms"] = (after[1] - before[1]) * 1000 / count
    result["machine_busy"] = (after[2] - before[2]) / (after[3] - before[3])
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(count: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    return {
        "count": count,
        "per_s": count / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


def completions(engine: Engine) -> dict[str, float]:
    """Conversion id -> time of its convert-complete entry on A (epoch seconds)."""
    with engine.connect() as conn:
        entries = bodies_of_kinds(conn, ["convert-complete"])
    done: dict[str, float] = {}
    for entry in entries:
        conversion, at = entry["conversion"], entry["at"]
        assert isinstance(conversion, dict) and isinstance(at, str)
        done[str(conversion["id"])] = parse_time(at).timestamp()
    return done


def convert_run(
    pool: ProcessPoolExecutor, a: BrandProcess, count: int, clients: int, procs: int, members: int
) -> dict[str, float]:
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
        pool.submit(_convert_worker, a.grpc, key, tag, chunk, members, t)
        for chunk, t in zip(chunks, threads, strict=True)
    ]
    made = [x for f in futures for x in f.result()]
    assert len(made) == count
    deadline = time.monotonic() + 120
    engine = create_engine(a.database_url)
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
    calls = [replied - sent for _, sent, replied in made]
    result["call_p50_ms"] = percentile(calls, 50) * 1000
    result["call_p99_ms"] = percentile(calls, 99) * 1000
    return result


def audit(folder: Path, a: BrandProcess, b: BrandProcess) -> str:
    manifest = Manifest.load(folder / "coalition.toml")
    sources = {A: DatabaseSource(a.database_url), B: DatabaseSource(b.database_url)}
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversions", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--bare-calls", type=int, default=20000)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="coalition-bench-conv-"))
    folder.mkdir(parents=True, exist_ok=True)
    warm_up = min(200, args.conversions)
    per_member = ((args.conversions + warm_up) // args.members + 2) * AMOUNT
    print(machine())
    print(
        f"{args.conversions:,} conversions of {AMOUNT} points, {args.members} members, "
        f"{args.clients} clients in {args.procs} processes"
    )
    a, b = setup(folder, args.members, per_member)
    try:
        manifest = Manifest.load(folder / "coalition.toml")
        tls = TlsFiles.for_program(manifest, A).read()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.procs, mp_context=context) as pool:
            # warm up: channels, the outbox, both databases
            convert_run(pool, a, warm_up, args.clients, args.procs, args.members)
            n, c, p, m = args.conversions, args.clients, args.procs, args.members
            results = {
                "bare_member": measured(
                    lambda: bare(pool, a.grpc, None, args.bare_calls, c, p), a, b
                ),
                "bare_partner_mtls": measured(
                    lambda: bare(pool, b.partner_grpc, tls, args.bare_calls, c, p), a, b
                ),
                "redeem_write": measured(lambda: write_run(pool, a, n, c, p, m), a, b),
                "conversions": measured(lambda: convert_run(pool, a, n, c, p, m), a, b),
            }
    finally:
        a.stop()
        b.stop()
    verdict = audit(folder, a, b)
    conv = results["conversions"]
    for name, r in results.items():
        print(
            f"{name:18} {r['per_s']:8,.0f}/s   p50 {r['p50_ms']:7.2f} ms   "
            f"p99 {r['p99_ms']:7.2f} ms   CPU/op A {r['cpu_a_ms']:5.2f} ms, "
            f"B {r['cpu_b_ms']:5.2f} ms   machine busy {r['machine_busy']:.0%}"
        )
    print(f"Convert call alone: p50 {conv['call_p50_ms']:.2f} ms, p99 {conv['call_p99_ms']:.2f} ms")
    for name in ("bare_member", "bare_partner_mtls", "redeem_write"):
        r = results[name]
        print(
            f"conversions / {name}: throughput {conv['per_s'] / r['per_s']:.1%}, "
            f"p50 x{conv['p50_ms'] / r['p50_ms']:.1f}, p99 x{conv['p99_ms'] / r['p99_ms']:.1f}"
        )
    print(verdict)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
