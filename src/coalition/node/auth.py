"""API keys with roles, checked the same way by the REST and gRPC transports.

A key is presented as ``Authorization: Bearer <key>`` (HTTP) or the ``authorization``
metadata (gRPC). The node stores only SHA-256 digests of keys. Roles:

- ``member``: reads its own account and spends or transfers its own points;
- ``operator``: every points operation for the program, and ledger reads;
- ``auditor``: read-only access to the ledger (headers, blocks, entries, proofs).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from coalition.errors import InvalidArgument, PermissionDenied, Unauthenticated


class Role(StrEnum):
    MEMBER = "member"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class Action(StrEnum):
    """What a call does, as far as authorization cares."""

    MEMBER_READ = "member-read"  # balance, lots, history of one member
    MEMBER_SPEND = "member-spend"  # redeem, transfer out of one member's account
    OPERATE = "operate"  # enroll, earn, reverse, adjust, revoke, expiry, bulk earn
    LEDGER_READ = "ledger-read"  # headers, blocks, entries, proofs


_ALLOWED: dict[Action, frozenset[Role]] = {
    Action.MEMBER_READ: frozenset({Role.MEMBER, Role.OPERATOR}),
    Action.MEMBER_SPEND: frozenset({Role.MEMBER, Role.OPERATOR}),
    Action.OPERATE: frozenset({Role.OPERATOR}),
    Action.LEDGER_READ: frozenset({Role.OPERATOR, Role.AUDITOR}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, and for members the member id the key belongs to."""

    name: str
    role: Role
    member_id: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: the hex SHA-256 of the secret, never the secret itself."""

    name: str
    digest: str
    role: Role
    member_id: str | None = None


def key_digest(secret: str) -> str:
    """The hex SHA-256 a node stores for an API key."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Authenticator:
    """Maps presented keys to principals and decides whether they may act."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = {key.digest: key for key in keys}
        for key in self._keys.values():
            if key.role is Role.MEMBER and not key.member_id:
                raise InvalidArgument(f"member API key {key.name!r} needs a member_id")

    def authenticate(self, authorization: str | None) -> Principal:
        """Principal for an ``Authorization`` value (``Bearer <key>`` or the bare key)."""
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        secret = authorization.removeprefix("Bearer ").strip()
        digest = key_digest(secret)
        for known, key in self._keys.items():
            if hmac.compare_digest(known, digest):
                return Principal(key.name, key.role, key.member_id)
        raise Unauthenticated("unknown API key")

    @staticmethod
    def authorize(principal: Principal, action: Action, member_id: str | None = None) -> None:
        """Raise PermissionDenied unless ``principal`` may do ``action`` (on ``member_id``)."""
        if principal.role not in _ALLOWED[action]:
            raise PermissionDenied(f"role {principal.role} may not {action}")
        if principal.role is Role.MEMBER and member_id != principal.member_id:
            raise PermissionDenied("a member key may only act on its own account")
