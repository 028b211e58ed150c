#!/usr/bin/env python3
"""The sealer's failover time on PostgreSQL: several processes of one node, the one that
holds the sealer lease SIGKILLed while writes go on, until another seals the next block.

    .venv/bin/python scripts/bench_failover.py                        # 3 processes, 5 rounds
    .venv/bin/python scripts/bench_failover.py --processes 2 --rounds 10 --writers 16
    .venv/bin/python scripts/bench_failover.py --json /tmp/failover.json --keep /tmp/run

Setup (untimed): the demo's skyair ``node.toml`` run alone, ``--processes`` ``coalition
run`` processes of it on one scratch PostgreSQL database of the tests' server
(``$COALITION_TEST_POSTGRES_URL``, dropped afterwards; ``benchlib.NodeGroup``), the
sealer's ``max_delay_ms`` set to ``--seal-ms``; ``--members`` members enrolled and
credited. ``--writers`` threads redeem 1 point a call, round robin over the processes
that are up, for the whole run; a call counts as acknowledged when it returns OK.

Each round: ``--settle`` seconds of steady writing (the **baseline**: the interval
between blocks seen in that time, the writes/s and the node processes' CPU per write),
then the process whose ``/healthz`` says ``sealer: true`` (with its ``pid``) is
SIGKILLed and taken out of the writers' rotation; the **failover time** runs from the
kill until the database holds a block above the highest one at the kill (another
process sealed it), and the new sealer is read from ``/healthz``. The killed process
is restarted before the next round. The report gives the median failover time, its
ratio to the median block interval, and the rounds.

Afterwards the processes stop (SIGTERM) and the run checks that every acknowledged write
is in the log exactly once, the log is dense and the chain audits; it exits 1 otherwise,
or when a round saw no takeover within ``--timeout`` seconds.

It needs a node whose processes share one PostgreSQL database correctly and elect one
sealer, and whose ``/healthz`` reports ``pid`` and ``sealer`` (issue 10, items 1-3).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from benchlib import (
    POSTGRES_URL,
    Figures,
    NodeGroup,
    cpu_seconds,
    log_problems,
    machine,
    scratch_database,
    standalone_config,
    write_json,
)
from sqlalchemy import Engine, create_engine, text

from coalition.demo.processes import NodeProcess
from coalition.ledger.keys import VerifyKey
from coalition.node.auth import Role
from coalition.node.config import load_config
from coalition.ops.keygen import find_secret
from coalition.store.db import normalise_url

MEMBER = "F%05d"
SEED = 1_000_000  # the template's max_points_per_operation
POLL_S = 0.02


def health(node: NodeProcess) -> dict[str, Any]:
    """The process's ``/healthz`` document."""
    with urllib.request.urlopen(f"http://{node.http}/healthz", timeout=2) as reply:
        document: dict[str, Any] = json.loads(reply.read())
    if "sealer" not in document or "pid" not in document:
        raise SystemExit(
            f"/healthz of {node.http} names no sealer and pid ({document}): this node "
            "cannot say which process seals (issue 10, item 3)"
        )
    return document


