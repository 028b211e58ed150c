"""Build a node's application service from its configuration files."""

from __future__ import annotations

from pathlib import Path

from coalition.errors import InvalidArgument
from coalition.ledger.keys import SigningKey
from coalition.node.config import NodeConfig
from coalition.node.service import NodeService
from coalition.store.db import create_schema, make_engine


def read_account_secret(path: Path) -> bytes:
    """The program's HMAC secret for account ids (hex in a file written by keygen)."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError as exc:
        raise InvalidArgument(f"no account secret at {path}: run 'coalition keygen'") from exc
    except ValueError as exc:
        raise InvalidArgument(f"{path}: the account secret must be hex") from exc


def read_signing_key(config: NodeConfig) -> SigningKey:
    try:
        data = config.signing_key_path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidArgument(
            f"no signing key at {config.signing_key_path}: run 'coalition keygen'"
        ) from exc
    return SigningKey.from_pem(data, config.signing_key_password)


def _ensure_sqlite_folder(url: str) -> None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        Path(url[len(prefix) :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)


def open_node(config: NodeConfig) -> NodeService:
    """A ready service (SQLite folder and schema created if missing); call ``start()`` to
    begin sealing."""
    _ensure_sqlite_folder(config.database_url)
    engine = make_engine(config.database_url, sqlite_synchronous=config.sqlite_synchronous)
    create_schema(engine)
    return NodeService(
        engine,
        config.program,
        read_signing_key(config),
        read_account_secret(config.account_secret_path),
        config.rules,
        config.sealer,
    )
