"""A node's configuration: one TOML file per brand (see ``nodes/``).

Relative paths are resolved against the file's folder, so a brand folder can be moved
as a whole. ``COALITION_DATABASE_URL``, ``COALITION_GRPC_ADDRESS`` and
``COALITION_HTTP_ADDRESS`` override the file (for containers and operations).

A ``[coalition]`` table makes the node a partner of a coalition (docs/coalition.md):
the manifest's path, the partner (mutual TLS) address, overridden by
``COALITION_PARTNER_GRPC_ADDRESS``, the TLS files and the outbox settings. A node
without it runs alone, unless ``COALITION_MANIFEST`` names a manifest (then it joins
with the defaults; a container can join a brand folder as shipped).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coalition.errors import InvalidArgument
from coalition.ledger.entries import check_program_id
from coalition.node.auth import ApiKey, Role
from coalition.points.rules import ProgramRules, rules_from_mapping


def validate_program_id(program: str) -> str:
    """Program ids are 2-32 characters of lowercase letters, digits and '-'."""
    return check_program_id(program)


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:50051"`` or ``"[::1]:0"`` to (host, port); port 0 binds a free port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"bad address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class SealerConfig:
    """A block is sealed when ``max_entries`` are pending or the oldest waited ``max_delay_ms``."""

    max_entries: int = 1000
    max_delay_ms: int = 200


@dataclass(frozen=True)
class CoalitionConfig:
    """The node's part in a coalition; ``None`` fields take their default from the manifest.

    The partner address defaults to the manifest's ``partner_grpc`` for this program and
    the TLS files to what ``coalition tls-init`` writes beside the manifest's CA.
    """

    manifest_path: Path
    partner_grpc_address: str | None = None
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    tls_ca_path: Path | None = None
    abort_after_s: float = 30.0
    """How long the outbox retries a conversion before it asks the partner to abort it."""
    witness: bool = True
    """Follow and cosign every partner's headers (docs/coalition.md, Witnessing)."""


@dataclass(frozen=True)
class NodeConfig:
    program: str
    name: str
    database_url: str
    signing_key_path: Path
    account_secret_path: Path
    api_keys_path: Path
    grpc_address: str = "127.0.0.1:50051"
    http_address: str = "127.0.0.1:8080"
    signing_key_password: bytes | None = None
    sealer: SealerConfig = field(default_factory=SealerConfig)
    rules: ProgramRules = field(default_factory=ProgramRules)
    sqlite_synchronous: str = "FULL"
    expiry_interval_s: float = 60.0
    """How often the running node's scheduled job expires due points (``node.runner``)."""
    coalition: CoalitionConfig | None = None
    """Set when the node is a partner of a coalition (the ``[coalition]`` table)."""

    @property
    def folder(self) -> Path:
        return self.signing_key_path.parent.parent


