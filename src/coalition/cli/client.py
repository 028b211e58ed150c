"""Connecting a command to a running node over gRPC, and how client commands print.

A client command takes the ``connection`` options of ``connection_options`` (as an
argparse parent) and wraps what it runs in ``with_client``, ``reads`` or ``written``,
which open the ``NodeClient`` and close it when the command ends. ``written`` commands
MUST also take ``--idempotency-key``: it is read here, and a fresh key is made and
printed on stderr when it is omitted, so a retry with that key cannot apply twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coalition.errors import InvalidArgument

if TYPE_CHECKING:
    from coalition.api.grpc.client import NodeClient

ClientCommand = Callable[["NodeClient", argparse.Namespace], Any]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot print a {type(value).__name__} as JSON")


def print_json(value: Any) -> None:
    """Print ``value`` (JSON values and dataclasses) as indented JSON on stdout."""
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_plain))


def connection_options() -> argparse.ArgumentParser:
    """The argparse parent of every client command: the ``connection`` option group."""
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
    group.add_argument(
        "--tls-ca", metavar="FILE", help="connect over TLS, trusting these PEM CA certificates"
    )
    return parent


def add_client_command(
    sub: Any, name: str, helptext: str, parent: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` with the options of ``parent`` (connection, write)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=helptext, parents=[parent])
    return parser


def open_client(args: argparse.Namespace) -> NodeClient:
    """The client the connection options name: ``--grpc`` and the API key, or what the
    brand's ``--config`` gives (its address, the ``--role``'s key from the local secret
    file). InvalidArgument when neither names a node and a key."""
    from coalition.api.grpc.client import NodeClient
    from coalition.node.auth import Role
    from coalition.node.config import load_config
    from coalition.ops.keygen import api_key_or_env, find_secret

    target, key = args.grpc, api_key_or_env(args.api_key)
    if args.config:
        config = load_config(args.config)
        target = target or config.grpc_address
        if not key:
            if args.role == "member" and not args.as_member:
                raise InvalidArgument("--role member needs --as-member ID")
            key = find_secret(config, Role(args.role), args.as_member)
    if not target or not key:
        raise InvalidArgument("give --grpc HOST:PORT and --api-key KEY, or --config FILE")
    roots = None
    if args.tls_ca:
        try:
            roots = Path(args.tls_ca).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read --tls-ca {args.tls_ca}: {exc.strerror}") from None
    return NodeClient(target, key, timeout=args.timeout, tls_roots=roots)


def with_client(run: Callable[[NodeClient, argparse.Namespace], int]) -> Callable[..., int]:
    """The command's ``func``: ``run`` with an open client; its result is the exit code."""

    def func(args: argparse.Namespace) -> int:
        with open_client(args) as client:
            return run(client, args)

    return func


def reads(run: ClientCommand) -> Callable[..., int]:
    """The command's ``func``: ``run`` with an open client, its result printed as JSON."""

    def func(client: NodeClient, args: argparse.Namespace) -> int:
        print_json(run(client, args))
        return 0

    return with_client(func)


def paged(items: list[Any], next_page: str | None) -> list[Any]:
    """A page for ``reads`` to print; the next page's token goes to stderr (``--page``
    TOKEN), so stdout stays the list it always was."""
    if next_page is not None:
        print(f"next page: --page {next_page}", file=sys.stderr)
    return items


def idempotency_key(args: argparse.Namespace) -> str:
    """``--idempotency-key``, or a fresh key printed on stderr (so a retry can reuse it)."""
    if args.idempotency_key:
        return str(args.idempotency_key)
    key = f"cli-{uuid.uuid4().hex}"
    print(f"idempotency key: {key}", file=sys.stderr)
    return key


def written(run: Callable[[NodeClient, argparse.Namespace, str], Any]) -> Callable[..., int]:
    """The command's ``func``: ``run`` with an open client and the idempotency key; the
    write's entry and whether it was replayed printed as JSON."""

    def func(client: NodeClient, args: argparse.Namespace) -> int:
        result = run(client, args, idempotency_key(args))
        print_json({"replayed": result.replayed, "entry": result.entry})
        return 0

    return with_client(func)
