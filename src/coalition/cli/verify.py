"""``coalition verify``: check a proof document (inclusion or consistency) offline,
against the program's public key (its first key) and, for a program that rotated its
key, the rotations (``--key-rotations``, what ``GET /v1/ledger/key-rotations`` serves:
``[{"log_index", "entry"}]``); nothing is asked of a node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from coalition.errors import CoalitionError, InvalidArgument


def _schedule(key: Any, doc: Any, rotations: Any) -> Any:
    """The program's key schedule: ``key`` then each rotation of the file, checked."""
    from coalition.ledger.rotation import KeySchedule, rotation_of

    header = doc.get("header") or doc.get("first") if isinstance(doc, dict) else None
    program = header.get("program") if isinstance(header, dict) else None
    if not isinstance(program, str) or not isinstance(rotations, list):
        raise InvalidArgument("--key-rotations must be a list of {log_index, entry}")
    schedule = KeySchedule(program, key)
    for item in rotations:
        if not isinstance(item, dict) or set(item) != {"log_index", "entry"}:
            raise InvalidArgument("--key-rotations must be a list of {log_index, entry}")
        rotation = rotation_of(item["entry"])
        index = item["log_index"]
        if rotation is None or type(index) is not int:
            raise InvalidArgument("--key-rotations holds an entry that is not a key rotation")
        schedule.apply(rotation, index)
    return schedule


def verify_file(path: Path, public_key_pem: Path, key_rotations: Path | None = None) -> str:
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
        rotations = None if key_rotations is None else parse_json(key_rotations.read_bytes())
    except OSError as exc:
        raise InvalidArgument(f"cannot read {exc.filename}: {exc.strerror}") from None
    keys = key if rotations is None else _schedule(key, doc, rotations)
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == INCLUSION_TYPE:
        verify_inclusion_document(doc, keys)
        assert isinstance(doc, dict)
        entry, header = doc["entry"], doc["header"]
        assert isinstance(entry, dict) and isinstance(header, dict)
        return (
            f"OK: entry {entry['id']} ({entry['kind']}) is leaf {doc['leaf_index']} of the "
            f"{header['program']} log of size {doc['tree_size']}, signed at height "
            f"{header['height']} by key {_key_of(keys, header)}"
        )
    if kind == CONSISTENCY_TYPE:
        verify_consistency_document(doc, keys)
        assert isinstance(doc, dict)
        first, second = doc["first"], doc["second"]
        assert isinstance(first, dict) and isinstance(second, dict)
        return (
            f"OK: the {first['program']} log at height {second['height']} (size "
            f"{second['log_size']}) extends the log at height {first['height']} (size "
            f"{first['log_size']}), signed by keys {_key_of(keys, first)} and "
            f"{_key_of(keys, second)}"
        )
    raise InvalidArgument(f"{path}: not a proof document (unknown type {kind!r})")


def _key_of(keys: Any, header: Any) -> str:
    from coalition.ledger.blocks import BlockHeader
    from coalition.ledger.rotation import header_key

    return str(header_key(keys, BlockHeader.from_json(header)).key_id[:16])


def _cmd_verify(args: argparse.Namespace) -> int:
    rotations = None if args.key_rotations is None else Path(args.key_rotations)
    try:
        message = verify_file(Path(args.file), Path(args.public_key), rotations)
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
    p.add_argument(
        "--key-rotations",
        metavar="FILE",
        help="the program's key rotations (JSON, as GET /v1/ledger/key-rotations serves them)",
    )
    p.set_defaults(func=_cmd_verify)
