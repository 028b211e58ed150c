"""``coalition demo`` and ``coalition scenario``: the three-brand coalition demo, on
nodes it starts itself or against a running coalition (docker compose)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_demo(args: argparse.Namespace) -> int:
    from coalition.demo.scenario import DemoOptions, run_demo

    options = DemoOptions(
        members=args.members,
        purchases=args.purchases,
        conversions=args.conversions,
        serve=args.serve,
    )
    return run_demo(Path(args.out), options)


def _cmd_scenario(args: argparse.Namespace) -> int:
    from coalition.demo.scenario import DemoOptions, run_scenario

    options = DemoOptions(
        members=args.members, purchases=args.purchases, conversions=args.conversions
    )
    return run_scenario(Path(args.manifest), Path(args.out), options)


def add_commands(sub: Any) -> None:
    """Add ``demo`` and ``scenario``."""
    p = sub.add_parser("demo", help="run the three-brand coalition demo, write the evidence")
    p.add_argument("--out", default="demo-out", help="work folder and evidence (wiped)")
    _add_sizes(p)
    p.add_argument(
        "--serve",
        action="store_true",
        help="afterwards, run the nodes again (explorer at /explorer/) until Ctrl-C",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "scenario", help="run the demo's scenario against a running coalition (docker compose)"
    )
    p.add_argument("--manifest", required=True, help="the coalition manifest")
    p.add_argument("--out", default="demo-out", help="evidence folder (wiped)")
    _add_sizes(p)
    p.set_defaults(func=_cmd_scenario)


def _add_sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", type=int, default=30, help="members in every program")
    p.add_argument("--purchases", type=int, default=600, help="purchases per program")
    p.add_argument("--conversions", type=int, default=300, help="conversions in all")