def sealer(nodes: list[NodeProcess], timeout: float) -> NodeProcess:
    """The one process of ``nodes`` whose ``/healthz`` says it seals, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        claims = []
        for node in nodes:
            try:
                document = health(node)
            except OSError:
                continue
            if document["sealer"]:
                claims.append((node, int(document["pid"])))
        if len(claims) == 1:
            node, pid = claims[0]
            assert node.process is not None
            if pid != node.process.pid:
                raise SystemExit(f"{node.http} says pid {pid}, its process is {node.process.pid}")
            return node
        if len(claims) > 1:
            raise SystemExit(
                f"{len(claims)} processes say they seal: {[n.http for n, _ in claims]}"
            )
        if time.monotonic() > deadline:
            raise SystemExit(f"no process says it seals after {timeout:.0f} s")
        time.sleep(POLL_S)


def height(engine: Engine) -> int:
    with engine.connect() as conn:
        top = conn.execute(text("SELECT max(height) FROM blocks")).scalar()
    return -1 if top is None else int(top)


class Writers:
    """``count`` threads redeeming 1 point a call over the processes in ``targets``
    (round robin; the list may change while they run): the acknowledged keys, the
    failed calls."""

    def __init__(self, count: int, api_key: str, members: int, targets: list[str]) -> None:
        self.targets = list(targets)
        self.acknowledged: list[str] = []
        self.failed = 0
        self._count, self._key, self._members = count, api_key, members
        self._numbers = itertools.count()
        self._tag = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        from coalition.v1 import points_pb2, points_pb2_grpc

        metadata = (("authorization", f"Bearer {self._key}"),)
        channels: dict[str, Any] = {}
        while not self._stop.is_set():
            n = next(self._numbers)
            with self._lock:
                target = self.targets[n % len(self.targets)] if self.targets else None
            if target is None:
                time.sleep(POLL_S)
                continue
            if target not in channels:
                channels[target] = points_pb2_grpc.PointsStub(grpc.insecure_channel(target))
            key = f"fo-{self._tag}-{n}"
            request = points_pb2.RedeemRequest(
                member_id=MEMBER % (n % self._members), amount=1, reference=key, idempotency_key=key
            )
            try:
                channels[target].Redeem(request, metadata=metadata, timeout=10)
            except grpc.RpcError:
                with self._lock:
                    self.failed += 1
                continue
            with self._lock:
                self.acknowledged.append(key)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run) for _ in range(self._count)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def remove(self, target: str) -> None:
        with self._lock:
            self.targets.remove(target)

    def add(self, target: str) -> None:
        with self._lock:
            self.targets.append(target)

    def done(self) -> int:
        with self._lock:
            return len(self.acknowledged)


def steady(group: NodeGroup, writers: Writers, engine: Engine, seconds: float) -> Figures:
    """The baseline of a round: ``seconds`` of writing; block interval, writes/s, CPU."""
    pids = group.pids
    cpu0, done0, t0 = sum(cpu_seconds(p) for p in pids), writers.done(), time.monotonic()
    changes, last = [], height(engine)
    while time.monotonic() - t0 < seconds:
        now = height(engine)
        if now != last:
            changes.append(time.monotonic())
            last = now
        time.sleep(POLL_S)
    elapsed = time.monotonic() - t0
    writes = writers.done() - done0
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    intervals = [b - a for a, b in itertools.pairwise(changes)]
    return {
        "block_interval_ms": statistics.median(intervals) * 1000 if intervals else float("nan"),
        "writes_per_s": writes / elapsed,
        "cpu_node_ms": cpu * 1000 / writes if writes else float("nan"),
    }


def failover(
    group: NodeGroup, writers: Writers, engine: Engine, timeout: float
) -> tuple[float, NodeProcess, NodeProcess]:
    """Kill the sealer; seconds until another process sealed a block; (time, old, new)."""
    old = sealer(group.nodes, timeout)
    writers.remove(old.grpc)
    began = time.monotonic()
    old.kill()
    before = height(engine)
    while height(engine) <= before:
        if time.monotonic() - began > timeout:
            raise SystemExit(f"no block sealed {timeout:.0f} s after the sealer was killed")
        time.sleep(POLL_S)
    elapsed = time.monotonic() - began
    survivors = [n for n in group.nodes if n is not old]
    return elapsed, old, sealer(survivors, timeout)


def check(url: str, public_key: VerifyKey, acknowledged: list[str]) -> str:
    """Every acknowledged write once in the log, the log dense, the chain sound."""
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            keys = [
                str(k)
                for (k,) in conn.execute(
                    text("SELECT idem_key FROM entries WHERE idem_key LIKE 'fo-%'")
                )
            ]
    finally:
        engine.dispose()
    problems = []
    present = set(keys)
    missing = [k for k in acknowledged if k not in present]
    if missing:
        problems.append(f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}")
    if len(keys) != len(present):
        problems.append(f"{len(keys) - len(present)} writes in the log twice")
    count, log = log_problems(url, public_key)
    problems += log
    if problems:
        raise SystemExit("check failed:\n" + "\n".join(problems))
    return (
        f"check OK: {len(acknowledged):,} acknowledged writes all present once "
        f"({len(present) - len(acknowledged):,} more committed unacknowledged), "
        f"{count:,} entries, log dense, chain audits"
    )


@contextmanager
def running(group: NodeGroup) -> Iterator[NodeGroup]:
    group.start()
    try:
        yield group
    finally:
        group.stop()


def rounds(
    group: NodeGroup, writers: Writers, engine: Engine, args: argparse.Namespace
) -> list[Figures]:
    """The measured rounds: steady baseline, kill, takeover, restart."""
    found = []
    for n in range(args.rounds):
        base = steady(group, writers, engine, args.settle)
        took, old, new = failover(group, writers, engine, args.timeout)
        print(
            f"round {n + 1}/{args.rounds}: failover {took * 1000:7.0f} ms "
            f"(killed {old.http}, {new.http} seals)   steady: block every "
            f"{base['block_interval_ms']:5.0f} ms, {base['writes_per_s']:6,.0f} writes/s, "
            f"node CPU/write {base['cpu_node_ms']:5.2f} ms",
            flush=True,
        )
        found.append({"failover_ms": took * 1000, **base})
        old.start()
        old.wait_ready()
        writers.add(old.grpc)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3, help="node processes (>= 2)")
    parser.add_argument("--rounds", type=int, default=5, help="kills (median)")
    parser.add_argument("--writers", type=int, default=8, help="writing threads")
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--settle", type=float, default=3.0, help="steady seconds a round")
    parser.add_argument("--seal-ms", type=int, default=50, help="the sealer's max_delay_ms")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait a takeover")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    if args.processes < 2 or args.rounds < 1 or args.writers < 1 or args.members < 1:
        parser.error("--processes must be at least 2; --rounds, --writers, --members positive")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: the folder must be new or empty")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="coalition-bench-failover-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(machine())
    print(
        f"{args.processes} processes of one node on PostgreSQL, {args.writers} writers, "
        f"{args.rounds} rounds, sealer max_delay_ms={args.seal_ms}"
    )
    config = standalone_config(folder, sealer_ms=args.seal_ms)
    api_key = find_secret(load_config(config), Role.OPERATOR)
    with scratch_database(POSTGRES_URL) as url:
        engine = create_engine(normalise_url(url))
        try:
            with running(NodeGroup(config, url, args.processes)) as group:
                from coalition.api.grpc.client import NodeClient

                with NodeClient(group.grpc[0], api_key, timeout=30) as client:
                    for n in range(args.members):
                        client.enroll(MEMBER % n, idempotency_key=f"enroll-{n}")
                        client.adjust(MEMBER % n, SEED, "bench", "seed", idempotency_key=f"s-{n}")
                writers = Writers(args.writers, api_key, args.members, group.grpc)
                writers.start()
                try:
                    found = rounds(group, writers, engine, args)
                finally:
                    writers.stop()
        finally:
            engine.dispose()
        public_key = VerifyKey.from_pem((folder / "keys" / "public_key.pem").read_bytes())
        verdict = check(url, public_key, writers.acknowledged)
    median = {key: statistics.median(r[key] for r in found) for key in found[0]}
    ratio = median["failover_ms"] / median["block_interval_ms"]
    print(
        f"failover median {median['failover_ms']:.0f} ms (max "
        f"{max(r['failover_ms'] for r in found):.0f} ms), steady block interval "
        f"{median['block_interval_ms']:.0f} ms: ratio x{ratio:.1f}; node CPU/write "
        f"{median['cpu_node_ms']:.2f} ms; {writers.failed} calls failed (to killed processes)"
    )
    print(verdict)
    settings = {k: v for k, v in vars(args).items() if k not in ("keep", "json")}
    write_json(
        args.json,
        {
            "settings": settings,
            "median": median,
            "ratio_failover_to_block_interval": ratio,
            "rounds": found,
            "acknowledged": len(writers.acknowledged),
            "failed_calls": writers.failed,
        },
    )
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
