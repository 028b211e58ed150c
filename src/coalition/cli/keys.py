"""``coalition keygen``, ``coalition tls-init`` and ``coalition ledger rotate-key``: a
brand's (or every partner's) key material and the coalition's TLS certificates, written
as files (see ``coalition.ops``), and the rotation of a brand's ledger signing key."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from coalition.errors import InvalidArgument


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
    """Add ``keygen``, ``tls-init`` and ``ledger rotate-key``."""
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

    p = sub.add_parser("ledger", help="the brand's ledger signing key")
    ledger = p.add_subparsers(dest="ledger_command", required=True)
    p = ledger.add_parser(
        "rotate-key",
        help="rotate the ledger signing key: a new key file and a rotation entry signed by "
        "the key in force (PostgreSQL: while the node runs; SQLite: with the node stopped)",
    )
    p.add_argument("--config", required=True, help="the brand's node.toml")
    p.set_defaults(func=_cmd_rotate_key)
