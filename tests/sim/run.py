"""One run of the simulator: a seed in, a trace hash and the violations found out.

The scheduler, in seeded order each tick: advances the clock, maybe injects a fault
(crash a node, restart one, partition or heal a pair), runs a few workload operations,
hands the delayed messages that fell due to their partners, and runs each node's
background jobs, one step each (seal, deliver the outbox, follow a partner, expire).
Then the calm phase: the network healed and fault-free, every node up, the open
redemptions resolved, the jobs run until nothing is pending (or the run fails for not
settling), and the invariants are checked (``invariants.check``). An exception other
than a CoalitionError anywhere is a failure too: a node that crashes on its own input.
"""

from __future__ import annotations

import itertools
import random
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import func, select

from coalition.errors import CoalitionError
from coalition.store import witness as witness_store

from sim.clock import EPOCH, SimClock
from sim.invariants import check, conversions_table, redemptions_table
from sim.network import CALM, SenderCrashed, SimNetwork
from sim.nodes import PROGRAMS, TEMPLATE_S, SimNode, Template, copy_databases
from sim.trace import Trace
from sim.workload import Workload

CHANCE = {"seal": 0.3, "deliver": 0.5, "follow": 0.3, "expire": 0.2}
"""How likely each background job is to run in a tick of the faulty phase: the sealer
less often than every tick, so blocks hold several entries as a real sealer's do."""


@dataclass(frozen=True)
class Size:
    """How long a run is: ticks with faults, then at most ``calm`` ticks to settle."""

    ticks: int = 60
    calm: int = 150
    ops_per_tick: int = 2


SMALL = Size()
"""The size CI runs (tests/integration/test_simulator.py)."""


@dataclass
class Result:
    seed: int
    size: Size
    digest: str
    failures: list[str]
    tail: list[str]
    events: int = 0
    elapsed_s: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def command(self) -> str:
        """The command that replays this run."""
        sized = "" if self.size == SMALL else f" --ticks {self.size.ticks} --calm {self.size.calm}"
        return f"python scripts/simulate.py --seed {self.seed}{sized}"

    def report(self) -> str:
        lines = [f"seed {self.seed}: {len(self.failures)} violation(s); replay: {self.command}"]
        lines += [f"  - {failure}" for failure in self.failures]
        lines.append("  last events of the trace:")
        lines += [f"    {line}" for line in self.tail[-40:]]
        return "\n".join(lines)


