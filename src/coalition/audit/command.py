"""``coalition audit``, ``coalition audit-coalition`` and ``coalition check``: argparse
glue for the CLI.

Exit codes: 0 the chain (or database, or coalition) is sound, 1 faults were found, 2 bad
usage or the audit could not start (missing file, unreachable node, unreadable key).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from coalition.audit.chain_audit import AuditReport, audit_chain
from coalition.audit.cross_chain import CoalitionReport, audit_coalition
from coalition.audit.db_check import check_database
from coalition.audit.evidence import (
    EvidenceReport,
    RawEvidence,
    check_evidence,
    evidence_heights,
)
from coalition.audit.sources import (
    ChainSource,
    DatabaseSource,
    EvidenceSource,
    GrpcSource,
    RawEntry,
    RawHeader,
)
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

    coalition = subparsers.add_parser(
        "audit-coalition",
        help="audit every partner's chain, reconcile conversions and holds across them, "
        "and verify the equivocation evidence the nodes hold",
        description="Audit each partner of the manifest (from its database or its live node), "
        "then check that every conversion left one chain and arrived in the other exactly "
        "once at the signed rate, or was refunded on a signed rejection; and verify the "
        "equivocation and fork evidence each node holds (a proven piece is a fault of the "
        "accused program, one that does not verify a fault of its holder). Exit 0 when "
        "sound, 1 on any fault, 2 on bad usage.",
    )
    coalition.add_argument("--manifest", type=Path, required=True, help="nodes/coalition.toml")
    coalition.add_argument(
        "--from",
        dest="read_from",
        choices=("database", "grpc"),
        default="database",
        help="read each chain from the node's database (its config in the manifest) or "
        "from its live node's gRPC address (default: database)",
    )
    coalition.add_argument(
        "--database",
        action="append",
        default=[],
        metavar="PROGRAM=URL",
        help="read PROGRAM's chain from this database URL instead",
    )
    coalition.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="PROGRAM=KEY",
        help="auditor API key for PROGRAM's node with --from grpc (default: $COALITION_API_KEY)",
    )
    coalition.add_argument(
        "--pending-grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="a conversion or hold still open after this long is a fault (default 600)",
    )
    coalition.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON report")
    coalition.set_defaults(func=run_audit_coalition)

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


# --- the coalition ---------------------------------------------------------------------

_COALITION_KINDS = (
    b'"kind":"convert-',
    b'"kind":"hold',
    b'"kind":"agreement"',
    b'"kind":"redemption-receipt"',
)
_OTHER: JsonObject = {}
"""Stands in for an entry the cross-chain audit does not read (keeps log positions)."""


class RecordingSource:
    """A ChainSource that keeps, as the audit reads them, the entries the cross-chain
    audit needs, at their log positions (other entries become an empty placeholder), and
    the signed headers at the ``heights`` evidence is about (parsed, not yet verified)."""

    def __init__(self, source: ChainSource, heights: frozenset[int] = frozenset()) -> None:
        self.source = source
        self.entries: list[JsonObject] = []
        self.heights = heights
        self.headers_at: dict[int, SignedHeader] = {}

    def public_key(self) -> VerifyKey | None:
        return self.source.public_key()

    def latest_header(self) -> RawHeader | None:
        return self.source.latest_header()

    def headers(self, start: int, limit: int) -> list[RawHeader]:
        raws = self.source.headers(start, limit)
        for raw in raws:
            if raw.height in self.heights:
                try:
                    signed = SignedHeader(
                        BlockHeader.from_json(parse_json(raw.header)), raw.signature
                    )
                except CoalitionError:
                    continue  # chain_audit reports it
                self.headers_at.setdefault(signed.header.height, signed)
        return raws

    def block_entries(self, height: int, first_index: int, count: int) -> list[RawEntry]:
        raws = self.source.block_entries(height, first_index, count)
        positional = len(raws) == count
        for n, raw in enumerate(raws):
            index = raw.log_index
            if index is None:
                index = first_index + n if positional else len(self.entries)
            if index >= len(self.entries):
                self.entries.extend([_OTHER] * (index + 1 - len(self.entries)))
            body: JsonObject = _OTHER
            if any(marker in raw.body for marker in _COALITION_KINDS):
                try:
                    parsed = parse_json(raw.body)
                except CoalitionError:
                    parsed = None  # chain_audit reports it
                if isinstance(parsed, dict):
                    body = parsed
            self.entries[index] = body
        return raws

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject | None:
        return self.source.consistency_proof(first_height, second_height)

    def close(self) -> None:
        self.source.close()


@dataclass(slots=True)
class PartnersAudit:
    """``audit_all``'s result: each chain's audit, the cross-chain reconciliation and the
    equivocation and fork evidence the nodes hold. Sound only if ``ok``."""

    chains: dict[str, AuditReport]
    cross_chain: CoalitionReport
    evidence: EvidenceReport

    @property
    def ok(self) -> bool:
        chains_ok = all(report.ok for report in self.chains.values())
        return chains_ok and self.cross_chain.ok and self.evidence.ok

    def render(self) -> str:
        parts = [report.render() for report in self.chains.values()]
        return "\n".join([*parts, self.cross_chain.render(), self.evidence.render()])

    def to_json(self) -> JsonObject:
        return {
            "type": "coalition/coalition-audit/v1",
            "ok": self.ok,
            "chains": {program: report.to_json() for program, report in self.chains.items()},
            "cross_chain": self.cross_chain.to_json(),
            "evidence": self.evidence.to_json(),
        }


def _held_evidence(sources: Mapping[str, ChainSource]) -> dict[str, list[RawEvidence] | None]:
    """The evidence each node holds, from the sources that offer it (None: no offer)."""
    return {
        holder: source.evidence() if isinstance(source, EvidenceSource) else None
        for holder, source in sources.items()
    }


def audit_all(
    sources: Mapping[str, ChainSource],
    key_of: Callable[[str], VerifyKey],
    *,
    pending_before: datetime | None = None,
) -> PartnersAudit:
    """Audit each program's chain from its source, reconcile them all, and verify the
    equivocation and fork evidence every node holds.

    The sources are read once (the chain audit and the reconciliation share the read);
    the caller closes them.
    """
    held = _held_evidence(sources)
    heights: dict[str, set[int]] = {}
    for pieces in held.values():
        for piece in pieces or ():
            heights.setdefault(piece.program, set()).update(evidence_heights(piece))
    reports: dict[str, AuditReport] = {}
    chains: dict[str, list[JsonObject]] = {}
    own_headers: dict[str, dict[int, SignedHeader]] = {}
    for program, source in sources.items():
        recorder = RecordingSource(source, frozenset(heights.get(program, ())))
        with Progress(f"audit {program}", _total(source)) as bar:
            reports[program] = audit_chain(
                recorder, key_of(program), program=program, progress=bar.advance
            )
        chains[program] = recorder.entries
        own_headers[program] = recorder.headers_at
    cross = audit_coalition(chains, key_of, pending_before=pending_before)
    return PartnersAudit(reports, cross, check_evidence(held, key_of, own_headers))


def audit_partners(
    sources: Mapping[str, ChainSource],
    key_of: Callable[[str], VerifyKey],
    *,
    pending_before: datetime | None = None,
) -> tuple[dict[str, AuditReport], CoalitionReport]:
    """``audit_all`` as (chain reports, cross-chain report), the evidence faults appended
    to the cross-chain report's faults (so it is not ok while any evidence stands)."""
    found = audit_all(sources, key_of, pending_before=pending_before)
    cross = found.cross_chain
    return found.chains, replace(cross, faults=[*cross.faults, *found.evidence.faults])


