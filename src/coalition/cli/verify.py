"""``coalition verify``: check a proof document (inclusion or consistency) offline,
against the program's public key; nothing is asked of a node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from coalition.errors import CoalitionError, InvalidArgument


def verify_file(path: Path, public_key_pem: Path) -> str:
    """Verify a proof document by its ``type``; the success message, or raises."""
    from coalition.ledger.canonical import parse_json
    from coalition.ledger.keys import VerifyKey
    from coalition.ledger.proofs import (
        CONSISTENCY_TYPE,
        INCLUSION_TYPE,
        verify_consistency_document,
        verify_inclusion_document,
    )

    try:
        key = VerifyKey.from_pem(public_key_pem.read_bytes())
        doc = parse_json(path.read_bytes())
    except OSError as exc:
        raise InvalidArgument(f"cannot read {exc.filename}: {exc.strerror}") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == INCLUSION_TYPE:
        verify_inclusion_document(doc, key)
        assert isinstance(doc, dict)
        entry, header = doc["entry"], doc["header"]
        assert isinstance(entry, dict) and isinstance(header, dict)
        return (
            f"OK: entry {entry['id']} ({entry['kind']}) is leaf {doc['leaf_index']} of the "
            f"{header['program']} log of size {doc['tree_size']}, signed at height "
            f"{header['height']} by key {key.key_id[:16]}"
        )
    if kind == CONSISTENCY_TYPE:
        verify_consistency_document(doc, key)
        assert isinstance(doc, dict)
        first, second = doc["first"], doc["second"]
        assert isinstance(first, dict) and isinstance(second, dict)
        return (
            f"OK: the {first['program']} log at height {second['height']} (size "
            f"{second['log_size']}) extends the log at height {first['height']} (size "
            f"{first['log_size']}), both signed by key {key.key_id[:16]}"
        )
    raise InvalidArgument(f"{path}: not a proof document (unknown type {kind!r})")


def _cmd_verify(args: argparse.Namespace) -> int:
    try:
        message = verify_file(Path(args.file), Path(args.public_key))
    except CoalitionError as exc:
        print(f"FAILED: {args.file}: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def add_commands(sub: Any) -> None:
    """Add ``verify``."""
    p = sub.add_parser("verify", help="verify a proof document offline")
    p.add_argument("file")
    p.add_argument("--public-key", required=True, help="the program's public_key.pem")
    p.set_defaults(func=_cmd_verify)
