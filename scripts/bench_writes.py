#!/usr/bin/env python3
"""Single writes (redeem and earn) over gRPC and REST, against a bare gRPC round trip and
against pgbench TPC-B on the same PostgreSQL server, all in one run.

    .venv/bin/python scripts/bench_writes.py                              # SQLite, 1 process
    .venv/bin/python scripts/bench_writes.py --database postgres --processes 2
    .venv/bin/python scripts/bench_writes.py --database postgres --processes 2 --compare-one
    .venv/bin/python scripts/bench_writes.py --database postgres --writes 20000 --clients 64
    .venv/bin/python scripts/bench_writes.py --json /tmp/writes.json --keep /tmp/run

Setup (untimed): in a temporary folder, the demo's skyair ``node.toml`` run alone (no
coalition), keys from ``coalition keygen``; the database is a SQLite file (WAL,
``synchronous=FULL`` as shipped) or, with ``--database postgres``, a scratch database
created on the tests' PostgreSQL server (``$COALITION_TEST_POSTGRES_URL``) and dropped
afterwards. ``--processes N`` starts N ``coalition run`` processes of that one
``node.toml`` on their own ports (``benchlib.NodeGroup``; the first alone, so one
creates the schema); client channels are spread over them round robin. SQLite takes one
process. ``--members`` members are enrolled and credited once (one lot each). With
``--compare-one`` the same phases first run against one process on a database of its
own, so the N-process figures have a same-run baseline: throughput N/1 and the CPU per
write (node + PostgreSQL backends) N/1.

**Timed**, one phase after another, each by ``--clients`` threads (spread over
``--procs`` client processes, one channel or keep-alive HTTP connection per thread):

* ``bare_grpc``: ``grpc.health.v1.Health/Check`` on the member gRPC port, the baseline.
* ``redeem_grpc`` / ``redeem_rest``: ``Points.Redeem`` / ``POST
  /v1/members/{id}/redemptions`` of 1 point, ``--writes`` calls each, one ``redeem``
  entry a call.
* ``earn_grpc`` / ``earn_rest``: ``Points.EarnPurchase`` / ``POST /v1/members/{id}/earn``
  of one purchase, one ``earn`` entry (and one lot) a call.
* ``pgbench`` (PostgreSQL only, ``--no-pgbench`` skips it): ``pgbench -c CLIENTS -j 2 -T
  --pgbench-seconds`` of the built-in TPC-B script on a scratch database of the same
  server (``pgbench -i -s --pgbench-scale``, untimed).

Each phase prints ops/s, p50/p99, the node processes' CPU per operation and, on
PostgreSQL, the benchmark database's backends' CPU per operation (``benchlib.BackendCpu``),
then the ratios: each write / the bare round trip (throughput, p99) and / pgbench.
Afterwards the nodes stop (SIGTERM) and the run checks that every acknowledged write is
in the log exactly once, the log is dense and the chain audits; it exits 1 otherwise,
or when any call failed.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import shutil
import sys
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from benchlib import (
    POSTGRES_URL,
    Figures,
    NodeGroup,
    Writes,
    bare,
    database_name,
    libpq_url,
    line,
    log_problems,
    machine,
    measured,
    pgbench,
    scratch_database,
    standalone_config,
    write_json,
    write_run,
)

from coalition.ledger.keys import VerifyKey
from coalition.node.auth import Role
from coalition.node.config import load_config
from coalition.ops.keygen import find_secret

PROGRAM = "skyair"
SEED = 1_000_000  # the template's max_points_per_operation
PHASES = ("redeem_grpc", "redeem_rest", "earn_grpc", "earn_rest")


MEMBER = "W%06d"


def member(n: int) -> str:
    return MEMBER % n


# --- setup and checks -----------------------------------------------------------------


def enroll(group: NodeGroup, api_key: str, members: int) -> None:
    """Enroll and credit ``members`` members (one lot each) through the first process
    (setup is not what is measured; the timed phases spread over every process)."""
    from concurrent.futures import ThreadPoolExecutor

    from coalition.api.grpc.client import NodeClient

    def one(n: int) -> None:
        with NodeClient(group.grpc[0], api_key, timeout=30) as client:
            client.enroll(member(n), idempotency_key=f"enroll-{n}")
            client.adjust(member(n), SEED, "bench", "seed", idempotency_key=f"seed-{n}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(members)))


def check_log(url: str, public_key: VerifyKey, expected: int) -> str:
    """Every acknowledged write in the log once, the log dense, the chain sound."""
    count, problems = log_problems(url, public_key)
    if count != expected:
        problems.insert(0, f"{count} entries in the log, {expected} acknowledged")
    if problems:
        raise SystemExit("check failed:\n" + "\n".join(problems))
    return f"check OK: {count:,} entries, log dense, chain audits"


def timed(
    group: NodeGroup,
    api_key: str,
    phases: list[str],
    watch: tuple[str, list[str]] | None,
    args: argparse.Namespace,
) -> tuple[dict[str, Figures], int]:
    """The setup's writes, the warm-up, then the timed phases: (figures by phase, writes
    acknowledged in all, setup included)."""
    enroll(group, api_key, args.members)
    acknowledged = 2 * args.members  # enrolments and credits
    c, p, tag = args.clients, args.procs, uuid.uuid4().hex[:8]
    results: dict[str, Figures] = {}

    def writes(op: str, transport: str, tag: str = tag) -> Writes:
        targets = group.grpc if transport == "grpc" else group.http
        return Writes(op, transport, tuple(targets), api_key, args.members, tag, MEMBER)

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.procs, mp_context=context) as pool:
        for transport in ("grpc", "rest"):  # channels, pools, caches: untimed
            warm = writes("redeem", transport, "warm")
            acknowledged += int(write_run(pool, warm, min(200, args.writes), c, p)["count"])
        results["bare_grpc"] = measured(
            lambda: bare(pool, group.grpc, None, args.bare_calls, c, p),
            {"node": group.pids},
            watch,
        )
        for phase in phases:
            what = writes(*phase.split("_"))
            results[phase] = measured(
                functools.partial(write_run, pool, what, args.writes, c, p),
                {"node": group.pids},
                watch,
            )
            acknowledged += int(results[phase]["count"])
            print(line(phase, results[phase]))
    return results, acknowledged


def configuration(
    folder: Path, processes: int, phases: list[str], args: argparse.Namespace
) -> tuple[dict[str, Figures], str]:
    """One node of ``processes`` processes on a database of its own in ``folder``: the
    timed phases, then the log checked after the processes stopped."""
    folder.mkdir(parents=True)
    with ExitStack() as stack:
        config = standalone_config(folder)
        if args.database == "postgres":
            url = stack.enter_context(scratch_database(POSTGRES_URL))
            watch: tuple[str, list[str]] | None = (libpq_url(POSTGRES_URL), [database_name(url)])
        else:
            url, watch = load_config(config).database_url, None
        group = NodeGroup(config, url, processes)
        api_key = find_secret(load_config(config), Role.OPERATOR)
        group.start()
        try:
            results, acknowledged = timed(group, api_key, phases, watch, args)
        except BaseException:
            group.stop()
            raise
        group.stop()
        public_key = VerifyKey.from_pem((folder / "keys" / "public_key.pem").read_bytes())
        return results, check_log(url, public_key, acknowledged)


def cpu_per_write(r: Figures) -> float:
    """The node's and PostgreSQL's CPU per write (ms)."""
    return r["cpu_node_ms"] + r.get("cpu_pg_ms", 0.0)


def ratios_of(
    results: dict[str, Figures], one: dict[str, Figures] | None, phases: list[str]
) -> dict[str, float]:
    """Each phase against the bare round trip, pgbench and (when run) one process."""
    ratios: dict[str, float] = {}
    base = results["bare_grpc"]
    for phase in phases:
        r = results[phase]
        ratios[f"{phase}/bare_grpc"] = r["per_s"] / base["per_s"]
        ratios[f"{phase}/bare_grpc_p99"] = r["p99_ms"] / base["p99_ms"]
        if "pgbench" in results:
            ratios[f"{phase}/pgbench"] = r["per_s"] / results["pgbench"]["per_s"]
        if one is not None:
            ratios[f"{phase}/one_process"] = r["per_s"] / one[phase]["per_s"]
            ratios[f"{phase}/one_process_cpu"] = cpu_per_write(r) / cpu_per_write(one[phase])
    return ratios


def report(ratios: dict[str, float], phases: list[str], processes: int) -> None:
    for phase in phases:
        text_ = (
            f"{phase} / bare gRPC: throughput {ratios[f'{phase}/bare_grpc']:.1%}, "
            f"p99 x{ratios[f'{phase}/bare_grpc_p99']:.1f}"
        )
        if f"{phase}/pgbench" in ratios:
            text_ += f";  / pgbench TPC-B: {ratios[f'{phase}/pgbench']:.2f}"
        if f"{phase}/one_process" in ratios:
            text_ += (
                f";  {processes} processes / 1: {ratios[f'{phase}/one_process']:.2f}, "
                f"CPU per write x{ratios[f'{phase}/one_process_cpu']:.2f}"
            )
        print(text_)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--processes", type=int, default=1, help="node processes (PostgreSQL)")
    parser.add_argument(
        "--compare-one", action="store_true", help="also run 1 process first (PostgreSQL)"
    )
    parser.add_argument("--writes", type=int, default=5000, help="calls per write phase")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--bare-calls", type=int, default=20000)
    parser.add_argument("--pgbench-seconds", type=float, default=10.0)
    parser.add_argument("--pgbench-scale", type=int, default=1, help="pgbench -i -s")
    parser.add_argument("--no-pgbench", action="store_true", help="skip the pgbench phase")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    if not set(phases) <= set(PHASES):
        parser.error(f"--phases: choose among {', '.join(PHASES)}")
    if args.processes < 1 or args.writes < 1 or args.clients < 1 or args.procs < 1:
        parser.error("--processes, --writes, --clients and --procs must be positive")
    if args.database == "sqlite" and (args.processes != 1 or args.compare_one):
        parser.error("SQLite takes one node process; use --database postgres for several")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: the folder must be new or empty")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="coalition-bench-writes-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(machine())
    print(
        f"{args.database}, {args.processes} node process(es), {args.writes:,} writes a phase, "
        f"{args.clients} clients in {args.procs} processes, {args.members} members"
    )
    one = None
    if args.compare_one:
        print("1 process first (the baseline of the processes' ratio):")
        one, verdict_one = configuration(folder / "one", 1, phases, args)
        print(verdict_one)
        print(f"{args.processes} processes:")
    results, verdict = configuration(folder / "node", args.processes, phases, args)
    if args.database == "postgres" and not args.no_pgbench:
        results["pgbench"] = pgbench(
            POSTGRES_URL, args.clients, 2, args.pgbench_seconds, args.pgbench_scale
        )
    print()
    for name, r in results.items():
        print(line(name, r))
    ratios = ratios_of(results, one, phases)
    report(ratios, phases, args.processes)
    print(verdict)
    settings = {k: v for k, v in vars(args).items() if k not in ("keep", "json")}
    extra = {} if one is None else {"one_process": one}
    write_json(args.json, {"settings": settings, "ratios": ratios, **results, **extra})
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    failed = sum(int(r.get("errors", 0)) for r in [*results.values(), *(one or {}).values()])
    if failed:
        print(f"{failed} calls failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