def _pairs(items: list[str], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items:
        program, sep, value = item.partition("=")
        if not sep or not program or not value:
            raise InvalidArgument(f"{what} must be PROGRAM=VALUE, not {item!r}")
        found[program] = value
    return found


def _coalition_sources(args: argparse.Namespace, manifest: Any) -> dict[str, ChainSource]:
    from coalition.node.config import load_config

    databases = _pairs(args.database, "--database")
    api_keys = _pairs(args.api_key, "--api-key")
    for program in (*databases, *api_keys):
        manifest.partner(program)  # NotFound for a program the manifest does not list
    sources: dict[str, ChainSource] = {}
    try:
        for partner in manifest.partners:
            program = partner.program
            if program in databases:
                sources[program] = DatabaseSource(databases[program])
            elif args.read_from == "grpc":
                key = api_keys.get(program) or os.environ.get("COALITION_API_KEY")
                sources[program] = GrpcSource(partner.grpc, key)
            elif partner.config is not None:
                sources[program] = DatabaseSource(load_config(partner.config).database_url)
            else:
                raise InvalidArgument(
                    f"the manifest names no config for {program}: pass --database "
                    f"{program}=URL or --from grpc"
                )
    except CoalitionError:
        for source in sources.values():
            source.close()
        raise
    return sources


def run_audit_coalition(args: argparse.Namespace) -> int:
    """Run ``coalition audit-coalition``; prints the reports, returns the exit code."""
    from coalition.node.manifest import Manifest

    try:
        manifest = Manifest.load(args.manifest)
        for program in manifest.programs:
            manifest.public_key(program)  # fail now, naming the missing key file
        if args.pending_grace < 0:
            raise InvalidArgument("--pending-grace must not be negative")
        sources = _coalition_sources(args, manifest)
    except CoalitionError as exc:
        print(f"coalition audit-coalition: {exc}", file=sys.stderr)
        return USAGE
    pending_before = datetime.now(UTC) - timedelta(seconds=args.pending_grace)
    try:
        found = audit_all(sources, manifest.public_key, pending_before=pending_before)
    except CoalitionError as exc:
        print(f"coalition audit-coalition: cannot read a chain: {exc}", file=sys.stderr)
        return USAGE
    finally:
        for source in sources.values():
            source.close()
    print(found.render())
    if args.json is not None:
        _write_json(args.json, found.to_json())
    return OK if found.ok else FAULTS
