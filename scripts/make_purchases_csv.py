#!/usr/bin/env python3
"""Write N realistic purchase rows for ``coalition import-csv``.

    python scripts/make_purchases_csv.py 1000000 --members 5000 --out purchases.csv

Members are ``M0001`` .. ``M<members>`` (enroll them first; ``coalition demo`` uses the same
ids). Spends follow a rough airline mix: many partner purchases, fewer and larger flights,
some upgrades. Rows are written as they are generated, so any N fits in constant memory;
the same seed gives the same file, and each row's idempotency key makes a re-import a
replay.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys

MIX = (
    ("partners", 0.55, 800, 25_000),
    ("flights", 0.30, 4_900, 180_000),
    ("upgrades", 0.10, 2_500, 60_000),
    ("", 0.05, 500, 10_000),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int, help="number of purchase rows")
    parser.add_argument("--members", type=int, default=1000, help="distinct members")
    parser.add_argument("--out", default="-", help="output file (default: stdout)")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--prefix", default="CSV", help="reference and key prefix")
    args = parser.parse_args()
    if args.rows < 0 or args.members < 1:
        parser.error("rows must be >= 0 and members >= 1")
    rng = random.Random(args.seed)
    categories = [c for c, _, _, _ in MIX]
    weights = [w for _, w, _, _ in MIX]
    ranges = {c: (lo, hi) for c, _, lo, hi in MIX}
    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")  # noqa: SIM115
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["member_id", "reference", "spend_minor", "category", "idempotency_key"])
        for n in range(1, args.rows + 1):
            member = f"M{rng.randrange(1, args.members + 1):04d}"
            category = rng.choices(categories, weights)[0]
            lo, hi = ranges[category]
            reference = f"{args.prefix}-{n:08d}"
            writer.writerow(
                [member, reference, rng.randrange(lo, hi), category, f"csv:{reference}"]
            )
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
