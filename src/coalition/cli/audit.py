"""``coalition audit``, ``audit-coalition``, ``check`` and ``bundle``: the auditor's
commands. Their options are declared here; what they run lives in ``coalition.audit``
(``audit.command``: the audits and the database check; ``audit.bundle_command``: the
bundle export), which sets their exit codes: 0 sound (or written), 1 faults found (or
refused), 2 bad usage or the audit could not start.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coalition.audit.bundle_command import run_bundle
from coalition.audit.command import (
    PENDING_GRACE_S,
    WITNESS_GRACE_S,
    run_audit,
    run_audit_coalition,
    run_check,
)


def add_commands(sub: Any) -> None:
    """Add ``audit``, ``audit-coalition``, ``check`` and ``bundle``; each sets ``func``."""
    _add_audit(sub)
    _add_audit_coalition(sub)
    _add_check(sub)
    _add_bundle(sub)


def _add_audit(sub: Any) -> None:
    audit = sub.add_parser(
        "audit",
        help="verify a node's whole chain, or with --manifest the whole coalition",
        description="Audit one program's chain (from its node's database, over gRPC or "
        "from a bundle file), or with --manifest every program of the coalition and "
        "everything across them (as audit-coalition). Exit 0 when sound, 1 on any fault, "
        "2 on bad usage.",
    )
    audit.add_argument("--manifest", type=Path, help="audit the whole coalition of this manifest")
    audit.add_argument(
        "--config",
        type=Path,
        help="the node's node.toml (its database; the public_key.pem beside its signing key)",
    )
    audit.add_argument(
        "--database",
        action="append",
        default=[],
        metavar="URL",
        help="the node's database URL (with --manifest: PROGRAM=URL, repeatable)",
    )
    audit.add_argument("--grpc", metavar="HOST:PORT", help="a live node's gRPC address")
    audit.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="FILE",
        help="a chain bundle file (with --manifest: PROGRAM=FILE, repeatable)",
    )
    audit.add_argument("--public-key", type=Path, metavar="PEM", help="the program's public key")
    audit.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="API key for --grpc, auditor role (default: $COALITION_API_KEY; with "
        "--manifest: PROGRAM=KEY, repeatable)",
    )
    _add_pinning(audit)
    _add_coalition_options(audit)
    audit.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON report")
    audit.set_defaults(func=run_audit)


def _add_pinning(audit: argparse.ArgumentParser) -> None:
    """The single-chain audit's program and header pins."""
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


def _add_audit_coalition(sub: Any) -> None:
    coalition = sub.add_parser(
        "audit-coalition",
        help="audit every partner's chain and everything across them (= audit --manifest)",
        description="Audit each partner of the manifest (from its database, its live node "
        "or a bundle): every chain on its own, against the auditor's state file, the "
        "witness quorum of each header, conversions and holds across the chains at the "
        "signed rates, settlement statements against the obligations recomputed from the "
        "chains, netting, and the equivocation and fork evidence the nodes hold. Exit 0 "
        "when sound, 1 on any fault, 2 on bad usage.",
    )
    coalition.add_argument("--manifest", type=Path, required=True, help="nodes/coalition.toml")
    coalition.add_argument(
        "--database",
        action="append",
        default=[],
        metavar="PROGRAM=URL",
        help="read PROGRAM's chain from this database URL instead",
    )
    coalition.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="PROGRAM=FILE",
        help="read PROGRAM's chain from this bundle file instead",
    )
    coalition.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="PROGRAM=KEY",
        help="auditor API key for PROGRAM's node with --from grpc (default: $COALITION_API_KEY)",
    )
    _add_coalition_options(coalition)
    coalition.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON report")
    coalition.set_defaults(func=run_audit_coalition)


def _add_coalition_options(parser: argparse.ArgumentParser) -> None:
    """The options of the coalition audit (``--database``, ``--bundle`` and ``--api-key``
    are added by the caller: ``audit`` shares them with its single-chain form)."""
    parser.add_argument(
        "--from",
        dest="read_from",
        choices=("database", "grpc", "bundles"),
        default=None,
        help="read each chain from the node's database (its config in the manifest), from "
        "its live node's gRPC address, or from bundle files (default: bundles with "
        "--bundle-dir, else database)",
    )
    parser.add_argument(
        "--bundle-dir",
        type=Path,
        metavar="DIR",
        help="read DIR/<program>.bundle (or .bundle.gz) for every program of the manifest",
    )
    parser.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="the auditor's state file: each program's header at the last sound audit must "
        "still be in its chain; created when missing, advanced for programs audited sound",
    )
    parser.add_argument(
        "--witness-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"a header older than this short of the witness quorum is a fault; younger "
        f"ones are reported pending (default {WITNESS_GRACE_S:g})",
    )
    parser.add_argument(
        "--pending-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"a conversion or hold still open after this long is a fault "
        f"(default {PENDING_GRACE_S:g})",
    )


def _add_check(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="check that a node's database equals the replay of its own entries and that "
        "its stored ledger verifies",
        description="Replay the node's entries and compare with its accounts and lots; with "
        "the program's public key (--config, or --public-key) also verify every stored "
        "block as the node does at start and in its scrub (headers, entries, tree nodes); "
        "--audit runs 'coalition audit' on the same database too, with the same fault "
        "wording. Exit 0 when all is sound, 1 on any difference or fault, 2 on bad usage.",
    )
    db = check.add_mutually_exclusive_group(required=True)
    db.add_argument("--config", type=Path, help="the node's node.toml")
    db.add_argument("--database", metavar="URL", help="the node's database URL")
    check.add_argument(
        "--public-key",
        type=Path,
        metavar="PEM",
        help="the program's public key (default with --config: the node's own)",
    )
    check.add_argument("--program", help="pin the program id (default: the chain's own)")
    check.add_argument(
        "--audit", action="store_true", help="also audit the chain (as 'coalition audit')"
    )
    check.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON report")
    check.set_defaults(func=run_check)


def _add_bundle(sub: Any) -> None:
    p = sub.add_parser(
        "bundle",
        help="export a program's chain (headers, entries, cosignatures, evidence) as a "
        "bundle file an auditor verifies offline",
        description="Write the coalition/bundle/v1 file of one program's chain, from its "
        "node's database or downloaded from its live node. Exit 0 when written, 1 when the "
        "node refuses the key or the request or the download fails its framing check, 2 on "
        "bad usage or an unreachable node.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--config", type=Path, help="the node's node.toml (database, public_key.pem)"
    )
    where.add_argument("--database", metavar="URL", help="the node's database URL")
    where.add_argument("--url", metavar="http://HOST:PORT", help="a live node's REST address")
    p.add_argument(
        "--public-key",
        type=Path,
        metavar="PEM",
        help="the program's public key (--database; with --config default: the "
        "public_key.pem beside its signing key)",
    )
    p.add_argument("--program", help="the program id (--database)")
    p.add_argument("--api-key", help="operator or auditor key for --url ($COALITION_API_KEY)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per read for --url")
    p.add_argument("--out", type=Path, required=True, help="the bundle file (.gz: gzip)")
    p.set_defaults(func=run_bundle)
