"""The nemesis (after Jepsen's): a thread that breaks the coalition's processes on a
schedule drawn from a seed, one fault at a time, each healed before the next.

Faults (``KINDS``): ``kill`` (SIGKILL a node process, restart it after a pause),
``pause`` (SIGSTOP a process for a few seconds, then SIGCONT: a stalled process, e.g. a
long GC pause or a frozen VM, which may hold the sealer lease or a partner call),
``restart`` (SIGTERM, wait for the graceful stop, start again) and, with PostgreSQL,
``postgres`` (``pg_ctl stop -m immediate``, start again after a pause: every node's
connections break at once). The victim, the pause and the gap before the next fault all
come from ``random.Random(seed)`` (the first faults are one of each kind, so even a short
run meets them all), so one seed gives one schedule; what the load does
meanwhile depends on timing, so a run is repeatable in its faults, not to the entry.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass

from coalition.errors import CoalitionError
from hammerlib.cluster import READY_TIMEOUT_S, Cluster

KINDS = ("kill", "pause", "restart")
POSTGRES_KINDS = ("postgres",)
WEIGHTS = {"kill": 45, "pause": 35, "restart": 10, "postgres": 15}


@dataclass
class Fault:
    at_s: float
    kind: str
    target: str
    held_s: float


class Nemesis:
    """Injects faults into ``cluster`` every ``interval_s`` (on average) from ``start``
    until ``finish``, which waits for the first round (one fault of each kind) to be
    done and the fault in progress to heal."""

    def __init__(self, cluster: Cluster, seed: int, interval_s: float) -> None:
        self.cluster = cluster
        self.interval_s = interval_s
        self.rng = random.Random(f"{seed}:nemesis")
        kinds = KINDS + (POSTGRES_KINDS if cluster.postgres is not None else ())
        self.kinds = list(kinds)
        self.weights = [WEIGHTS[k] for k in kinds]
        self.first_round = self.rng.sample(self.kinds, len(self.kinds))
        """Every kind once, in an order of the seed, before the weighted draws: a short
        run meets every fault."""
        self.faults: list[Fault] = []
        self.failures: list[str] = []
        """Faults that could not be injected or healed (a process that did not come back)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self.started = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def finish(self, timeout: float = 2 * READY_TIMEOUT_S) -> None:
        self._stop.set()
        if self._thread.ident is None:
            return  # never started (--no-faults)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.failures.append("the nemesis did not finish its last fault")

    def counts(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults)

    def _run(self) -> None:
        while True:
            gap = self.rng.uniform(0.5, 1.5) * self.interval_s
            if self._stop.wait(gap) and not self.first_round:
                return
            if self.first_round:
                kind = self.first_round.pop(0)
            else:
                kind = self.rng.choices(self.kinds, self.weights)[0]
            held = self.rng.uniform(0.5, 4.0)
            try:
                getattr(self, f"_{kind}")(held)
            except CoalitionError as exc:
                self.failures.append(f"{kind}: {exc}")
                try:
                    self.cluster.heal()
                except CoalitionError as again:
                    self.failures.append(f"heal after {kind}: {again}")

    def _record(self, kind: str, target: str, held: float) -> None:
        at = round(time.monotonic() - self.started, 1)
        self.faults.append(Fault(at, kind, target, round(held, 2)))

    def _victim(self) -> tuple[str, int]:
        every = self.cluster.every_process()
        name, n, _ = every[self.rng.randrange(len(every))]
        return name, n

    def _kill(self, held: float) -> None:
        name, n = self._victim()
        process = self.cluster.programs[name].processes[n]
        process.kill()
        self._record("kill", f"{name}/{n}", held)
        time.sleep(held)
        process.start()
        process.wait_ready(READY_TIMEOUT_S)

    def _pause(self, held: float) -> None:
        name, n = self._victim()
        process = self.cluster.programs[name].processes[n]
        os.kill(process.pid, signal.SIGSTOP)
        self._record("pause", f"{name}/{n}", held)
        try:
            time.sleep(held)
        finally:
            os.kill(process.pid, signal.SIGCONT)

    def _restart(self, held: float) -> None:
        name, n = self._victim()
        process = self.cluster.programs[name].processes[n]
        self._record("restart", f"{name}/{n}", held)
        process.stop()
        process.start()
        process.wait_ready(READY_TIMEOUT_S)

    def _postgres(self, held: float) -> None:
        postgres = self.cluster.postgres
        assert postgres is not None
        postgres.crash()
        self._record("postgres", "postgres", held)
        time.sleep(held)
        postgres.start()
