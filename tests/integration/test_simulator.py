"""The deterministic simulator (tests/sim) in CI: a bounded number of seeds, each a run
of three real nodes under network faults and crashes, every invariant checked after it;
and the simulator's own promises: a seed replays to the same trace, a broken invariant
is reported with the command that replays the seed.

``python scripts/simulate.py --seeds 1000`` runs many more (docs/reliability.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.invariants import check
from sim.nodes import MEMBERS, Template, build_template
from sim.run import Result, Size, _Run, simulate

CI_SEEDS = range(1, 21)
"""The seeds CI runs (see CI_SIZE)."""
CI_SIZE = Size(ticks=20, calm=120, ops_per_tick=2)
"""Short runs, so the seeds stay within about a minute and a half on two loaded cores."""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    logging.disable(logging.CRITICAL)  # every injected fault is logged by the nodes
    try:
        yield build_template(tmp_path_factory.mktemp("sim") / "template")
    finally:
        logging.disable(logging.NOTSET)


def test_the_same_seed_replays_the_same_trace(template: Template, tmp_path: Path) -> None:
    first = simulate(7, template, tmp_path / "a", CI_SIZE)
    again = simulate(7, template, tmp_path / "b", CI_SIZE)
    other = simulate(8, template, tmp_path / "c", CI_SIZE)
    assert first.ok and again.ok and other.ok, first.report()
    assert first.events > 50
    assert first.digest == again.digest
    assert first.tail == again.tail
    assert other.digest != first.digest


def test_ci_seeds_keep_every_invariant(template: Template, tmp_path: Path) -> None:
    began = time.perf_counter()
    results = [simulate(seed, template, tmp_path / f"seed-{seed}", CI_SIZE) for seed in CI_SEEDS]
    elapsed = time.perf_counter() - began
    failed = [r for r in results if not r.ok]
    assert not failed, "\n\n".join(r.report() for r in failed)
    faults = sum(r.stats["faults"] + r.stats["crashes"] + r.stats["partitions"] for r in results)
    conversions = sum(r.stats.get("op convert", 0) for r in results)
    assert faults > len(results) and conversions > len(results)  # the runs did meet faults
    print(f"{len(results)} seeds in {elapsed:.1f} s, {faults} faults injected")


def test_a_broken_invariant_names_the_seed_to_replay(template: Template, tmp_path: Path) -> None:
    """Points issued behind the workload's back break conservation, and the report says
    how to replay the seed."""
    run = _Run(3, template, tmp_path / "run", CI_SIZE)
    try:
        run.faulty()
        assert run.calm() == []
        skyair = run.nodes["skyair"].service
        skyair.points.earn_purchase(MEMBERS[0], "off-the-books", 1000, idempotency_key="x")
        run.nodes["skyair"].seal()
        failures = check(run.nodes, template.manifest, run.work.issued, run.clock.now())
    finally:
        run.stop()
    assert any("skyair has" in f and "points outstanding" in f for f in failures), failures
    result = Result(3, CI_SIZE, run.trace.digest, failures, list(run.trace.tail))
    assert result.command == "python scripts/simulate.py --seed 3 --ticks 20 --calm 120"
    assert result.command in result.report() and failures[0] in result.report()
