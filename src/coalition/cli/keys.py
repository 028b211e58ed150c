"""``coalition keygen`` and ``coalition tls-init``: a brand's (or every partner's) key
material and the coalition's TLS certificates, written as files (see ``coalition.ops``);
``coalition keys issue|list|revoke``: API keys issued at run time, in the node's database
(``node.api_keys``), which every running process of the node picks up by itself within
``node.auth.POLL_INTERVAL_S``; ``coalition tls-renew`` and ``tls-revoke``: one partner's
certificate renewed or revoked while the coalition runs (``ops.tls``); ``coalition ledger
rotate-key``: the rotation of a brand's ledger signing key (``runtime.key_rotation``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.node.auth import ApiKey, Role

if TYPE_CHECKING:
    from coalition.node.api_keys import ApiKeyStore


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


def _cmd_tls_renew(args: argparse.Namespace) -> int:
    from coalition.node.manifest import Manifest
    from coalition.ops.tls import CHECK_EVERY_S, renew_certificate

    for path in renew_certificate(
        Manifest.load(args.manifest), args.program, revoke_old=args.revoke_old
    ):
        print(f"wrote {path}")
    print(f"(a running node takes its renewed files within {CHECK_EVERY_S:g} s)")
    return 0


def _cmd_tls_revoke(args: argparse.Namespace) -> int:
    from coalition.node.manifest import Manifest
    from coalition.ops.tls import CHECK_EVERY_S, revoke_certificate

    path, serial = revoke_certificate(Manifest.load(args.manifest), args.program)
    print(f"revoked the certificate of {args.program} (serial {serial:x}) in {path}")
    print(f"(every node that reads {path.name} refuses it within {CHECK_EVERY_S:g} s)")
    return 0


def _cmd_tls_init(args: argparse.Namespace) -> int:
    from coalition.node.manifest import Manifest
    from coalition.ops.tls import generate_tls

    manifest = Manifest.load(args.manifest)
    for path in generate_tls(manifest, force=args.force):
        print(f"wrote {path}")
    return 0


@contextmanager
def _key_store(config_path: str) -> Iterator[tuple[ApiKeyStore, list[ApiKey]]]:
    """The node's issued keys (its database, at this code's schema) and its file keys."""
    from coalition.node.api_keys import ApiKeyStore
    from coalition.node.config import load_api_keys, load_config
    from coalition.store.db import make_engine
    from coalition.store.schema import schema_state

    config = load_config(config_path)
    engine = make_engine(config.database_url)
    try:
        state = schema_state(engine)
        if not state.current:
            raise FailedPrecondition(
                f"the database of {config.program} is at schema revision {state.revision}, "
                f"not {state.head}: start the node (or run coalition migrate) first"
            )
        file_keys = load_api_keys(config.api_keys_path) if config.api_keys_path.exists() else []
        yield ApiKeyStore(engine), file_keys
    finally:
        engine.dispose()


def _key_line(key: ApiKey, now: datetime) -> str:
    state = "usable" if key.usable(now) else "revoked" if key.revoked_at else "expired"
    parts = [
        f"{key.name:<24}",
        f"{key.role.value:<9}",
        f"{key.member_id or '-':<16}",
        f"{'database' if key.issued else 'file':<9}",
        f"{state:<8}",
        f"expires {key.expires_at.isoformat() if key.expires_at else 'never'}",
    ]
    if key.revoked_at is not None:
        parts.append(f"revoked {key.revoked_at.isoformat()}")
    return " ".join(parts)


def _cmd_keys_issue(args: argparse.Namespace) -> int:
    from coalition.node.api_keys import parse_expiry
    from coalition.points.rules import parse_duration

    expires_at = None
    if args.expires_at is not None:
        expires_at = parse_expiry(args.expires_at)
    elif args.expires_in is not None:
        expires_at = datetime.now(UTC) + parse_duration(args.expires_in, "--expires-in")
    with _key_store(args.config) as (store, file_keys):
        issued = store.issue(args.name, args.role, args.member_id, expires_at, file_keys=file_keys)
    print(_key_line(issued.key, datetime.now(UTC)))
    print(f"secret {issued.secret}")
    print("(shown once: only its SHA-256 is stored; running nodes take it within a second)")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    with _key_store(args.config) as (store, file_keys):
        keys = [*file_keys, *store.issued()]
    now = datetime.now(UTC)
    for key in keys:
        print(_key_line(key, now))
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _key_store(args.config) as (store, file_keys):
        key = store.revoke(args.name, file_keys=file_keys)
    print(_key_line(key, datetime.now(UTC)))
    return 0


def _add_keys_group(sub: Any) -> None:
    p = sub.add_parser("keys", help="issue, list and revoke API keys in a node's database")
    actions = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", required=True, help="the node's node.toml")

    q = actions.add_parser("issue", parents=[config], help="issue a key; prints its secret once")
    q.add_argument("--name", required=True, help="a unique name for the key")
    q.add_argument("--role", required=True, choices=[r.value for r in Role])
    q.add_argument("--member-id", help="the member a member key acts for")
    expiry = q.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", help="RFC 3339 time, e.g. 2027-01-31T00:00:00Z")
    expiry.add_argument("--expires-in", help="a duration from now, e.g. 90d, 12h")
    q.set_defaults(func=_cmd_keys_issue)

    q = actions.add_parser("list", parents=[config], help="every key, never a secret")
    q.set_defaults(func=_cmd_keys_list)

    q = actions.add_parser("revoke", parents=[config], help="revoke an issued key now")
    q.add_argument("--name", required=True, help="the key's name")
    q.set_defaults(func=_cmd_keys_revoke)


def _cmd_rotate_key(args: argparse.Namespace) -> int:
    from coalition.node.config import load_config
    from coalition.runtime.key_rotation import rotate_ledger_key

    done = rotate_ledger_key(load_config(args.config))
    print(f"new ledger key  {done.path} (key id {done.key_id})")
    print(f"rotation entry  {done.entry_id} (epoch {done.epoch})")
    if done.sealed_height is not None:
        print(f"sealed through  height {done.sealed_height}, by the previous key")
    print("headers of the blocks after the one holding the rotation are signed by the new key;")
    print(f"copy {done.path.name} to keys/rotated/ on every host that runs this node")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``keygen``, ``keys``, ``tls-init``, ``tls-renew``, ``tls-revoke`` and ``ledger
    rotate-key``."""
    _add_keys_group(sub)
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

    p = sub.add_parser("tls-renew", help="a new certificate and key for one partner")
    p.add_argument("--manifest", required=True, help="the coalition manifest (coalition.toml)")
    p.add_argument("--program", required=True, help="the partner whose certificate to renew")
    p.add_argument("--revoke-old", action="store_true", help="also revoke the one replaced")
    p.set_defaults(func=_cmd_tls_renew)

    p = sub.add_parser("tls-revoke", help="revoke one partner's certificate (the CA's CRL)")
    p.add_argument("--manifest", required=True, help="the coalition manifest (coalition.toml)")
    p.add_argument("--program", required=True, help="the partner whose certificate to revoke")
    p.set_defaults(func=_cmd_tls_revoke)

    p = sub.add_parser("ledger", help="the brand's ledger signing key")
    ledger = p.add_subparsers(dest="ledger_command", required=True)
    p = ledger.add_parser(
        "rotate-key",
        help="rotate the ledger signing key: a new key file and a rotation entry signed by "
        "the key in force (PostgreSQL: while the node runs; SQLite: with the node stopped)",
    )
    p.add_argument("--config", required=True, help="the brand's node.toml")
    p.set_defaults(func=_cmd_rotate_key)
