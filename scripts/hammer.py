#!/usr/bin/env python3
"""The hammer: the demo coalition under a mixed load while a nemesis breaks its
processes, then proof that nothing acknowledged was lost (issue 11, item 5; in the
manner of Tessera's hammer and Jepsen's nemeses).

It starts the demo's three programs as real ``coalition run`` processes (each on its own
SQLite file; with ``--postgres`` on a private PostgreSQL instance it starts itself with
``pg_ctl``, ``--processes`` processes per program), enrolls and seeds members, agrees
rates, and for ``--duration`` seconds runs writers (earns, redeems, transfers,
conversions, partner holds captured, voided or left to expire; ``hammerlib.load``) and
readers (inclusion and consistency proofs verified offline), while the nemesis
(``hammerlib.nemesis``, schedule from ``--seed``) SIGKILLs, SIGSTOPs and restarts node
processes and, on PostgreSQL, crashes and restarts the instance. Then it heals every
fault, waits for a quiescent coalition, stops it cleanly and checks
(``hammerlib.checks``): every acknowledged write present exactly once, every conversion
completed or refunded once, every hold ended, value conserved across chains, nothing
open past its deadline, ``coalition check`` and ``coalition audit --manifest``.

It prints operations done (by kind), faults injected (by kind), proofs verified and
anything lost (which must be nothing); ``--json FILE`` writes the same report. Exit 0
only when nothing was lost and every invariant held; 1 otherwise (the work folder, with
every node's log, is kept and named), 2 on bad usage.

    .venv/bin/python scripts/hammer.py --duration 60 --seed 7
    .venv/bin/python scripts/hammer.py --duration 600 --postgres --processes 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the private PostgreSQL instance (tests/support)
from hammerlib.checks import Verdict, check_stopped, quiesce  # noqa: E402
from hammerlib.cluster import Cluster, make_cluster  # noqa: E402
from hammerlib.load import ANSWER_TIMEOUT_S, Acks, Reader, Writer, members, onboard  # noqa: E402
from hammerlib.nemesis import Nemesis  # noqa: E402

from coalition.errors import CoalitionError  # noqa: E402

from support.private_postgres import PrivatePostgres  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults")
    parser.add_argument(
        "--seed", type=int, default=1, help="the nemesis's schedule (and the load's)"
    )
    parser.add_argument("--postgres", action="store_true", help="a private PostgreSQL instance")
    parser.add_argument(
        "--processes", type=int, default=None, help="processes per program (PostgreSQL; default 2)"
    )
    parser.add_argument("--members", type=int, default=24, help="members in every program")
    parser.add_argument("--writers", type=int, default=4, help="writer threads")
    parser.add_argument("--readers", type=int, default=1, help="proof reader threads")
    parser.add_argument(
        "--fault-interval", type=float, default=4.0, help="mean seconds between faults"
    )
    parser.add_argument("--no-faults", action="store_true", help="load only (a baseline)")
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    args = parser.parse_args(argv)
    if args.processes is None:
        args.processes = 2 if args.postgres else 1
    if args.processes > 1 and not args.postgres:
        parser.error("--processes above 1 needs --postgres")
    if (
        args.duration <= 0
        or args.members < 2
        or args.writers < 1
        or args.readers < 0
        or args.fault_interval <= 0
    ):
        parser.error("--duration, --writers, --fault-interval positive; --members at least 2")
    return args


def say(text: str) -> None:
    print(text, flush=True)


def hammer(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the hammer in ``work``; the report (``ok`` false when anything failed)."""
    started = time.monotonic()
    phases = Phases()
    postgres = PrivatePostgres() if args.postgres else None
    cluster: Cluster | None = None
    acks = Acks()
    try:
        if postgres is not None:
            postgres.start()
        cluster = make_cluster(work, postgres=postgres, processes=args.processes)
        cluster.start()
        phases.mark("start")
        say(
            f"coalition up: {', '.join(cluster.programs)} ({args.processes} process(es) each, "
            f"{'PostgreSQL' if postgres else 'SQLite'}); work folder {work}"
        )
        onboard(cluster, acks, members(args.members))
        phases.mark("onboard")
        return _run(args, cluster, acks, work, started, phases)
    finally:
        if cluster is not None:
            cluster.kill_all()
        elif postgres is not None:
            postgres.remove()