def _path(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _database_url(base: Path, url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(base / url[len(prefix) :])
    return url


def _optional_path(base: Path, table: Mapping[str, Any], key: str) -> Path | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"coalition.{key} must be a non-empty path")
    return _path(base, value)


def coalition_from_mapping(table: Mapping[str, Any], base: Path) -> CoalitionConfig:
    """The ``[coalition]`` table; ``base`` resolves relative paths."""
    if not isinstance(table, Mapping):
        raise InvalidArgument("[coalition] must be a table")
    unknown = sorted(set(table) - _COALITION_KEYS)
    if unknown:
        raise InvalidArgument(f"[coalition]: unknown setting(s) {', '.join(unknown)}")
    manifest = table.get("manifest")
    if not isinstance(manifest, str) or not manifest:
        raise InvalidArgument("coalition.manifest must be the path of the coalition manifest")
    address = os.environ.get("COALITION_PARTNER_GRPC_ADDRESS") or table.get("partner_grpc")
    if address is not None:
        if not isinstance(address, str):
            raise InvalidArgument("coalition.partner_grpc must be HOST:PORT")
        split_address(address)
    abort_after = table.get("abort_after_s", 30)
    if type(abort_after) not in (int, float) or not abort_after > 0:
        raise InvalidArgument("coalition.abort_after_s must be a positive number of seconds")
    witness = table.get("witness", True)
    if type(witness) is not bool:
        raise InvalidArgument("coalition.witness must be true or false")
    return CoalitionConfig(
        manifest_path=_path(base, manifest),
        partner_grpc_address=address,
        tls_cert_path=_optional_path(base, table, "tls_cert"),
        tls_key_path=_optional_path(base, table, "tls_key"),
        tls_ca_path=_optional_path(base, table, "tls_ca"),
        abort_after_s=float(abort_after),
        witness=witness,
    )


def _coalition(raw: Mapping[str, Any], base: Path) -> CoalitionConfig | None:
    table = raw.get("coalition")
    manifest = os.environ.get("COALITION_MANIFEST")
    if manifest:
        resolved = str(Path(manifest).resolve())  # relative to where the node starts
        table = {**(table if isinstance(table, Mapping) else {}), "manifest": resolved}
    return None if table is None else coalition_from_mapping(table, base)


_COALITION_KEYS = {
    "manifest",
    "partner_grpc",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "abort_after_s",
    "witness",
}


def config_from_mapping(raw: Mapping[str, Any], base: Path) -> NodeConfig:
    """Build a NodeConfig from parsed TOML; ``base`` resolves relative paths."""
    try:
        program = raw["program"]
        node = raw.get("node", {})
        sealer = raw.get("sealer", {})
        password_env = node.get("signing_key_password_env")
        password = os.environ.get(password_env) if password_env else None
        url = os.environ.get("COALITION_DATABASE_URL") or node.get(
            "database", f"sqlite:///data/{program['id']}.db"
        )
        config = NodeConfig(
            program=validate_program_id(str(program["id"])),
            name=str(program.get("name", program["id"])),
            database_url=_database_url(base, url),
            signing_key_path=_path(base, node.get("signing_key", "keys/ledger.pem")),
            account_secret_path=_path(base, node.get("account_secret", "keys/account-secret")),
            api_keys_path=_path(base, node.get("api_keys", "keys/api-keys.toml")),
            grpc_address=os.environ.get("COALITION_GRPC_ADDRESS")
            or str(node.get("grpc", "127.0.0.1:50051")),
            http_address=os.environ.get("COALITION_HTTP_ADDRESS")
            or str(node.get("http", "127.0.0.1:8080")),
            signing_key_password=password.encode() if password else None,
            sealer=SealerConfig(
                max_entries=int(sealer.get("max_entries", 1000)),
                max_delay_ms=int(sealer.get("max_delay_ms", 200)),
            ),
            rules=rules_from_mapping(raw.get("rules", {})),
            sqlite_synchronous=str(node.get("sqlite_synchronous", "FULL")).upper(),
            expiry_interval_s=float(node.get("expiry_interval_s", 60)),
            coalition=_coalition(raw, base),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"bad node configuration: missing or wrong {exc}") from exc
    if config.sealer.max_entries < 1 or config.sealer.max_delay_ms < 1:
        raise InvalidArgument("sealer.max_entries and sealer.max_delay_ms must be positive")
    if not config.expiry_interval_s > 0:
        raise InvalidArgument("node.expiry_interval_s must be positive")
    if config.sqlite_synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise InvalidArgument("node.sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA")
    return config


def load_config(path: str | Path) -> NodeConfig:
    """Read and check a node's TOML configuration file."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except FileNotFoundError as exc:
        raise InvalidArgument(f"no configuration file at {file}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{file}: not valid TOML: {exc}") from exc
    return config_from_mapping(raw, file.resolve().parent)


def load_api_keys(path: Path) -> list[ApiKey]:
    """The API keys file (written by ``coalition keygen``): digests and roles only."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidArgument(f"no API keys file at {path}: run 'coalition keygen'") from exc
    try:
        return [
            ApiKey(str(k["name"]), str(k["sha256"]), Role(k["role"]), k.get("member_id"))
            for k in raw.get("api_keys", [])
        ]
    except (KeyError, ValueError) as exc:
        raise InvalidArgument(f"{path}: bad API key entry: {exc}") from exc
