"""API keys with roles, checked the same way by the REST and gRPC transports.

A key is presented as ``Authorization: Bearer <key>`` (HTTP) or the ``authorization``
metadata (gRPC); the scheme name is case-insensitive (RFC 7235 §2.1), so ``bearer`` works
too. The node stores only SHA-256 digests of keys, and ``Authenticator.replace`` swaps
the whole set at once (``coalition run`` does on SIGHUP). Roles:

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
from coalition.node.limits import RequestRates


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
    """Maps presented keys to principals and decides whether they may act.

    The key set MAY be replaced while calls are served (``replace``): a call sees either
    the old set or the new one, never a mix, and a removed key is refused from then on.
    """

    def __init__(self, keys: Iterable[ApiKey], rates: RequestRates | None = None) -> None:
        self._keys = self._checked(keys)
        self._rates = rates

    @staticmethod
    def _checked(keys: Iterable[ApiKey]) -> dict[str, ApiKey]:
        by_digest = {key.digest: key for key in keys}
        for key in by_digest.values():
            if key.role is Role.MEMBER and not key.member_id:
                raise InvalidArgument(f"member API key {key.name!r} needs a member_id")
        return by_digest

    def replace(self, keys: Iterable[ApiKey]) -> int:
        """Serve ``keys`` instead of the current set, all at once; returns how many.
        A bad set (InvalidArgument) leaves the current one in force."""
        checked = self._checked(keys)
        self._keys = checked  # one assignment: a lookup reads the old dict or the new one
        return len(checked)

    def authenticate(self, authorization: str | None) -> Principal:
        """Principal for an ``Authorization`` value (``Bearer <key>``, any case of the
        scheme, or the bare key)."""
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, rest = authorization.strip().partition(" ")
        secret = rest.strip() if scheme.lower() == "bearer" and rest else authorization.strip()
        digest = key_digest(secret)
        keys = self._keys  # one snapshot: a concurrent replace never splits a lookup
        for known, key in keys.items():
            if hmac.compare_digest(known, digest):
                return Principal(key.name, key.role, key.member_id)
        raise Unauthenticated("unknown API key")

    def check(
        self, authorization: str | None, action: Action, member_id: str | None = None
    ) -> Principal:
        """The caller of one request, allowed to do ``action`` and within its key's rate
        limit (``node.limits``); every REST route and gRPC call MUST pass here once."""
        principal = self.authenticate(authorization)
        self.authorize(principal, action, member_id)
        if self._rates is not None:
            self._rates.take(f"API key {principal.name!r}")
        return principal

    @staticmethod
    def authorize(principal: Principal, action: Action, member_id: str | None = None) -> None:
        """Raise PermissionDenied unless ``principal`` may do ``action`` (on ``member_id``)."""
        if principal.role not in _ALLOWED[action]:
            raise PermissionDenied(f"role {principal.role} may not {action}")
        if principal.role is Role.MEMBER and member_id != principal.member_id:
            raise PermissionDenied("a member key may only act on its own account")
