"""``coalition``: the one command line of the project (run a node, operate it, verify proofs).

Operations talk to a running node over gRPC, authenticated either with ``--grpc`` and
``--api-key`` (or ``COALITION_API_KEY``), or with ``--config`` and ``--role``, which read
the address from the brand's configuration and the key from its local secret file.
Writes print the entry as JSON; every write takes ``--idempotency-key`` (a fresh one is
made and printed when omitted, so a retry with it cannot apply twice).

Exit status: 0 success, 1 refused or failed (``error: ...`` on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coalition.errors import CoalitionError, InvalidArgument

if TYPE_CHECKING:
    from coalition.api.grpc.client import NodeClient
    from coalition.node.views import PurchaseRow, RowError

CSV_COLUMNS = ("member_id", "reference", "spend_minor", "category", "idempotency_key")
IMPORT_CHUNK_ROWS = 50_000
"""Rows per EarnBulk stream: a failed call loses at most one chunk's summary, and a rerun
replays what was committed (every row carries its idempotency key)."""
SHOWN_REJECTIONS = 10


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot print a {type(value).__name__} as JSON")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_plain))


# --- connecting -----------------------------------------------------------------------


def _client(args: argparse.Namespace) -> NodeClient:
    from coalition.api.grpc.client import NodeClient
    from coalition.node.auth import Role
    from coalition.node.config import load_config
    from coalition.ops.keygen import find_secret

    target, key = args.grpc, args.api_key or os.environ.get("COALITION_API_KEY")
    if args.config:
        config = load_config(args.config)
        target = target or config.grpc_address
        if not key:
            if args.role == "member" and not args.as_member:
                raise InvalidArgument("--role member needs --as-member ID")
            key = find_secret(config, Role(args.role), args.as_member)
    if not target or not key:
        raise InvalidArgument("give --grpc HOST:PORT and --api-key KEY, or --config FILE")
    return NodeClient(target, key, timeout=args.timeout)


def _with_client(run: Callable[[NodeClient, argparse.Namespace], int]) -> Callable[..., int]:
    def func(args: argparse.Namespace) -> int:
        with _client(args) as client:
            return run(client, args)

    return func


def _idem(args: argparse.Namespace) -> str:
    if args.idempotency_key:
        return str(args.idempotency_key)
    key = f"cli-{uuid.uuid4().hex}"
    print(f"idempotency key: {key}", file=sys.stderr)
    return key


def _written(run: Callable[[NodeClient, argparse.Namespace, str], Any]) -> Callable[..., int]:
    def func(client: NodeClient, args: argparse.Namespace) -> int:
        result = run(client, args, _idem(args))
        _print_json({"replayed": result.replayed, "entry": result.entry})
        return 0

    return _with_client(func)


# --- offline verification -------------------------------------------------------------


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


# --- CSV import -----------------------------------------------------------------------


def count_data_lines(path: Path) -> int:
    """Lines after the header, counted in 1 MiB blocks (for the progress total)."""
    lines, last = 0, b"\n"
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines + (last != b"\n") - 1, 0)


@dataclasses.dataclass
class _CsvRows:
    """Purchase rows read lazily from an open CSV reader; unparsable lines are kept aside
    with their line number and never sent. ``line_of_row`` maps the rows sent since the
    last ``clear`` to their line numbers."""

    reader: csv.DictReader[str]
    bad: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    line_of_row: list[int] = dataclasses.field(default_factory=list)

    def __iter__(self) -> Iterator[PurchaseRow]:
        from coalition.node.views import PurchaseRow

        for record in self.reader:
            line = self.reader.line_num
            key = (record.get("idempotency_key") or "").strip()
            if None in record or None in record.values():
                self.bad.append((line, key, f"expected the {len(CSV_COLUMNS)} columns"))
                continue
            try:
                spend = int(record["spend_minor"].strip())
            except ValueError:
                message = f"spend_minor {record['spend_minor']!r} is not an integer"
                self.bad.append((line, key, message))
                continue
            self.line_of_row.append(line)
            yield PurchaseRow(
                record["member_id"].strip(),
                record["reference"].strip(),
                spend,
                record["category"].strip(),
                key,
            )


def import_csv(
    client: NodeClient,
    path: Path,
    chunk_rows: int = IMPORT_CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int, list[tuple[int, str, str]]]:
    """Stream ``path`` through EarnBulk, one call per ``chunk_rows`` rows.

    Returns (accepted, replayed, rejected rows as (line, idempotency key, message) in line
    order). Memory is bounded by one chunk's line numbers plus the rejected rows, whatever
    the file size.
    """
    if chunk_rows < 1:
        raise InvalidArgument("chunk rows must be positive")
    accepted = replayed = 0
    rejected: list[tuple[int, str, str]] = []
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        _check_columns(path, reader)
        source = _CsvRows(reader)
        rows = iter(source)
        while True:
            source.line_of_row.clear()
            bad_before = len(source.bad)
            result = client.earn_bulk(_counted(islice(rows, chunk_rows), progress))
            if progress is not None:
                progress(len(source.bad) - bad_before)
            accepted += result.accepted
            replayed += result.replayed
            rejected.extend(_located(result.rejected, source.line_of_row))
            if len(source.line_of_row) < chunk_rows:
                break
    rejected.extend(source.bad)
    rejected.sort()
    return accepted, replayed, rejected


def _check_columns(path: Path, reader: csv.DictReader[str]) -> None:
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InvalidArgument(f"{path}: missing CSV columns: {', '.join(missing)}")


def _counted(
    rows: Iterator[PurchaseRow], progress: Callable[[int], None] | None
) -> Iterator[PurchaseRow]:
    n = 0
    for n, row in enumerate(rows, start=1):
        if progress is not None and n % 1000 == 0:
            progress(1000)
        yield row
    if progress is not None:
        progress(n % 1000)


def _located(errors: Sequence[RowError], lines: Sequence[int]) -> Iterator[tuple[int, str, str]]:
    for error in errors:
        yield lines[error.row - 1], error.idempotency_key, error.message


def _cmd_import_csv(client: NodeClient, args: argparse.Namespace) -> int:
    from coalition.progress import Progress

    path = Path(args.file)
    if not path.is_file():
        raise InvalidArgument(f"no CSV file at {path}")
    with path.open(newline="", encoding="utf-8") as file:
        _check_columns(path, csv.DictReader(file))  # before drawing a progress bar
    with Progress("import " + path.name, count_data_lines(path)) as bar:
        accepted, replayed, rejected = import_csv(client, path, args.chunk_rows, bar.advance)
    print(f"accepted {accepted}, replayed {replayed}, rejected {len(rejected)}")
    for line, key, message in rejected[:SHOWN_REJECTIONS]:
        print(f"  line {line} (key {key or '-'}): {message}")
    if len(rejected) > SHOWN_REJECTIONS:
        print(f"  ... and {len(rejected) - SHOWN_REJECTIONS} more")
    return 1 if rejected else 0


# --- commands ---------------------------------------------------------------------------


def _cmd_keygen(args: argparse.Namespace) -> int:
    from coalition.node.config import load_config
    from coalition.ops.keygen import generate_coalition_keys, generate_keys

    password = None
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            raise InvalidArgument(f"environment variable {args.password_env} is not set")
        password = value.encode()
    if args.manifest:
        brands = generate_coalition_keys(
            Path(args.manifest), password=password, members=args.member, force=args.force
        )
    else:
        files = generate_keys(
            load_config(args.config), password=password, members=args.member, force=args.force
        )
        brands = {"": files}
    for program, files in brands.items():
        if program:
            print(f"== {program}")
        print(f"signing key     {files.signing_key}" + (" (encrypted)" if password else ""))
        print(f"public key      {files.public_key}")
        print(f"account secret  {files.account_secret}")
        print(f"API key digests {files.api_keys}")
        print(f"API key secrets {files.api_secrets} (keep private)")
    return 0


def _cmd_tls_init(args: argparse.Namespace) -> int:
    from coalition.node.manifest import Manifest
    from coalition.ops.tls import generate_tls

    manifest = Manifest.load(args.manifest)
    for path in generate_tls(manifest, force=args.force):
        print(f"wrote {path}")
    return 0


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


def _cmd_demo(args: argparse.Namespace) -> int:
    from coalition.demo.scenario import DemoOptions, run_demo

    options = DemoOptions(
        members=args.members,
        purchases=args.purchases,
        conversions=args.conversions,
        serve=args.serve,
    )
    return run_demo(Path(args.out), options)


def _cmd_scenario(args: argparse.Namespace) -> int:
    from coalition.demo.scenario import DemoOptions, run_scenario

    options = DemoOptions(
        members=args.members, purchases=args.purchases, conversions=args.conversions
    )
    return run_scenario(Path(args.manifest), Path(args.out), options)


def _save(doc: Any, out: str) -> int:
    Path(out).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0


def _reads(run: Callable[[NodeClient, argparse.Namespace], Any]) -> Callable[..., int]:
    def func(client: NodeClient, args: argparse.Namespace) -> int:
        _print_json(run(client, args))
        return 0

    return _with_client(func)


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--grpc", metavar="HOST:PORT", help="the node's gRPC address")
    group.add_argument("--api-key", help="API key (default: $COALITION_API_KEY)")
    group.add_argument("--config", help="the brand's node.toml: address and local keys")
    group.add_argument(
        "--role",
        choices=("operator", "auditor", "member"),
        default="operator",
        help="with --config: whose key to use (default operator)",
    )
    group.add_argument("--as-member", metavar="ID", help="with --role member: which member")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    return parent


def _add_client_commands(sub: Any, conn: argparse.ArgumentParser) -> None:
    write = argparse.ArgumentParser(add_help=False, parents=[conn])
    write.add_argument("--idempotency-key", help="retry-safe key (default: a fresh one)")

    def cmd(name: str, helptext: str, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, parents=[parent])  # type: ignore[no-any-return]

    p = cmd("enroll", "enroll a member", write)
    p.add_argument("member")
    p.set_defaults(func=_written(lambda c, a, k: c.enroll(a.member, idempotency_key=k)))

    p = cmd("earn", "earn points for a purchase", write)
    p.add_argument("member")
    p.add_argument("--reference", required=True)
    p.add_argument("--spend-minor", type=int, required=True, help="e.g. 12999 = 129.99 EUR")
    p.add_argument("--category", default="")
    p.set_defaults(
        func=_written(
            lambda c, a, k: c.earn_purchase(
                a.member, a.reference, a.spend_minor, a.category, idempotency_key=k
            )
        )
    )

    p = cmd("reward", "give a behaviour reward (signup, review, ...)", write)
    p.add_argument("member")
    p.add_argument("--event", required=True)
    p.add_argument("--reference", required=True)
    p.set_defaults(
        func=_written(
            lambda c, a, k: c.earn_reward(a.member, a.event, a.reference, idempotency_key=k)
        )
    )

    p = cmd("reverse", "claw back a refunded purchase's points", write)
    p.add_argument("member")
    p.add_argument("--reference", required=True)
    p.set_defaults(
        func=_written(lambda c, a, k: c.reverse_purchase(a.member, a.reference, idempotency_key=k))
    )

    p = cmd("redeem", "spend a member's points", write)
    p.add_argument("member")
    p.add_argument("--amount", type=int, required=True)
    p.add_argument("--reference", required=True)
    p.set_defaults(
        func=_written(lambda c, a, k: c.redeem(a.member, a.amount, a.reference, idempotency_key=k))
    )

    p = cmd("transfer", "move points to another member", write)
    p.add_argument("member")
    p.add_argument("--to", required=True)
    p.add_argument("--amount", type=int, required=True)
    p.add_argument("--note", required=True)
    p.set_defaults(
        func=_written(
            lambda c, a, k: c.transfer(a.member, a.to, a.amount, a.note, idempotency_key=k)
        )
    )

    p = cmd("adjust", "operator correction (negative amount debits)", write)
    p.add_argument("member")
    p.add_argument("--amount", type=int, required=True)
    p.add_argument("--operator", required=True)
    p.add_argument("--note", required=True)
    p.set_defaults(
        func=_written(
            lambda c, a, k: c.adjust(a.member, a.amount, a.operator, a.note, idempotency_key=k)
        )
    )

    p = cmd("revoke", "revoke one earn entry's points", write)
    p.add_argument("member")
    p.add_argument("--entry", required=True, help="the earn entry id")
    p.add_argument("--operator", required=True)
    p.add_argument("--note", required=True)
    p.set_defaults(
        func=_written(
            lambda c, a, k: c.revoke(a.member, a.entry, a.operator, a.note, idempotency_key=k)
        )
    )

    p = cmd("expire", "expire every due lot now", conn)
    p.set_defaults(func=_reads(lambda c, a: c.run_expiry()))

    p = cmd("balance", "a member's balance and tier", conn)
    p.add_argument("member")
    p.set_defaults(func=_reads(lambda c, a: c.balance(a.member)))

    p = cmd("lots", "a member's lots", conn)
    p.add_argument("member")
    p.set_defaults(func=_reads(lambda c, a: c.lots(a.member)))

    p = cmd("history", "a member's ledger entries", conn)
    p.add_argument("member")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=_reads(lambda c, a: c.history(a.member, a.limit)))

    p = cmd("proof", "fetch an entry's inclusion proof document", conn)
    p.add_argument("--entry", required=True)
    p.add_argument("--tree-size", type=int)
    p.add_argument("--out", required=True)
    p.set_defaults(
        func=_with_client(lambda c, a: _save(c.inclusion_proof(a.entry, a.tree_size), a.out))
    )

    p = cmd("consistency", "fetch a consistency proof between two heights", conn)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--second", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(
        func=_with_client(lambda c, a: _save(c.consistency_proof(a.first, a.second), a.out))
    )

    p = cmd("import-csv", "earn for every purchase of a CSV file (EarnBulk stream)", conn)
    p.add_argument("file", help="columns: " + ",".join(CSV_COLUMNS))
    p.add_argument("--chunk-rows", type=int, default=IMPORT_CHUNK_ROWS)
    p.set_defaults(func=_with_client(_cmd_import_csv))


def _add_audit_commands(sub: Any) -> None:
    try:
        from coalition.audit.command import add_audit_parser
    except ModuleNotFoundError as exc:
        if exc.name not in ("coalition.audit", "coalition.audit.command"):
            raise
        return  # the auditor's commands are not installed in this build
    add_audit_parser(sub)
    from coalition.audit.bundle_command import add_bundle_parser

    add_bundle_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coalition", description="Coalition loyalty ledger: nodes, operations, proofs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="generate a brand's (or every partner's) keys")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="one brand's node.toml")
    which.add_argument("--manifest", help="the coalition manifest: every partner's keys")
    p.add_argument("--password-env", metavar="VAR", help="encrypt the signing key with $VAR")
    p.add_argument("--member", action="append", default=[], help="also make a member key")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("tls-init", help="make the coalition CA and each partner's certificate")
    p.add_argument("--manifest", required=True, help="the coalition manifest (coalition.toml)")
    p.add_argument("--force", action="store_true", help="replace existing TLS material")
    p.set_defaults(func=_cmd_tls_init)

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

    _add_client_commands(sub, _connection_options())

    p = sub.add_parser("verify", help="verify a proof document offline")
    p.add_argument("file")
    p.add_argument("--public-key", required=True, help="the program's public_key.pem")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("demo", help="run the three-brand coalition demo, write the evidence")
    p.add_argument("--out", default="demo-out", help="work folder and evidence (wiped)")
    p.add_argument("--members", type=int, default=30, help="members in every program")
    p.add_argument("--purchases", type=int, default=600, help="purchases per program")
    p.add_argument("--conversions", type=int, default=300, help="conversions in all")
    p.add_argument(
        "--serve",
        action="store_true",
        help="afterwards, run the nodes again (explorer at /explorer/) until Ctrl-C",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "scenario", help="run the demo's scenario against a running coalition (docker compose)"
    )
    p.add_argument("--manifest", required=True, help="the coalition manifest")
    p.add_argument("--out", default="demo-out", help="evidence folder (wiped)")
    p.add_argument("--members", type=int, default=30, help="members in every program")
    p.add_argument("--purchases", type=int, default=600, help="purchases per program")
    p.add_argument("--conversions", type=int, default=300, help="conversions in all")
    p.set_defaults(func=_cmd_scenario)

    _add_audit_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coalition`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CoalitionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
