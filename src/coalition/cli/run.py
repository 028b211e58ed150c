"""``coalition run`` and ``coalition migrate``: run a brand's node from its node.toml, and
bring (or check) its database schema at this version's revision."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def _cmd_run(args: argparse.Namespace) -> int:
    from coalition.node.config import load_config
    from coalition.runtime.runner import run_node

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_node(load_config(args.config))
    return 0


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
