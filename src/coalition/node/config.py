"""A node's configuration: one TOML file per brand (see ``nodes/``).

Relative paths are resolved against the file's folder, so a brand folder can be moved
as a whole. ``COALITION_DATABASE_URL``, ``COALITION_GRPC_ADDRESS`` and
``COALITION_HTTP_ADDRESS`` override the file (for containers and operations).

A ``[coalition]`` table makes the node a partner of a coalition (docs/coalition.md):
the manifest's path, the partner (mutual TLS) address, overridden by
``COALITION_PARTNER_GRPC_ADDRESS``, the TLS files and the outbox settings. A node
without it runs alone, unless ``COALITION_MANIFEST`` names a manifest (then it joins
with the defaults; a container can join a brand folder as shipped).

``[node] read_only = true`` with ``primary = "..."`` makes a **read-only process** for a
PostgreSQL hot standby (docs/operations.md): it runs no migration (it checks the schema's
revision is this code's and refuses otherwise), no sealer and no background job, serves
every read, and refuses every write with FailedPrecondition naming the primary.

The file is read strictly into a typed model (``NodeFile``, via ``node.strict_toml``)
before anything opens a database: an unknown key (a misspelt ``databse`` would otherwise
open a fresh, empty ledger), a wrong type (``max_entries = true``), a value out of range
or a missing key stops the node with a message naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from coalition.errors import InvalidArgument
from coalition.ledger.entries import check_program_id
from coalition.node.auth import ApiKey, Role
from coalition.node.limits import Limits
from coalition.node.strict_toml import AtLeast, ConfigError, NonEmpty, OneOf, Satisfies, read_table
from coalition.points.rules import ProgramRules, parse_duration, parse_rational, rules_from_mapping

SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


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
class IntegrityConfig:
    """The node's checks of its own ledger (``node.integrity``, docs/operations.md
    "Integrity checks")."""

    verify_at_start_blocks: int = 32
    """How many of the newest blocks are verified before the node serves (0: none)."""
    scrub_entries_per_second: float = 2000.0
    """The background scrub's rate limit, in entries per second (0: no scrub)."""
    scrub_pause_s: float = 3600.0
    """Seconds between the end of one scrub pass over the whole log and the next."""


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
class ServerTls:
    """TLS for the member/operator ports (the ``[tls]`` table): the PEM certificate chain
    and private key both REST and gRPC serve. Read at start; a renewed certificate is
    taken by restarting the node's processes one at a time (docs/operations.md)."""

    cert_path: Path
    key_path: Path


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
    read_only: bool = False
    """A process against a hot standby: reads only, writes refused naming ``primary``."""
    primary: str | None = None
    """Where writes go when ``read_only`` (an address or URL, shown to callers)."""
    limits: Limits = field(default_factory=Limits)
    """The ``[limits]`` table: open streams and request rates per key (``node.limits``)."""
    tls: ServerTls | None = None
    """The ``[tls]`` table: serve the member/operator ports over TLS (off by default)."""
    integrity: IntegrityConfig = field(default_factory=IntegrityConfig)
    """The ``[integrity]`` table: the start check and the scrub (``node.integrity``)."""
    reuse_port: bool = False
    """Not in the file: set by ``coalition run --reuse-port`` (and for the workers of
    ``--processes N``), so the processes of one node share its ports (SO_REUSEPORT)."""

    @property
    def folder(self) -> Path:
        return self.signing_key_path.parent.parent


# --- the typed model of node.toml (strict_toml reads it; README "Configuration") ----------


