"""Where the auditor's public keys come from: a public key file, never a private key.

A program's key is the manifest's (``Manifest.public_key``), a PEM file the auditor
names (``--public-key``), or, for a node's own configuration, the ``public_key.pem``
that ``coalition keygen`` writes beside the signing key. The signing key itself is never
opened: an auditor holds no secret and needs none.
"""

from __future__ import annotations

from pathlib import Path

from coalition.errors import InvalidArgument
from coalition.ledger.keys import VerifyKey
from coalition.node.config import NodeConfig
from coalition.ops.keygen import KeyFiles


def read_public_key(path: Path) -> VerifyKey:
    """A program's Ed25519 public key from its PEM file; InvalidArgument naming the file."""
    try:
        return VerifyKey.from_pem(path.read_bytes())
    except OSError as exc:
        raise InvalidArgument(f"cannot read the public key {path}: {exc}") from None


def config_public_key(config: NodeConfig) -> VerifyKey:
    """The node's public key from the ``public_key.pem`` beside its signing key;
    InvalidArgument saying what to do when the file is missing."""
    path = KeyFiles.for_config(config).public_key
    if not path.is_file():
        raise InvalidArgument(
            f"no public key file at {path} (coalition keygen writes it beside the signing "
            "key): restore it or pass --public-key"
        )
    return read_public_key(path)
