"""The coalition manifest (``nodes/coalition.toml``): who the partners are and how to reach them.

Every node and every auditor reads the same file. A partner is known by its program id
and its Ed25519 ledger public key; relative paths resolve against the manifest's folder.
Public keys are read on first use, so ``coalition tls-init`` works before ``keygen``.
The file is read strictly into a typed model (``ManifestFile``): an unknown or misspelt
key, a wrong type or a value out of range is refused with the file and the key named.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from coalition.errors import FailedPrecondition, InvalidArgument, NotFound, quoted
from coalition.ledger.entries import check_program_id
from coalition.ledger.keys import VerifyKey
from coalition.node.strict_toml import AtLeast, ConfigError, NonEmpty, Satisfies, read_table

_ADDRESS = re.compile(r"[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}", re.ASCII)
_CURRENCY = re.compile(r"[A-Z]{3}", re.ASCII)


@dataclass(frozen=True)
class PartnerInfo:
    """One partner of the coalition, as the manifest names it."""

    program: str
    name: str
    grpc: str
    """Member/operator API (API keys)."""
    partner_grpc: str
    """Partner API (mutual TLS): partner messages and Ledger reads."""
    http: str
    public_key_path: Path
    currency: str
    config: Path | None = None
    """The node's own configuration file (a demo convenience; may be absent)."""

    @functools.cached_property
    def public_key(self) -> VerifyKey:
        """The partner's ledger key, read from ``public_key_path`` on first use."""
        try:
            data = self.public_key_path.read_bytes()
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot read {self.program}'s public key {self.public_key_path}: "
                f"{exc.strerror} (run coalition keygen for it)"
            ) from None
        try:
            return VerifyKey.from_pem(data)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{self.public_key_path}: {exc}") from None


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest; ``partners`` keeps the file's order."""

    path: Path
    name: str
    ca_cert: Path
    witness_quorum: int
    partners: tuple[PartnerInfo, ...]
    credit_limits: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(creditor, debtor) -> what the creditor lets the debtor owe it unsettled (minor)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """The whole ``[coalition]`` table, for features' own settings."""

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def programs(self) -> tuple[str, ...]:
        return tuple(p.program for p in self.partners)

    def partner(self, program: str) -> PartnerInfo:
        """The partner named ``program``; NotFound if the manifest does not list it. The
        message reaches callers (a member's conversion to an unknown program), so it
        names the program only, never the manifest's file (issue 11, class 9)."""
        for info in self.partners:
            if info.program == program:
                return info
        raise NotFound(f"{quoted(program)} is not a partner of this coalition")

    def public_key(self, program: str) -> VerifyKey:
        """``program``'s ledger public key (NotFound for an unknown program)."""
        return self.partner(program).public_key

    def others(self, program: str) -> tuple[PartnerInfo, ...]:
        """Every partner except ``program`` (which must be one)."""
        self.partner(program)
        return tuple(p for p in self.partners if p.program != program)

    def credit_limit(self, creditor: str, debtor: str) -> int | None:
        """What ``creditor`` lets ``debtor`` owe it unsettled, or None when unlimited."""
        self.partner(creditor)
        self.partner(debtor)
        return self.credit_limits.get((creditor, debtor))

    def with_partner_grpc(self, addresses: Mapping[str, str]) -> Manifest:
        """A copy whose partners listen at ``addresses`` (program -> HOST:PORT) instead:
        for servers bound to free ports in tests and local runs."""
        for program in addresses:
            self.partner(program)
        partners = tuple(
            replace(p, partner_grpc=addresses.get(p.program, p.partner_grpc)) for p in self.partners
        )
        return replace(self, partners=partners)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and check a manifest; InvalidArgument names what is wrong."""
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidArgument(f"cannot read the manifest {file}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"{file}: not valid TOML: {exc}") from None
        return manifest_from_mapping(raw, file.resolve())


# --- the typed model of the manifest (strict_toml reads it) ---------------------------


def _port_address(value: str, key: str) -> None:
    if not _ADDRESS.fullmatch(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise InvalidArgument(f"{key} must be HOST:PORT with a port in 1..65535, not {value!r}")


def _currency(value: str, key: str) -> None:
    if not _CURRENCY.fullmatch(value):
        raise InvalidArgument(f"{key} must be an ISO 4217 code like EUR, not {value!r}")


Address = Annotated[str, Satisfies(_port_address)]
Text = Annotated[str, NonEmpty]


@dataclass(frozen=True)
class CoalitionTable:
    name: Text | None = None
    ca_cert: Text | None = None
    witness_quorum: Annotated[int, AtLeast(0)] | None = None
    """Cosigners besides the signer; at most the partners less one (default: all)."""


@dataclass(frozen=True)
class PartnerTable:
    program: Annotated[str, Satisfies(check_program_id)]
    grpc: Address
    partner_grpc: Address
    http: Address
    public_key: Text
    currency: Annotated[str, Satisfies(_currency)]
    name: Text | None = None
    config: Text | None = None


@dataclass(frozen=True)
class CreditLimitTable:
    creditor: Text
    debtor: Text
    limit_minor: Annotated[int, AtLeast(0)]


@dataclass(frozen=True)
class ManifestFile:
    """A whole manifest: ``[coalition]``, ``[[partners]]``, ``[[credit_limits]]``."""

    coalition: CoalitionTable
    partners: tuple[PartnerTable, ...]
    credit_limits: tuple[CreditLimitTable, ...] = ()


# --- from the model to Manifest: paths and the rules between tables -------------------


def _path(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _partner(table: PartnerTable, base: Path) -> PartnerInfo:
    return PartnerInfo(
        program=table.program,
        name=table.name or table.program,
        grpc=table.grpc,
        partner_grpc=table.partner_grpc,
        http=table.http,
        public_key_path=_path(base, table.public_key),
        currency=table.currency,
        config=_path(base, table.config) if table.config else None,
    )


def _credit_limits(
    tables: tuple[CreditLimitTable, ...], programs: set[str], source: str
) -> dict[tuple[str, str], int]:
    limits: dict[tuple[str, str], int] = {}
    for n, item in enumerate(tables):
        where = f"credit_limits[{n}]"
        for program in (item.creditor, item.debtor):
            if program not in programs:
                raise ConfigError(source, where, f"{where}: {program!r} is not a partner")
        if item.creditor == item.debtor:
            raise ConfigError(source, where, f"{where}: creditor and debtor must differ")
        if (item.creditor, item.debtor) in limits:
            raise ConfigError(
                source, where, f"{where}: a second limit for {item.creditor} <- {item.debtor}"
            )
        limits[(item.creditor, item.debtor)] = item.limit_minor
    return limits


def manifest_from_mapping(raw: Mapping[str, Any], path: Path) -> Manifest:
    """Build a Manifest from parsed TOML; relative paths resolve against ``path``'s folder.

    Refuses (ConfigError, naming the file and the key) what the model does not allow.
    """
    source, base = str(path), path.parent
    model = read_table(ManifestFile, raw, source)
    if not model.partners:
        raise ConfigError(source, "partners", "list the partners as [[partners]] tables")
    partners = tuple(_partner(table, base) for table in model.partners)
    programs = [p.program for p in partners]
    duplicates = sorted({p for p in programs if programs.count(p) > 1})
    if duplicates:
        raise ConfigError(source, "partners", f"partners listed twice: {', '.join(duplicates)}")
    for what in ("grpc", "partner_grpc", "http"):
        addresses = [getattr(p, what) for p in partners]
        if len(set(addresses)) != len(addresses):
            raise ConfigError(source, "partners", f"two partners share a {what} address")
    quorum = model.coalition.witness_quorum
    if quorum is None:
        quorum = len(partners) - 1
    elif quorum > len(partners) - 1:
        raise ConfigError(
            source,
            "coalition.witness_quorum",
            f"coalition.witness_quorum must be in [0, {len(partners) - 1}] "
            f"(cosigners besides the signer), not {quorum}",
        )
    return Manifest(
        path=path,
        name=model.coalition.name or "coalition",
        ca_cert=_path(base, model.coalition.ca_cert or "tls/ca.pem"),
        witness_quorum=quorum,
        partners=partners,
        credit_limits=_credit_limits(model.credit_limits, set(programs), source),
        settings=dict(raw["coalition"]),
    )