class Phases:
    """Seconds each phase of the run took (where the hammer's time goes)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self._last, 1)
        self._last = now


def _run(
    args: argparse.Namespace,
    cluster: Cluster,
    acks: Acks,
    work: Path,
    started: float,
    phases: Phases,
) -> dict[str, Any]:
    stop, give_up = threading.Event(), threading.Event()
    writers = [
        Writer(n, cluster, acks, args.seed, members(args.members), stop, give_up)
        for n in range(args.writers)
    ]
    readers = [Reader(n, cluster, acks, args.seed, stop) for n in range(args.readers)]
    nemesis = Nemesis(cluster, args.seed, args.fault_interval)
    for thread in [*writers, *readers]:
        thread.start()
    if not args.no_faults:
        nemesis.start()
    load_started = time.monotonic()
    time.sleep(args.duration)
    nemesis.finish()
    stop.set()
    failures = list(nemesis.failures)
    try:
        cluster.heal()
    except CoalitionError as exc:
        failures.append(f"could not heal the coalition: {exc}")
    threads: list[Writer | Reader] = [*writers, *readers]
    for thread in threads:
        thread.join(240)
        if thread.is_alive():
            give_up.set()
            thread.join(30)
            failures.append(f"{thread.name} was still sending after the load stopped")
        if thread.failure is not None:
            failures.append(f"{thread.name} crashed: {thread.failure!r}")
    load_s = time.monotonic() - load_started
    phases.mark("load")
    failures.extend(f"proof: {f}" for f in acks.proof_failures)
    failures.extend(f"unexpected refusal: {u}" for u in acks.unexpected[:20])
    if acks.unanswered:  # not lost (never acknowledged), but the coalition stopped answering
        failures.append(
            f"{len(acks.unanswered)} operations got no verdict in {ANSWER_TIMEOUT_S:.0f} s"
        )
    verdict = Verdict()
    try:
        quiesce(cluster)
    except CoalitionError as exc:
        failures.append(f"the coalition did not quiesce: {exc}")
    phases.mark("quiesce")
    failures.extend(cluster.stop())
    phases.mark("stop")
    try:
        verdict = check_stopped(cluster, acks, work)
    except CoalitionError as exc:
        failures.append(f"the checks could not run: {exc}")
    phases.mark("checks")
    failures.extend(verdict.failures)
    faults = nemesis.counts()
    report: dict[str, Any] = {
        "ok": not failures and not verdict.lost,
        "seed": args.seed,
        "store": "postgresql" if args.postgres else "sqlite",
        "processes_per_program": args.processes,
        "writers": args.writers,
        "readers": args.readers,
        "duration_s": args.duration,
        "load_s": round(load_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "phases_s": phases.seconds,
        "operations": dict(sorted(acks.done.items())),
        "acknowledged": len(acks.acks),
        "refused": dict(sorted(acks.refused.items())),
        "retries": dict(sorted(acks.retries.items())),
        "unanswered": acks.unanswered[:50],
        "faults": dict(sorted(faults.items())),
        "fault_schedule": [asdict(f) for f in nemesis.faults],
        "proofs": dict(sorted(acks.proofs.items())),
        "conversions": dict(verdict.conversions),
        "holds": dict(verdict.holds),
        "chains": verdict.chains,
        "lost": verdict.lost,
        "failures": failures,
        "work": str(work),
    }
    return report


def render(report: dict[str, Any]) -> str:
    def counts(values: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in values.items()) or "none"

    lines = [
        f"hammer seed {report['seed']}: {report['store']}, {report['processes_per_program']} "
        f"process(es) per program, {report['writers']} writers, {report['readers']} readers, "
        f"{report['load_s']} s of load ({report['total_s']} s in all)",
        f"operations   {report['acknowledged']:,} acknowledged: {counts(report['operations'])}",
        f"refused      {counts(report['refused'])}",
        f"retried      {counts(report['retries'])}",
        f"unanswered   {len(report['unanswered'])}",
        f"faults       {counts(report['faults'])}",
        f"proofs       {counts(report['proofs'])}",
        f"conversions  {counts(report['conversions'])}",
        f"holds        {counts(report['holds'])}",
        f"phases      {counts(report['phases_s'])} (s)",
    ]
    for program, chain in report["chains"].items():
        lines.append(
            f"chain        {program}: {chain['entries']:,} entries, supply {chain.get('supply')}"
        )
    lines.append(
        f"lost         {len(report['lost'])}" + "".join(f"\n  {x}" for x in report["lost"][:20])
    )
    lines.append(
        f"failures     {len(report['failures'])}"
        + "".join(f"\n  {x}" for x in report["failures"][:20])
    )
    lines.append(
        "OK: nothing lost, every invariant held"
        if report["ok"]
        else f"FAILED (logs in {report['work']})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="coalition-hammer-"))
    try:
        report = hammer(args, work)
    except CoalitionError as exc:
        say(f"HAMMER FAILED before its checks: {exc}\n(logs in {work})")
        return 1
    say(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if report["ok"] and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
