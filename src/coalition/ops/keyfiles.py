"""Read a node's secret key files (written by ``coalition keygen``), with errors that say
which file is missing or malformed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from coalition.errors import InvalidArgument
from coalition.ledger.keys import SigningKey
from coalition.node.config import NodeConfig
from coalition.ops.keygen import write_key_file


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


ROTATED_FOLDER = "rotated"
"""Where rotated ledger keys live, beside the first key: ``keys/rotated/<key_id>.pem``."""


def rotated_key_path(config: NodeConfig, key_id: str) -> Path:
    return config.signing_key_path.parent / ROTATED_FOLDER / f"{key_id}.pem"


def rotated_key_loader(config: NodeConfig) -> Callable[[str], SigningKey | None]:
    """Loads a rotated ledger key by key id (None: no file), with the signing key's
    password: what every process of the node reads the key in force with."""

    def load(key_id: str) -> SigningKey | None:
        try:
            data = rotated_key_path(config, key_id).read_bytes()
        except FileNotFoundError:
            return None
        return SigningKey.from_pem(data, config.signing_key_password)

    return load


def new_rotated_key(config: NodeConfig) -> tuple[SigningKey, Path]:
    """A fresh ledger key written (0600, with the signing key's password) where every
    process of the node loads it from (``rotated_key_path``), before any rotation names it."""
    key = SigningKey.generate()
    path = rotated_key_path(config, key.public_key.key_id)
    write_key_file(path, key.to_pem(config.signing_key_password), private=True)
    write_key_file(path.with_suffix(".pub.pem"), key.public_key.to_pem(), private=False)
    return key, path
