"""API keys with roles, checked the same way by the REST and gRPC transports.

A key is presented as ``Authorization: Bearer <key>`` (HTTP) or the ``authorization``
metadata (gRPC); the scheme name is case-insensitive (RFC 7235 §2.1), so ``bearer`` works
too. The node stores only SHA-256 digests of keys. Keys come from two places:

- the keys file ``coalition keygen`` writes; ``Authenticator.replace`` swaps that set at
  once (``coalition run`` does on SIGHUP);
- the node's database (``node.api_keys``: issued, expired and revoked at run time), which
  the authenticator polls through ``IssuedKeys`` at most every ``POLL_INTERVAL_S``, so a
  change made by any process of the node is in force in every process within
  ``POLL_INTERVAL_S`` plus one query.

A key with an expiry is refused from that instant on; a revoked or expired key is
refused with a message that says so (Unauthenticated, HTTP 401). Roles:

- ``member``: reads its own account and spends or transfers its own points;
- ``operator``: every points operation for the program, and ledger reads;
- ``auditor``: read-only access to the ledger (headers, blocks, entries, proofs).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from coalition.errors import InvalidArgument, PermissionDenied, Unauthenticated
from coalition.node.limits import RequestRates

log = logging.getLogger("coalition.auth")

POLL_INTERVAL_S = 1.0
"""How often at most a process asks the database whether its issued keys changed: the
bound, plus one query, within which an issue or revocation is in force everywhere."""


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
    MANAGE_KEYS = "manage-keys"  # issue, list and revoke API keys


_ALLOWED: dict[Action, frozenset[Role]] = {
    Action.MEMBER_READ: frozenset({Role.MEMBER, Role.OPERATOR}),
    Action.MEMBER_SPEND: frozenset({Role.MEMBER, Role.OPERATOR}),
    Action.OPERATE: frozenset({Role.OPERATOR}),
    Action.LEDGER_READ: frozenset({Role.OPERATOR, Role.AUDITOR}),
    Action.MANAGE_KEYS: frozenset({Role.OPERATOR}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, and for members the member id the key belongs to."""

    name: str
    role: Role
    member_id: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: the hex SHA-256 of the secret, never the secret itself.
    ``issued`` keys live in the node's database (``node.api_keys``), the others in the
    keys file; only issued keys have an expiry or a revocation time."""

    name: str
    digest: str
    role: Role
    member_id: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    issued: bool = False
    created_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class IssuedKeys(Protocol):
    """The keys issued in the node's database, as the authenticator polls them."""

    def changed_since(self, version: int) -> tuple[int, list[ApiKey]] | None:
        """None when the key set is still at ``version``; else the new version and every
        issued key (revoked ones included), read in one transaction."""
        ...


def key_digest(secret: str) -> str:
    """The hex SHA-256 a node stores for an API key."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Authenticator:
    """Maps presented keys to principals and decides whether they may act.

    The key set MAY be replaced while calls are served (``replace``): a call sees either
    the old set or the new one, never a mix, and a removed key is refused from then on.
    """

    def __init__(
        self,
        keys: Iterable[ApiKey],
        rates: RequestRates | None = None,
        *,
        issued: IssuedKeys | None = None,
        clock: Callable[[], datetime] | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        """``keys``: the keys file's; ``issued``: the database's, read now (a database
        that cannot be read fails here) and then polled (``POLL_INTERVAL_S``)."""
        self._file = self._checked(keys)
        self._rates = rates
        self._clock = clock or (lambda: datetime.now(UTC))
        self._issued = issued
        self._issued_keys: dict[str, ApiKey] = {}
        self._version = -1
        self._poll_interval = poll_interval_s
        self._next_poll = 0.0
        self._polling = threading.Lock()
        self._merging = threading.Lock()  # a reload and a poll never drop each other's keys
        self._keys = dict(self._file)
        if issued is not None:
            self._poll(raise_errors=True)

    @staticmethod
    def _checked(keys: Iterable[ApiKey]) -> dict[str, ApiKey]:
        by_digest = {key.digest: key for key in keys}
        for key in by_digest.values():
            if key.role is Role.MEMBER and not key.member_id:
                raise InvalidArgument(f"member API key {key.name!r} needs a member_id")
        return by_digest

    def replace(self, keys: Iterable[ApiKey]) -> int:
        """Serve ``keys`` instead of the keys file's current set, all at once; returns
        how many. A bad set (InvalidArgument) leaves the current one in force. Issued
        keys are not touched."""
        checked = self._checked(keys)
        with self._merging:
            self._file = checked
            self._keys = {**self._issued_keys, **checked}  # one assignment: old or new set
        return len(checked)

    def file_keys(self) -> list[ApiKey]:
        """The keys file's keys in force (``node.api_keys`` checks names against them)."""
        return list(self._file.values())

    def _poll(self, *, raise_errors: bool = False) -> None:
        """Take the issued keys if they changed; at most one caller polls at a time and
        the others go on with the set in force. A failed poll keeps that set (logged)
        and is tried again after the interval."""
        if self._issued is None or not self._polling.acquire(blocking=False):
            return
        try:
            if not raise_errors and time.monotonic() < self._next_poll:
                return
            changed = self._issued.changed_since(self._version)
            if changed is not None:
                version, keys = changed
                issued = self._checked(keys)
                with self._merging:
                    self._issued_keys = issued
                    self._keys = {**issued, **self._file}
                self._version = version
        except Exception:
            if raise_errors:
                raise
            log.exception("could not read the issued API keys; the keys in force stay")
        finally:
            self._next_poll = time.monotonic() + self._poll_interval
            self._polling.release()

    def authenticate(self, authorization: str | None) -> Principal:
        """Principal for an ``Authorization`` value (``Bearer <key>``, any case of the
        scheme, or the bare key)."""
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, rest = authorization.strip().partition(" ")
        secret = rest.strip() if scheme.lower() == "bearer" and rest else authorization.strip()
        digest = key_digest(secret)
        if self._issued is not None and time.monotonic() >= self._next_poll:
            self._poll()
        keys = self._keys  # one snapshot: a concurrent replace never splits a lookup
        for known, key in keys.items():
            if hmac.compare_digest(known, digest):
                return self._principal(key)
        raise Unauthenticated("unknown API key")

    def _principal(self, key: ApiKey) -> Principal:
        if key.revoked_at is not None:
            raise Unauthenticated(
                f"API key {key.name!r} was revoked at {key.revoked_at.isoformat()}; "
                "ask an operator for a new key"
            )
        if key.expires_at is not None and self._clock() >= key.expires_at:
            raise Unauthenticated(
                f"API key {key.name!r} expired at {key.expires_at.isoformat()}; "
                "ask an operator for a new key"
            )
        return Principal(key.name, key.role, key.member_id)

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
