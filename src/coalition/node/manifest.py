"""The coalition manifest (``nodes/coalition.toml``): who the partners are and how to reach them.

Every node and every auditor reads the same file. A partner is known by its program id
and its Ed25519 ledger public key; relative paths resolve against the manifest's folder.
Public keys are read on first use, so ``coalition tls-init`` works before ``keygen``.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coalition.errors import FailedPrecondition, InvalidArgument, NotFound
from coalition.ledger.keys import VerifyKey
from coalition.node.config import validate_program_id

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
        """The partner named ``program``; NotFound if the manifest does not list it."""
        for info in self.partners:
            if info.program == program:
                return info
        raise NotFound(f"{program!r} is not a partner in the coalition manifest {self.path}")

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


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{where}: {key} must be a non-empty string")
    return value


def _address(table: Mapping[str, Any], key: str, where: str) -> str:
    value = _text(table, key, where)
    if not _ADDRESS.fullmatch(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise InvalidArgument(f"{where}: {key} must be HOST:PORT, not {value!r}")
    return value


def _path(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _partner(raw: object, n: int, base: Path) -> PartnerInfo:
    where = f"partners[{n}]"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be a table")
    program = _text(raw, "program", where)
    where = f"partner {program!r}"
    validate_program_id(program)
    currency = _text(raw, "currency", where)
    if not _CURRENCY.fullmatch(currency):
        raise InvalidArgument(f"{where}: currency must be an ISO 4217 code like EUR")
    config = raw.get("config")
    if config is not None and (not isinstance(config, str) or not config):
        raise InvalidArgument(f"{where}: config must be a path")
    return PartnerInfo(
        program=program,
        name=str(raw.get("name") or program),
        grpc=_address(raw, "grpc", where),
        partner_grpc=_address(raw, "partner_grpc", where),
        http=_address(raw, "http", where),
        public_key_path=_path(base, _text(raw, "public_key", where)),
        currency=currency,
        config=_path(base, config) if config else None,
    )


def _credit_limits(raw: object, programs: set[str]) -> dict[tuple[str, str], int]:
    if not isinstance(raw, list):
        raise InvalidArgument("credit_limits must be an array of tables")
    limits: dict[tuple[str, str], int] = {}
    for n, item in enumerate(raw):
        where = f"credit_limits[{n}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where} must be a table")
        creditor, debtor = _text(item, "creditor", where), _text(item, "debtor", where)
        for program in (creditor, debtor):
            if program not in programs:
                raise InvalidArgument(f"{where}: {program!r} is not a partner")
        if creditor == debtor:
            raise InvalidArgument(f"{where}: creditor and debtor must differ")
        limit = item.get("limit_minor")
        if type(limit) is not int or limit < 0:
            raise InvalidArgument(f"{where}: limit_minor must be a non-negative integer")
        if (creditor, debtor) in limits:
            raise InvalidArgument(f"{where}: a second limit for {creditor} <- {debtor}")
        limits[(creditor, debtor)] = limit
    return limits


def manifest_from_mapping(raw: Mapping[str, Any], path: Path) -> Manifest:
    """Build a Manifest from parsed TOML; relative paths resolve against ``path``'s folder."""
    base = path.parent
    coalition = raw.get("coalition")
    if not isinstance(coalition, dict):
        raise InvalidArgument(f"{path}: missing the [coalition] table")
    partners_raw = raw.get("partners")
    if not isinstance(partners_raw, list) or not partners_raw:
        raise InvalidArgument(f"{path}: list the partners as [[partners]] tables")
    partners = tuple(_partner(item, n, base) for n, item in enumerate(partners_raw))
    programs = [p.program for p in partners]
    duplicates = sorted({p for p in programs if programs.count(p) > 1})
    if duplicates:
        raise InvalidArgument(f"{path}: partners listed twice: {', '.join(duplicates)}")
    for what in ("grpc", "partner_grpc", "http"):
        addresses = [getattr(p, what) for p in partners]
        if len(set(addresses)) != len(addresses):
            raise InvalidArgument(f"{path}: two partners share a {what} address")
    quorum = coalition.get("witness_quorum", len(partners) - 1)
    if type(quorum) is not int or not 0 <= quorum <= len(partners) - 1:
        raise InvalidArgument(
            f"{path}: witness_quorum must be an integer in [0, {len(partners) - 1}] "
            "(cosigners besides the signer)"
        )
    return Manifest(
        path=path,
        name=str(coalition.get("name") or "coalition"),
        ca_cert=_path(base, str(coalition.get("ca_cert") or "tls/ca.pem")),
        witness_quorum=quorum,
        partners=partners,
        credit_limits=_credit_limits(raw.get("credit_limits", []), set(programs)),
        settings=dict(coalition),
    )