def _address(value: str, key: str) -> None:
    try:
        split_address(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{key}: {exc}") from None


Address = Annotated[str, Satisfies(_address)]
PathText = Annotated[str, NonEmpty]
Rational = Annotated[str | int, Satisfies(parse_rational)]
Duration = Annotated[str | int, Satisfies(parse_duration)]
Count = Annotated[int, AtLeast(1)]


@dataclass(frozen=True)
class ProgramTable:
    id: Annotated[str, Satisfies(check_program_id)]
    name: Annotated[str, NonEmpty] | None = None


@dataclass(frozen=True)
class NodeTable:
    database: PathText | None = None
    """A SQLite URL (relative to the file's folder) or a PostgreSQL URL."""
    signing_key: PathText = "keys/ledger.pem"
    account_secret: PathText = "keys/account-secret"  # noqa: S105  (a path, not a secret)
    api_keys: PathText = "keys/api-keys.toml"
    signing_key_password_env: Annotated[str, NonEmpty] | None = None
    grpc: Address = "127.0.0.1:50051"
    http: Address = "127.0.0.1:8080"
    sqlite_synchronous: Annotated[str, OneOf(SQLITE_SYNCHRONOUS, fold_case=True)] = "FULL"
    expiry_interval_s: Annotated[float, AtLeast(0, exclusive=True)] = 60.0
    read_only: bool = False
    primary: Annotated[str, NonEmpty] | None = None


@dataclass(frozen=True)
class SealerTable:
    max_entries: Count = 1000
    max_delay_ms: Count = 200


@dataclass(frozen=True)
class CoalitionTable:
    manifest: PathText
    partner_grpc: Address | None = None
    tls_cert: PathText | None = None
    tls_key: PathText | None = None
    tls_ca: PathText | None = None
    abort_after_s: Annotated[float, AtLeast(0, exclusive=True)] = 30.0
    witness: bool = True


@dataclass(frozen=True)
class TierTable:
    name: Annotated[str, NonEmpty]
    threshold: Annotated[int, AtLeast(0)]
    multiplier: Rational


@dataclass(frozen=True)
class TiersTable:
    window: Duration | None = None
    levels: tuple[TierTable, ...] | None = None


@dataclass(frozen=True)
class PromotionTable:
    name: Annotated[str, NonEmpty]
    multiplier: Rational
    start: str | datetime
    end: str | datetime
    categories: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RulesTable:
    """Only checked here: ``points.rules.rules_from_mapping`` builds the rules and keeps
    their defaults (``ProgramRules``), so every field is optional."""

    currency: Annotated[str, NonEmpty] | None = None
    minor_units: Count | None = None
    points_per_unit: Rational | None = None
    categories: dict[str, Rational] | None = None
    promotions: tuple[PromotionTable, ...] | None = None
    tiers: TiersTable | None = None
    holding_period: Duration | None = None
    expiry_period: Duration | None = None
    max_points_per_purchase: Count | None = None
    max_points_per_operation: Count | None = None
    max_spend_minor: Count | None = None
    rewards: dict[str, Count] | None = None


@dataclass(frozen=True)
class LimitsTable:
    max_streams: Count = Limits.max_streams
    max_streams_per_caller: Count = Limits.max_streams_per_caller
    requests_per_second: Annotated[float, AtLeast(0, exclusive=True)] = Limits.requests_per_second
    burst: Count = Limits.burst


@dataclass(frozen=True)
class TlsTable:
    cert: PathText
    key: PathText


@dataclass(frozen=True)
class IntegrityTable:
    verify_at_start_blocks: Annotated[int, AtLeast(0)] = IntegrityConfig.verify_at_start_blocks
    scrub_entries_per_second: Annotated[float, AtLeast(0)] = (
        IntegrityConfig.scrub_entries_per_second
    )
    scrub_pause_s: Annotated[float, AtLeast(0)] = IntegrityConfig.scrub_pause_s


@dataclass(frozen=True)
class NodeFile:
    """A whole ``node.toml``."""

    program: ProgramTable
    node: NodeTable = field(default_factory=NodeTable)
    sealer: SealerTable = field(default_factory=SealerTable)
    rules: RulesTable = field(default_factory=RulesTable)
    coalition: CoalitionTable | None = None
    limits: LimitsTable = field(default_factory=LimitsTable)
    tls: TlsTable | None = None
    integrity: IntegrityTable = field(default_factory=IntegrityTable)


# --- from the model to NodeConfig: paths, defaults and environment overrides ----------


def _path(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _database_url(base: Path, url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(base / url[len(prefix) :])
    return url


def _env_address(name: str, configured: str) -> str:
    value = os.environ.get(name)
    if not value:
        return configured
    _address(value, f"the environment variable {name}")
    return value


def _optional_path(base: Path, value: str | None) -> Path | None:
    return None if value is None else _path(base, value)


def _coalition(table: CoalitionTable | None, base: Path) -> CoalitionConfig | None:
    manifest = os.environ.get("COALITION_MANIFEST")
    if manifest:
        resolved = str(Path(manifest).resolve())  # relative to where the node starts
        table = dataclasses.replace(table, manifest=resolved) if table else CoalitionTable(resolved)
    if table is None:
        return None
    partner_grpc = table.partner_grpc
    if os.environ.get("COALITION_PARTNER_GRPC_ADDRESS"):
        partner_grpc = _env_address("COALITION_PARTNER_GRPC_ADDRESS", "")
    return CoalitionConfig(
        manifest_path=_path(base, table.manifest),
        partner_grpc_address=partner_grpc,
        tls_cert_path=_optional_path(base, table.tls_cert),
        tls_key_path=_optional_path(base, table.tls_key),
        tls_ca_path=_optional_path(base, table.tls_ca),
        abort_after_s=table.abort_after_s,
        witness=table.witness,
    )


def config_from_mapping(
    raw: Mapping[str, Any], base: Path, *, source: str = "the node configuration"
) -> NodeConfig:
    """Build a NodeConfig from parsed TOML; ``base`` resolves relative paths, ``source``
    names the file in messages. Refuses (ConfigError) what the model does not allow."""
    model = read_table(NodeFile, raw, source)
    program, node = model.program.id, model.node
    password = os.environ.get(node.signing_key_password_env or "") or None
    url = (
        os.environ.get("COALITION_DATABASE_URL")
        or node.database
        or (f"sqlite:///data/{program}.db")
    )
    try:
        rules = rules_from_mapping(raw.get("rules", {}))
    except InvalidArgument as exc:
        raise ConfigError(source, "rules", f"[rules]: {exc}") from None
    _check_read_only(node, url, source)
    return NodeConfig(
        program=program,
        name=model.program.name or program,
        database_url=_database_url(base, url),
        signing_key_path=_path(base, node.signing_key),
        account_secret_path=_path(base, node.account_secret),
        api_keys_path=_path(base, node.api_keys),
        grpc_address=_env_address("COALITION_GRPC_ADDRESS", node.grpc),
        http_address=_env_address("COALITION_HTTP_ADDRESS", node.http),
        signing_key_password=password.encode() if password else None,
        sealer=SealerConfig(model.sealer.max_entries, model.sealer.max_delay_ms),
        rules=rules,
        sqlite_synchronous=node.sqlite_synchronous.upper(),
        expiry_interval_s=node.expiry_interval_s,
        coalition=_coalition(model.coalition, base),
        read_only=node.read_only,
        primary=node.primary,
        limits=Limits(**dataclasses.asdict(model.limits)),
        tls=(
            None
            if model.tls is None
            else ServerTls(_path(base, model.tls.cert), _path(base, model.tls.key))
        ),
        integrity=IntegrityConfig(**dataclasses.asdict(model.integrity)),
    )


def _check_read_only(node: NodeTable, url: str, source: str) -> None:
    """A read-only process names its primary and reads a PostgreSQL hot standby."""
    if node.read_only and node.primary is None:
        raise ConfigError(
            source,
            "node.primary",
            "node.read_only = true needs node.primary: the address of the primary that "
            "takes the writes this process refuses",
        )
    if node.primary is not None and not node.read_only:
        raise ConfigError(
            source,
            "node.primary",
            "node.primary is only for a read-only process (set node.read_only = true, "
            "or remove node.primary)",
        )
    if node.read_only and not url.startswith("postgres"):
        raise ConfigError(
            source,
            "node.read_only",
            "node.read_only = true serves a PostgreSQL hot standby; the database "
            f"{url.split('?')[0]!r} is not PostgreSQL (SQLite has one process, which writes)",
        )


def load_config(path: str | Path) -> NodeConfig:
    """Read and check a node's TOML configuration file (ConfigError names the key)."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidArgument(f"no configuration file at {file}") from exc
    except OSError as exc:
        raise InvalidArgument(f"cannot read the configuration {file}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{file}: not valid TOML: {exc}") from exc
    return config_from_mapping(raw, file.resolve().parent, source=str(file))


def load_api_keys(path: Path) -> list[ApiKey]:
    """The API keys file (written by ``coalition keygen``): digests and roles only."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidArgument(f"no API keys file at {path}: run 'coalition keygen'") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path} is not valid TOML: {exc}") from None
    try:
        return [
            ApiKey(str(k["name"]), str(k["sha256"]), Role(k["role"]), k.get("member_id"))
            for k in raw.get("api_keys", [])
        ]
    except (KeyError, ValueError) as exc:
        raise InvalidArgument(f"{path}: bad API key entry: {exc}") from exc
