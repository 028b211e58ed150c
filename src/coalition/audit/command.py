"""What ``coalition audit``, ``coalition audit-coalition`` and ``coalition check`` run
(their options are declared in ``coalition.cli.audit``).

``coalition audit`` audits one chain (``--config``, ``--database URL``, ``--grpc`` or
``--bundle FILE``) or, with ``--manifest``, the whole coalition (``audit-coalition`` is
the same command). Exit codes: 0 the chain (or database, or coalition) is sound, 1
faults were found, 2 bad usage or the audit could not start (missing file, unreachable
node, unreadable key).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from coalition.audit.db_check import check_database
from coalition.audit.public_keys import config_public_key, read_public_key
from coalition.audit.sources import DatabaseSource, GrpcSource
from coalition.audit.state import load_state, save_state
from coalition.audit.workers import ProcessWorkers
from coalition.errors import CoalitionError, InvalidArgument
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.ledger.envelope import MAX_CLOCK_SKEW
from coalition.ledger.keys import VerifyKey
from coalition.ops.keygen import api_key_or_env
from coalition.progress import Progress, phase
from coalition.verify.chain_audit import AuditReport, audit_chain
from coalition.verify.coalition_audit import PartnersAudit, audit_all, total_entries
from coalition.verify.source import ChainSource
from coalition.verify.state import AuditorState
from coalition.verify.witness_quorum import WitnessPolicy

__all__ = ["PENDING_GRACE_S", "WITNESS_GRACE_S", "run_audit", "run_audit_coalition", "run_check"]

OK, FAULTS, USAGE = 0, 1, 2
WITNESS_GRACE_S = 60.0
PENDING_GRACE_S = 600.0


def _read_trusted(path: Path) -> SignedHeader:
    try:
        return SignedHeader.from_json(parse_json(path.read_bytes()))
    except OSError as exc:
        raise InvalidArgument(f"cannot read the trusted header {path}: {exc}") from None


def _write_json(path: Path, document: JsonObject) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _bundle_source(path: Path) -> ChainSource:
    """A ``coalition.audit.bundle.BundleSource`` on ``path`` (InvalidArgument: no file)."""
    from coalition.audit.bundle import BundleSource

    if not path.is_file():
        raise InvalidArgument(f"no bundle file at {path}")
    source: ChainSource = BundleSource(path)
    return source


def _announced_key(source: ChainSource, what: str) -> VerifyKey:
    """The key the source itself announces, with a warning to pin it."""
    try:
        announced = source.public_key()
    except CoalitionError:
        source.close()
        raise
    if announced is None:
        source.close()
        raise InvalidArgument(f"the {what} announces no public key: pass --public-key")
    print(
        f"warning: using the key the {what} announces ({announced.key_id[:16]}...); "
        "pin it with --public-key",
        file=sys.stderr,
    )
    return announced


_COALITION_ONLY = ("read_from", "bundle_dir", "state", "witness_grace", "pending_grace")


def _single_chain_usage(args: argparse.Namespace) -> None:
    """InvalidArgument unless exactly one chain is named, each option once."""
    given = [
        name
        for name, value in (
            ("--config", args.config),
            ("--database", args.database),
            ("--grpc", args.grpc),
            ("--bundle", args.bundle),
        )
        if value
    ]
    if len(given) != 1:
        raise InvalidArgument(
            "name one chain: --config, --database, --grpc or --bundle (or the whole "
            "coalition with --manifest)"
        )
    if len(args.database) > 1 or len(args.bundle) > 1:
        raise InvalidArgument("--database and --bundle name one chain without --manifest")
    extra = [name for name in _COALITION_ONLY if getattr(args, name) is not None]
    if extra:
        options = ", ".join(
            "--" + name.replace("_", "-").replace("read-from", "from") for name in extra
        )
        raise InvalidArgument(f"{options} need --manifest")


def _open_source(args: argparse.Namespace) -> tuple[ChainSource, VerifyKey]:
    _single_chain_usage(args)
    pinned = read_public_key(args.public_key) if args.public_key is not None else None
    if args.config is not None:
        from coalition.node.config import load_config

        config = load_config(args.config)
        key = pinned or config_public_key(config)
        return DatabaseSource(config.database_url), key
    if args.database:
        if pinned is None:
            raise InvalidArgument("--database needs --public-key (the program's public key)")
        return DatabaseSource(args.database[0]), pinned
    if args.bundle:
        source = _bundle_source(Path(args.bundle[0]))
        return source, pinned or _announced_key(source, "bundle")
    api_key = api_key_or_env(args.api_key[-1] if args.api_key else None)
    grpc_source = GrpcSource(args.grpc, api_key)
    return grpc_source, pinned or _announced_key(grpc_source, "node")


def _audit(
    source: ChainSource, key: VerifyKey, program: str | None, trusted: SignedHeader | None
) -> AuditReport:
    """``audit_chain`` with worker processes and a progress bar (``audit`` and ``check
    --audit``)."""
    with ProcessWorkers() as workers, Progress("audit entries", total_entries(source)) as bar:
        return audit_chain(
            source, key, program=program, trusted=trusted, progress=bar.advance, parallel=workers
        )


def run_audit(args: argparse.Namespace) -> int:
    """Run ``coalition audit``; prints the report, returns the exit code."""
    if args.manifest is not None:
        for name in ("config", "grpc", "public_key", "program", "trusted", "save_header"):
            if getattr(args, name) is not None:
                option = "--" + name.replace("_", "-")
                print(
                    f"coalition audit: {option} audits one chain, not --manifest", file=sys.stderr
                )
                return USAGE
        return run_audit_coalition(args)
    try:
        trusted = _read_trusted(args.trusted) if args.trusted is not None else None
        source, key = _open_source(args)
    except CoalitionError as exc:
        print(f"coalition audit: {exc}", file=sys.stderr)
        return USAGE
    try:
        report = _audit(source, key, args.program, trusted)
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


def _check_target(args: argparse.Namespace) -> tuple[str, VerifyKey | None, str | None]:
    """The database ``coalition check`` reads, the program's key if known, and the
    program id (``--program``, else the configuration's, else the chain's own)."""
    from coalition.node.config import load_config

    pinned = read_public_key(args.public_key) if args.public_key is not None else None
    if args.config is None:
        if args.audit and pinned is None:
            raise InvalidArgument("--audit with --database needs --public-key")
        return str(args.database), pinned, args.program
    config = load_config(args.config)
    program = args.program or config.program
    if pinned is not None:
        return config.database_url, pinned, program
    try:
        return config.database_url, config_public_key(config), program
    except InvalidArgument:
        if args.audit:
            raise
        return config.database_url, None, program  # the replay check needs no key


def run_check(args: argparse.Namespace) -> int:
    """Run ``coalition check`` (and, with ``--audit``, the audit of the same database);
    prints the reports, returns the exit code."""
    try:
        url, key, program = _check_target(args)
        with Progress("check entries", None) as bar:
            report = check_database(url, key=key, program=program, progress=bar.advance)
    except CoalitionError as exc:
        print(f"coalition check: {exc}", file=sys.stderr)
        return USAGE
    print(report.render())
    document = report.to_json()
    sound = report.ok
    if args.audit:
        assert key is not None  # _check_target refuses --audit without a key
        try:
            with DatabaseSource(url) as source:
                audit = _audit(source, key, program, None)
        except CoalitionError as exc:
            print(f"coalition check: cannot audit the chain: {exc}", file=sys.stderr)
            return USAGE
        print(audit.render())
        document["audit"] = audit.to_json()
        sound = sound and audit.ok
    if args.json is not None:
        _write_json(args.json, document)
    return OK if sound else FAULTS


# --- the coalition ---------------------------------------------------------------------


def _pairs(items: list[str], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items:
        program, sep, value = item.partition("=")
        if not sep or not program or not value:
            raise InvalidArgument(f"{what} must be PROGRAM=VALUE, not {item!r}")
        found[program] = value
    return found


def _bundle_in(folder: Path, program: str) -> Path:
    for name in (f"{program}.bundle", f"{program}.bundle.gz"):
        if (folder / name).is_file():
            return folder / name
    raise InvalidArgument(f"no {program}.bundle or {program}.bundle.gz in {folder}")


def _coalition_source(
    args: argparse.Namespace,
    partner: Any,
    named: dict[str, dict[str, str]],
) -> ChainSource:
    from coalition.node.config import load_config

    program = partner.program
    read_from = args.read_from or ("bundles" if args.bundle_dir is not None else "database")
    if program in named["bundle"]:
        return _bundle_source(Path(named["bundle"][program]))
    if program in named["database"]:
        return DatabaseSource(named["database"][program])
    if read_from == "bundles":
        if args.bundle_dir is None:
            raise InvalidArgument(f"--from bundles needs --bundle-dir or --bundle {program}=FILE")
        return _bundle_source(_bundle_in(args.bundle_dir, program))
    if read_from == "grpc":
        key = api_key_or_env(named["api_key"].get(program))
        return GrpcSource(partner.grpc, key)
    if partner.config is not None:
        return DatabaseSource(load_config(partner.config).database_url)
    raise InvalidArgument(
        f"the manifest names no config for {program}: pass --database {program}=URL, "
        f"--bundle {program}=FILE or --from grpc"
    )


def _coalition_sources(args: argparse.Namespace, manifest: Any) -> dict[str, ChainSource]:
    named = {
        "database": _pairs(args.database, "--database"),
        "bundle": _pairs(args.bundle, "--bundle"),
        "api_key": _pairs(args.api_key, "--api-key"),
    }
    for values in named.values():
        for program in values:
            manifest.partner(program)  # NotFound for a program the manifest does not list
    sources: dict[str, ChainSource] = {}
    try:
        for partner in manifest.partners:
            sources[partner.program] = _coalition_source(args, partner, named)
    except CoalitionError:
        for source in sources.values():
            source.close()
        raise
    return sources


def _grace(value: float | None, default: float, option: str) -> timedelta:
    seconds = default if value is None else value
    if seconds < 0:
        raise InvalidArgument(f"{option} must not be negative")
    return timedelta(seconds=seconds)


def _advance_state(state: AuditorState, found: PartnersAudit, now: datetime) -> list[str]:
    """Advance ``state`` to the newest header of every program audited sound; those
    programs, in audit order."""
    advanced: list[str] = []
    for program in found.sound_programs():
        last = found.chains[program].last_header
        if last is not None:
            state.advance(program, last, now)
            advanced.append(program)
    return advanced


def run_audit_coalition(args: argparse.Namespace) -> int:
    """Run the coalition audit (``audit --manifest`` or ``audit-coalition``); prints the
    report, writes the JSON report and the state file, returns the exit code."""
    from coalition.node.manifest import Manifest

    name = "coalition audit-coalition"
    try:
        manifest = Manifest.load(args.manifest)
        for program in manifest.programs:
            manifest.public_key(program)  # fail now, naming the missing key file
        pending_grace = _grace(args.pending_grace, PENDING_GRACE_S, "--pending-grace")
        witness_grace = _grace(args.witness_grace, WITNESS_GRACE_S, "--witness-grace")
        state = load_state(args.state) if args.state is not None else None
        sources = _coalition_sources(args, manifest)
    except CoalitionError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return USAGE
    now = datetime.now(UTC)
    policy = WitnessPolicy(
        manifest.witness_quorum, manifest.programs, now - witness_grace, now + MAX_CLOCK_SKEW
    )
    try:
        with ProcessWorkers() as workers:
            found = audit_all(
                sources,
                manifest.public_key,
                pending_before=now - pending_grace,
                trusted=state.trusted() if state is not None else None,
                witnessing=policy,
                progress=phase,
                parallel=workers,
            )
    except CoalitionError as exc:
        print(f"{name}: cannot read a chain: {exc}", file=sys.stderr)
        return USAGE
    finally:
        for source in sources.values():
            source.close()
    report = found.to_json()
    advanced: list[str] = []
    if state is not None:
        advanced = _advance_state(state, found, now)
        report["state"] = {"file": str(args.state), "advanced": list(advanced)}
    print(found.render())
    if args.json is not None:
        _write_json(args.json, report)
    if state is not None:
        try:
            save_state(state, args.state)
        except OSError as exc:
            print(f"{name}: cannot write the state file {args.state}: {exc}", file=sys.stderr)
            return USAGE
        print(f"State file {args.state}: advanced {', '.join(advanced) or 'no program'}")
    return OK if found.ok else FAULTS
