"""Run the deterministic simulator of the coalition protocol (tests/sim) by seed.

    python scripts/simulate.py --seed 42            one run, its trace hash and verdict
    python scripts/simulate.py --seeds 1000         seeds 1..1000 (``--start``), a summary
    python scripts/simulate.py --seeds 1000 --jobs 4

Each run starts three real partner nodes (SQLite, one thread, a simulated clock and
network) from one coalition built per process, drives a random workload under network
faults and crashes, lets the coalition settle and checks the invariants
(docs/reliability.md, "The deterministic simulator"). A failing seed prints what broke,
the end of its trace and the command that replays it; the exit status is 1 if any seed
failed. The same seed gives the same trace hash on every machine and every run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sim.nodes import Template, build_template  # noqa: E402
from sim.run import Result, Size, simulate  # noqa: E402

_template: Template | None = None
_folder: Path | None = None


def _worker_template() -> tuple[Template, Path]:
    """This process's coalition (built at its first run) and its scratch folder."""
    global _template, _folder
    if _template is None or _folder is None:
        _folder = Path(tempfile.mkdtemp(prefix="coalition-sim-"))
        _template = build_template(_folder / "template")
    return _template, _folder


def run_seed(seed: int, size: Size, trace_lines: int = 400) -> Result:
    logging.disable(logging.CRITICAL)  # the nodes log every refusal the faults cause
    template, folder = _worker_template()
    return simulate(seed, template, folder / f"seed-{seed}", size, trace_lines=trace_lines)


def _one(seed: int, size: Size, show_trace: bool) -> int:
    result = run_seed(seed, size, 1_000_000 if show_trace else 400)
    if show_trace:
        print("\n".join(result.tail))
    if not result.ok:
        print(result.report())
    verdict = "ok" if result.ok else "FAILED"
    print(
        f"seed {seed}: {verdict}, trace {result.digest}, {result.events} events, "
        f"{result.elapsed_s:.2f} s; {_stats(Counter(result.stats))}"
    )
    return 0 if result.ok else 1


def _stats(totals: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(totals.items()))


def _many(start: int, count: int, size: Size, jobs: int) -> int:
    seeds = range(start, start + count)
    began = time.perf_counter()
    failed: list[Result] = []
    totals: Counter[str] = Counter()
    with ProcessPoolExecutor(jobs) as pool:
        for done, result in enumerate(pool.map(run_seed, seeds, [size] * count), 1):
            totals.update(result.stats)
            if not result.ok:
                failed.append(result)
                print(result.report(), flush=True)
            if done % 50 == 0 or done == count:
                elapsed = time.perf_counter() - began
                print(
                    f"{done}/{count} seeds, {len(failed)} failed, {done / elapsed:.2f} seeds/s",
                    flush=True,
                )
    elapsed = time.perf_counter() - began
    print(
        f"{count} seeds ({start}..{start + count - 1}) in {elapsed:.1f} s with {jobs} "
        f"process(es): {count / elapsed:.2f} seeds/s, {len(failed)} failed"
    )
    print(f"totals: {_stats(totals)}")
    for result in failed:
        print(f"  replay: {result.command}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="run this one seed")
    which.add_argument("--seeds", type=int, help="run this many seeds, from --start")
    parser.add_argument("--start", type=int, default=1, help="the first seed of --seeds")
    parser.add_argument("--jobs", type=int, default=1, help="processes for --seeds")
    parser.add_argument("--ticks", type=int, default=Size().ticks, help="faulty ticks a run")
    parser.add_argument("--calm", type=int, default=Size().calm, help="most calm ticks")
    parser.add_argument("--trace", action="store_true", help="print the trace of --seed")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.ticks < 1 or args.calm < 1:
        parser.error("--jobs, --ticks and --calm must be at least 1")
    size = Size(ticks=args.ticks, calm=args.calm)
    if args.seed is not None:
        return _one(args.seed, size, args.trace)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return _many(args.start, args.seeds, size, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
