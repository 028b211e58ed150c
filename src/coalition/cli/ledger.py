"""``coalition proof`` and ``coalition consistency``: fetch a proof document from a running
node over gRPC and write it to a file (``coalition verify`` checks it offline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from coalition.cli.client import add_client_command, with_client


def save_document(doc: Any, out: str) -> int:
    """Write ``doc`` as indented JSON to ``out`` and say so; exit status 0."""
    Path(out).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0


def add_commands(sub: Any, conn: argparse.ArgumentParser) -> None:
    """Add ``proof`` and ``consistency``; ``conn`` is the connection options' parent."""
    p = add_client_command(sub, "proof", "fetch an entry's inclusion proof document", conn)
    p.add_argument("--entry", required=True)
    p.add_argument("--tree-size", type=int)
    p.add_argument("--out", required=True)
    p.set_defaults(
        func=with_client(lambda c, a: save_document(c.inclusion_proof(a.entry, a.tree_size), a.out))
    )

    p = add_client_command(
        sub, "consistency", "fetch a consistency proof between two heights", conn
    )
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--second", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(
        func=with_client(lambda c, a: save_document(c.consistency_proof(a.first, a.second), a.out))
    )
