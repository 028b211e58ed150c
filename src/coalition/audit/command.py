"""``coalition audit`` and ``coalition check``: argparse glue for the CLI.

Exit codes: 0 the chain (or database) is sound, 1 faults were found, 2 bad usage or the
audit could not start (missing file, unreachable node, unreadable key).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from coalition.audit.chain_audit import audit_chain
from coalition.audit.db_check import check_database
from coalition.audit.sources import ChainSource, DatabaseSource, GrpcSource
from coalition.errors import CoalitionError, InvalidArgument
from coalition.ledger.blocks import BlockHeader, SignedHeader
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.ledger.keys import VerifyKey
from coalition.progress import Progress

OK, FAULTS, USAGE = 0, 1, 2


def add_audit_parser(subparsers: Any) -> None:
    """Add ``audit`` and ``check`` to the CLI's subparsers; each sets ``func``."""
    audit = subparsers.add_parser(
        "audit",
        help="verify a node's whole chain: signatures, links, roots, consistency, balances",
        description="Audit one program's chain, from its node's database or over gRPC. "
        "Exit 0 when sound, 1 on any fault, 2 on bad usage.",
    )
    where = audit.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the node's node.toml (its database and key)")
    where.add_argument("--database", metavar="URL", help="the node's database URL")
    where.add_argument("--grpc", metavar="HOST:PORT", help="a live node's gRPC address")
    audit.add_argument("--public-key", type=Path, metavar="PEM", help="the program's public key")
    audit.add_argument(
        "--api-key", help="API key for --grpc (default: $COALITION_API_KEY); auditor role"
    )
    audit.add_argument("--program", help="pin the program id (default: the chain's own)")
    audit.add_argument(
        "--trusted", type=Path, metavar="FILE", help="a signed header JSON seen before to pin"
    )
    audit.add_argument(
        "--save-header",
        type=Path,
        metavar="FILE",
        help="when sound, write the newest header here (pass it as --trusted next time)",
    )
    audit.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON report")
    audit.set_defaults(func=run_audit)

    check = subparsers.add_parser(
        "check",
        help="check that a node's database equals the replay of its own entries",
        description="Replay the node's entries and compare with its accounts and lots. "
        "Exit 0 when equal, 1 on any difference, 2 on bad usage.",
    )
    db = check.add_mutually_exclusive_group(required=True)
    db.add_argument("--config", type=Path, help="the node's node.toml")
    db.add_argument("--database", metavar="URL", help="the node's database URL")
    check.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON report")
    check.set_defaults(func=run_check)


def _config_database_and_key(path: Path) -> tuple[str, VerifyKey]:
    from coalition.node.app import read_signing_key
    from coalition.node.config import load_config

    config = load_config(path)
    return config.database_url, read_signing_key(config).public_key


def _read_public_key(path: Path) -> VerifyKey:
    try:
        return VerifyKey.from_pem(path.read_bytes())
    except OSError as exc:
        raise InvalidArgument(f"cannot read the public key {path}: {exc}") from None


def _read_trusted(path: Path) -> SignedHeader:
    try:
        return SignedHeader.from_json(parse_json(path.read_bytes()))
    except OSError as exc:
        raise InvalidArgument(f"cannot read the trusted header {path}: {exc}") from None


def _write_json(path: Path, document: JsonObject) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _open_source(args: argparse.Namespace) -> tuple[ChainSource, VerifyKey]:
    if args.config is not None:
        url, key = _config_database_and_key(args.config)
        if args.public_key is not None:
            key = _read_public_key(args.public_key)
        return DatabaseSource(url), key
    if args.database is not None:
        if args.public_key is None:
            raise InvalidArgument("--database needs --public-key (the program's public key)")
        return DatabaseSource(args.database), _read_public_key(args.public_key)
    if args.public_key is not None:
        key = _read_public_key(args.public_key)
    source = GrpcSource(args.grpc, args.api_key or os.environ.get("COALITION_API_KEY"))
    if args.public_key is not None:
        return source, key
    try:
        announced = source.public_key()
    except CoalitionError:
        source.close()
        raise
    if announced is None:
        source.close()
        raise InvalidArgument("the node announces no public key: pass --public-key")
    print(
        f"warning: using the key the node announces ({announced.key_id[:16]}...); "
        "pin it with --public-key",
        file=sys.stderr,
    )
    return source, announced


def _total(source: ChainSource) -> int | None:
    latest = source.latest_header()
    if latest is None:
        return None
    try:
        return BlockHeader.from_json(parse_json(latest.header)).log_size
    except CoalitionError:
        return None


def run_audit(args: argparse.Namespace) -> int:
    """Run ``coalition audit``; prints the report, returns the exit code."""
    try:
        trusted = _read_trusted(args.trusted) if args.trusted is not None else None
        source, key = _open_source(args)
    except CoalitionError as exc:
        print(f"coalition audit: {exc}", file=sys.stderr)
        return USAGE
    try:
        with Progress("audit entries", _total(source)) as bar:
            report = audit_chain(
                source, key, program=args.program, trusted=trusted, progress=bar.advance
            )
    except CoalitionError as exc:
        print(f"coalition audit: cannot read the chain: {exc}", file=sys.stderr)
        return USAGE
    finally:
        source.close()
    print(report.render())
    if args.json is not None:
        _write_json(args.json, report.to_json())
    if args.save_header is not None and report.ok and report.last_header is not None:
        args.save_header.write_bytes(canonical_json(report.last_header.to_json()) + b"\n")
    return OK if report.ok else FAULTS


def run_check(args: argparse.Namespace) -> int:
    """Run ``coalition check``; prints the report, returns the exit code."""
    try:
        url = _config_database_and_key(args.config)[0] if args.config is not None else args.database
        with Progress("check entries", None) as bar:
            report = check_database(url, progress=bar.advance)
    except CoalitionError as exc:
        print(f"coalition check: {exc}", file=sys.stderr)
        return USAGE
    print(report.render())
    if args.json is not None:
        _write_json(args.json, report.to_json())
    return OK if report.ok else FAULTS