class _Run:
    def __init__(
        self, seed: int, template: Template, folder: Path, size: Size, trace_lines: int = 400
    ) -> None:
        self.rng = random.Random(seed)
        self.size = size
        self.clock = SimClock(EPOCH + timedelta(seconds=TEMPLATE_S))
        self.trace = Trace(trace_lines)
        self.network = SimNetwork(self.rng, self.clock, self.trace)
        self.template = template
        configs = copy_databases(template, folder)
        self.nodes = {p: SimNode(p, configs[p], self.clock, self.network) for p in PROGRAMS}
        self.work = Workload(self.rng, self.nodes, self.clock, self.trace)
        self.down_since: dict[str, int] = {}
        self.partitions = 0

    def note(self, text: str) -> None:
        self.trace.note(f"t={self.clock.monotonic():.6f} {text}")

    # --- the phases -----------------------------------------------------------------------

    def faulty(self) -> None:
        for node in self.nodes.values():
            node.start()
        for tick in range(self.size.ticks):
            self.clock.advance(self.rng.uniform(0.05, 3.0))
            self.inject(tick)
            for _ in range(self.rng.randint(0, self.size.ops_per_tick)):
                try:
                    self.work.step()
                except SenderCrashed as crash:
                    self.crashed(crash, tick)
            self.background(every=False, tick=tick)

    def crashed(self, crash: SenderCrashed, tick: int) -> None:
        self.nodes[crash.program].crash()
        self.down_since[crash.program] = tick
        self.note(f"fault: {crash}")

    def inject(self, tick: int) -> None:
        roll = self.rng.random()
        up = [p for p, n in self.nodes.items() if n.up]
        down = [p for p, n in self.nodes.items() if not n.up]
        if roll < 0.03 and len(up) > 1:
            program = self.rng.choice(up)
            self.nodes[program].crash()
            self.down_since[program] = tick
            self.note(f"fault: {program} crashed")
        elif roll < 0.10 and down:
            program = self.rng.choice(down)
            if tick - self.down_since[program] >= 3:
                self.nodes[program].start()
                self.note(f"fault: {program} restarted")
        elif roll < 0.13:
            pair = frozenset(self.rng.sample(PROGRAMS, 2))
            if pair not in self.network.cut:
                self.network.cut.add(pair)
                self.partitions += 1
                self.note(f"fault: partition {'|'.join(sorted(pair))}")
        elif roll < 0.18 and self.network.cut:
            pair = self.rng.choice(sorted(self.network.cut, key=sorted))
            self.network.cut.discard(pair)
            self.note(f"fault: healed {'|'.join(sorted(pair))}")

    def background(self, *, every: bool, tick: int = 0) -> None:
        """Due messages, then each node's jobs in a seeded order (all of them when
        ``every``, else each with its chance in ``CHANCE``)."""
        self.network.deliver_due()
        order = [p for p in PROGRAMS if self.nodes[p].up]
        self.rng.shuffle(order)
        for program in order:
            node = self.nodes[program]
            jobs: list[tuple[str, Callable[[], object]]] = [
                ("seal", node.seal),
                ("deliver", node.deliver),
            ]
            jobs += [
                (f"follow {partner}", partial(node.follow, partner))
                for partner in PROGRAMS
                if partner != program
            ]
            jobs.append(("expire", node.expire))
            self.rng.shuffle(jobs)
            for name, job in jobs:
                if not every and self.rng.random() >= CHANCE[name.split()[0]]:
                    continue
                if not node.up:
                    break
                try:
                    outcome = job()
                except SenderCrashed as crash:
                    self.crashed(crash, tick)
                    break
                except CoalitionError as exc:
                    self.note(f"job {name} at {program}: {type(exc).__name__}: {exc}")
                else:
                    if outcome:
                        self.note(f"job {name} at {program}: {outcome}")

    def calm(self) -> list[str]:
        """Heal, restart, settle; then each node proposes to each partner the statement of
        the time since their last one (settled, the partner MUST agree it; a statement the
        partner recorded alone is adopted on the way) and the coalition settles again."""
        self.network.faults = CALM
        self.network.cut.clear()
        self.note("calm: network healed")
        for node in self.nodes.values():
            if not node.up:
                node.start()
                self.note(f"calm: {node.program} restarted")
        if not self.settle():
            return [f"the coalition did not settle in {self.size.calm} calm ticks"]
        failures = []
        for _ in range(2):  # the second round: every pair has a new period to propose
            self.clock.advance(120.0)  # so the periods cover the whole run
            failures += self.statements()
        if not self.settle():
            failures.append(f"the coalition did not settle again in {self.size.calm} ticks")
        return failures

    def statements(self) -> list[str]:
        failures = []
        for first, second in itertools.permutations(PROGRAMS, 2):
            for attempt in (1, 2):  # the first may adopt a statement recorded alone
                try:
                    self.note(f"calm: {self.work.agree(self.nodes[first], second)}")
                    break
                except CoalitionError as exc:
                    self.note(f"calm: {first} proposing to {second}: {exc}")
                    if attempt == 2:
                        failures.append(
                            f"{first} could not agree its statement with {second} once "
                            f"settled: {type(exc).__name__}: {exc}"
                        )
        return failures

    def settle(self) -> bool:
        """Run calm ticks (the open redemptions resolved, every job every tick) until
        nothing is pending; False if ``size.calm`` ticks were not enough."""
        for _ in range(self.size.calm):
            self.clock.advance(self.rng.uniform(1.0, 5.0))
            for found in self.work.open_redemptions():
                node = self.nodes[found.asker]
                try:
                    self.note(f"calm: {self.work.resolve(node, found)}")
                except CoalitionError as exc:
                    self.note(f"calm: resolving {found.key}: {type(exc).__name__}: {exc}")
            self.background(every=True)
            if self.settled():
                return True
        return False

    def settled(self) -> bool:
        if self.network.in_flight or self.work.open_redemptions():
            return False
        for node in self.nodes.values():
            if node.conversions.outbox.pending():
                return False
            if node.service.sealer.log_size != node.service.sequencer.next_index:
                return False
        for program, node in self.nodes.items():
            for partner, other in self.nodes.items():
                if partner == program:
                    continue
                seen = node.witness.last_verified(partner)
                last = other.service.sealer.last
                if last is not None and (seen is None or seen.header.height < last.header.height):
                    return False
                with node.service.sequencer.read() as conn:
                    if witness_store.undelivered(conn, partner, node.witness.name):
                        return False
        return True

    def outcomes(self) -> Counter[str]:
        """How the conversions and the asked redemptions ended, across the nodes."""
        found: Counter[str] = Counter()
        for node in self.nodes.values():
            if not node.up:
                continue
            with node.service.sequencer.read() as conn:
                for table, what in (
                    (conversions_table, "conversions"),
                    (redemptions_table, "holds"),
                ):
                    query = select(table.c.status, func.count()).group_by(table.c.status)
                    for status, count in conn.execute(query):
                        found[f"{what} {status}"] += count
        return found

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def simulate(
    seed: int, template: Template, folder: Path, size: Size = SMALL, *, trace_lines: int = 400
) -> Result:
    """Run ``seed`` from ``template`` in ``folder`` (removed afterwards); the result
    keeps the last ``trace_lines`` lines of the trace."""
    started = time.perf_counter()
    run = _Run(seed, template, folder, size, trace_lines)
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    try:
        try:
            run.faulty()
            failures += run.calm()
            if not failures:
                failures += check(run.nodes, template.manifest, run.work.issued, run.clock.now())
            outcomes = run.outcomes()
        except Exception:
            failures.append(f"the run raised:\n{traceback.format_exc()}")
        finally:
            run.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for failure in failures:
        run.trace.aside(f"violation: {failure}")
    stats = {
        **{f"op {name}": count for name, count in sorted(run.work.ops.items())},
        "refused": sum(run.work.refused.values()),
        "calls": run.network.calls,
        "faults": run.network.faults_injected,
        "crashes": sum(node.crashes for node in run.nodes.values()),
        "partitions": run.partitions,
        **outcomes,
    }
    return Result(
        seed,
        size,
        run.trace.digest,
        failures,
        list(run.trace.tail),
        run.trace.events,
        time.perf_counter() - started,
        stats,
    )
