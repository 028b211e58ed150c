"""``coalition run`` and ``coalition migrate``: run a brand's node from its node.toml, and
bring (or check) its database schema at this version's revision.

``coalition run`` runs one process of the node (today's behaviour, the default);
``--processes N`` (N > 1, PostgreSQL only) runs a supervisor of N workers sharing the
node's ports (``runtime.supervisor``); ``--reuse-port`` lets separately started processes
of one node share its ports the same way."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def _cmd_run(args: argparse.Namespace) -> int:
    import dataclasses
    import threading
    from pathlib import Path

    from coalition.node.config import load_config
    from coalition.runtime.runner import run_node
    from coalition.runtime.supervisor import Supervisor, check_processes, watch_parent

    several = args.processes > 1 or args.worker_of is not None
    shown = "%(asctime)s [%(process)d] %(levelname)s %(message)s" if several else None
    logging.basicConfig(level=logging.INFO, format=shown or "%(asctime)s %(levelname)s %(message)s")
    config = load_config(args.config)
    check_processes(config, args.processes)
    if args.processes > 1:
        return Supervisor(Path(args.config), args.processes).run()
    stop = None
    if args.worker_of is not None:
        stop = threading.Event()
        watch_parent(args.worker_of, stop)
    if args.reuse_port or args.worker_of is not None:
        config = dataclasses.replace(config, reuse_port=True)
    run_node(config, stop)
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_migrate(args: argparse.Namespace) -> int:
    from coalition.node.config import load_config
    from coalition.store.db import ensure_sqlite_folder, make_engine, sqlite_file
    from coalition.store.schema import head_revision, schema_state, upgrade_schema

    config = load_config(args.config)
    file = sqlite_file(config.database_url)
    if args.check and file is not None and not file.exists():
        print(f"no database at {file} yet: migrating creates it at revision {head_revision()}")
        return 1
    ensure_sqlite_folder(config.database_url)
    engine = make_engine(config.database_url, sqlite_synchronous=config.sqlite_synchronous)
    try:
        if not args.check:
            print(f"schema at revision {upgrade_schema(engine)}")
            return 0
        state = schema_state(engine)
        if state.current:
            print(f"schema at revision {state.head}: current")
        elif state.legacy:
            print(
                f"no schema revision (made before migrations): migrating checks its tables, "
                f"stamps it at the baseline and upgrades it to {state.head}"
            )
        elif state.revision is None:
            print(f"no schema yet: migrating creates it at revision {state.head}")
        else:
            print(f"schema at revision {state.revision}: migrating upgrades it to {state.head}")
        return 0 if state.current else 1
    finally:
        engine.dispose()


def add_commands(sub: Any) -> None:
    """Add ``run`` and ``migrate``."""
    p = sub.add_parser("run", help="run a brand's node until SIGTERM/SIGINT")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--processes",
        type=_count,
        default=1,
        metavar="N",
        help="run N worker processes of this node sharing its ports (SO_REUSEPORT), "
        "restarted when they die; N > 1 needs PostgreSQL (default 1: this process)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the node's ports with the other processes of this node on this host "
        "(SO_REUSEPORT), e.g. processes started one by one",
    )
    # A worker of --processes: the supervisor's pid (ports shared, stops if it dies).
    p.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "migrate", help="upgrade a node's database schema to this version's (and print it)"
    )
    p.add_argument("--config", required=True)
    p.add_argument(
        "--check",
        action="store_true",
        help="only report the schema's revision; exit 1 when it is not current",
    )
    p.set_defaults(func=_cmd_migrate)
