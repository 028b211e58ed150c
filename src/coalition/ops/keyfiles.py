"""Read a node's secret key files (written by ``coalition keygen``), with errors that say
which file is missing or malformed."""

from __future__ import annotations

from pathlib import Path

from coalition.errors import InvalidArgument
from coalition.ledger.keys import SigningKey
from coalition.node.config import NodeConfig


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
