"""``coalition``: the one command line of the project (run a node, operate it, verify proofs).

Operations talk to a running node over gRPC, authenticated either with ``--grpc`` and
``--api-key`` (or ``COALITION_API_KEY``), or with ``--config`` and ``--role``, which read
the address from the brand's configuration and the key from its local secret file.
Writes print the entry as JSON; every write takes ``--idempotency-key`` (a fresh one is
made and printed when omitted, so a retry with it cannot apply twice).

Each module of this package adds one group of subcommands (``keys``, ``run``, ``points``,
``ledger``, ``importing``, ``verify``, ``demo``, ``audit``); ``client`` connects the
commands that talk to a node.

Exit status: 0 success, 1 refused or failed (``error: ...`` on stderr, one line: also for a
full disk, a read-only or damaged database, ``store.failures``), 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from coalition.cli import audit, demo, importing, keys, ledger, points, run, verify
from coalition.cli.client import connection_options
from coalition.errors import CoalitionError
from coalition.store import failures

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``coalition`` parser; the groups are added in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="coalition", description="Coalition loyalty ledger: nodes, operations, proofs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conn = connection_options()
    keys.add_commands(sub)
    run.add_commands(sub)
    points.add_commands(sub, conn)
    ledger.add_commands(sub, conn)
    importing.add_commands(sub, conn)
    verify.add_commands(sub)
    demo.add_commands(sub)
    audit.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coalition`` console script."""
    args = build_parser().parse_args(argv)
    # A storage failure reaches the command as an error it prints once; without this
    # the node's log line for it would print a second time (logging's last resort).
    logging.getLogger(failures.__name__).addHandler(logging.NullHandler())
    try:
        return int(args.func(args))
    except CoalitionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the command writes or reads: a full disk, read-only ...
        failure = failures.classify(exc)
        print(f"error: {failure or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
