"""The API-key life cycle: keys issued, listed, expired and revoked at run time, kept in
the node's database so that every process of the node serves the same set.

``coalition keys issue|list|revoke`` and the operator routes (``api.http.api_keys``) both
come here. Contract for callers:

- ``issue`` returns the secret once; only its SHA-256 is stored, so a lost secret is
  replaced by issuing another key, never recovered. A member key MUST name its member id
  (and only member keys may); ``expires_at``, when given, MUST be in the future.
- ``revoke`` is for issued keys; a key from the keys file is removed from that file
  (and SIGHUP sent). Revoking the last usable operator key is refused
  (FailedPrecondition): the node would have no one left to manage it. The check runs in
  the revocation's transaction after the change counter is locked, so two revocations at
  once cannot both pass it.
- The authenticator of every process polls ``changed_since`` (``node.auth``): a change
  is in force everywhere within ``auth.POLL_INTERVAL_S`` plus one query.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from coalition.errors import FailedPrecondition, InvalidArgument, NotFound, quoted
from coalition.node.auth import ApiKey, Role, key_digest
from coalition.node.read_only import read_only_refusal
from coalition.points.accounts import validate_member_id
from coalition.store import api_keys as store

KEY_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}"
"""What a key's name may be (the transports publish it, e.g. in OpenAPI)."""
_NAME = re.compile(KEY_NAME_PATTERN, re.ASCII)
SECRET_PREFIX = "ck_"  # noqa: S105  (a prefix, not a secret)
"""Issued secrets start with it, so a leaked one is recognisable in logs and scanners."""


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just issued: its record and the secret, which is shown this once."""

    key: ApiKey
    secret: str


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(at: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (at - _EPOCH) // _MICROSECOND


def _time(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + micros * _MICROSECOND


def _api_key(row: store.StoredKey) -> ApiKey:
    return ApiKey(
        row.name,
        row.digest,
        Role(row.role),
        row.member_id,
        expires_at=_time(row.expires_at),
        revoked_at=_time(row.revoked_at),
        issued=True,
        created_at=_time(row.created_at),
    )


def parse_expiry(text: str) -> datetime:
    """An ``expires_at`` given as RFC 3339 text with its offset (``2027-01-31T00:00:00Z``)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"expires_at {quoted(text)} is not an RFC 3339 time such as 2027-01-31T00:00:00Z"
        ) from None
    if at.tzinfo is None:
        raise InvalidArgument("expires_at needs a time zone (e.g. 2027-01-31T00:00:00Z)")
    return at


def check_key_name(name: object) -> str:
    """A key's name: 1-64 letters, digits or . _ : @ -, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"malformed API key name {quoted(name)}: use 1-64 letters, digits or . _ : @ -"
        )
    return name


class ApiKeyStore:
    """The issued keys of one node, in its database (``store.api_keys``)."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime] | None = None,
        *,
        read_only_primary: tuple[str, str] | None = None,
    ) -> None:
        """``read_only_primary``: (program, primary) of a read-only process, which lists
        keys and authenticates with them but refuses to change them."""
        self._engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))
        self._read_only = read_only_primary

    def changed_since(self, version: int) -> tuple[int, list[ApiKey]] | None:
        """``auth.IssuedKeys``: one cheap read while nothing changed."""
        with self._engine.connect() as conn:
            current = store.current_version(conn)
            if current == version:
                return None
            return current, [_api_key(row) for row in store.all_keys(conn)]

    def issued(self) -> list[ApiKey]:
        """Every issued key, revoked and expired ones included, by name."""
        with self._engine.connect() as conn:
            return [_api_key(row) for row in store.all_keys(conn)]

    def _writable(self) -> None:
        if self._read_only is not None:
            raise read_only_refusal(*self._read_only)

    def issue(
        self,
        name: str,
        role: Role | str,
        member_id: str | None = None,
        expires_at: datetime | None = None,
        *,
        file_keys: Sequence[ApiKey] = (),
    ) -> IssuedKey:
        """A new key (see the module's contract); InvalidArgument for a bad field,
        FailedPrecondition when ``name`` is taken (here or by ``file_keys``)."""
        self._writable()
        check_key_name(name)
        try:
            role = Role(role)
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise InvalidArgument(f"unknown role {quoted(role)}: use one of {roles}") from None
        if role is Role.MEMBER:
            if member_id is None:
                raise InvalidArgument("a member key needs the member_id it acts for")
            validate_member_id(member_id)
        elif member_id is not None:
            raise InvalidArgument(f"only member keys name a member_id, not {role} keys")
        now = self._clock()
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidArgument("expires_at needs a time zone (e.g. 2027-01-31T00:00:00Z)")
            if expires_at <= now:
                raise InvalidArgument(f"expires_at {expires_at.isoformat()} is not in the future")
        if any(key.name == name for key in file_keys):
            raise FailedPrecondition(f"API key name {name!r} is taken by the keys file")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = store.StoredKey(
            name,
            key_digest(secret),
            role.value,
            member_id,
            _micros(now),
            None if expires_at is None else _micros(expires_at),
            None,
        )
        with self._engine.begin() as conn:
            store.bump_version(conn)
            if not store.insert_key(conn, row):
                raise FailedPrecondition(
                    f"API key name {name!r} is taken: pick another, or revoke and reissue"
                )
        return IssuedKey(_api_key(row), secret)

    def revoke(self, name: str, *, file_keys: Sequence[ApiKey] = ()) -> ApiKey:
        """Revoke issued key ``name`` now and return it (see the module's contract):
        NotFound for no such key, FailedPrecondition for a key of the keys file, one
        already revoked, or the last usable operator key."""
        self._writable()
        check_key_name(name)
        if any(key.name == name for key in file_keys):
            raise FailedPrecondition(
                f"API key {name!r} comes from the node's keys file: remove it there and "
                "send the node SIGHUP (coalition run reloads the file)"
            )
        now = self._clock()
        with self._engine.begin() as conn:
            store.bump_version(conn)  # first: locks the key set for the check below
            keys = {row.name: _api_key(row) for row in store.all_keys(conn)}
            key = keys.get(name)
            if key is None:
                raise NotFound(f"no API key named {name!r}")
            if key.revoked_at is not None:
                raise FailedPrecondition(
                    f"API key {name!r} was already revoked at {key.revoked_at.isoformat()}"
                )
            if key.role is Role.OPERATOR and key.usable(now):
                _refuse_last_operator(name, [*file_keys, *keys.values()], now)
            store.mark_revoked(conn, name, _micros(now))
        return ApiKey(
            key.name,
            key.digest,
            key.role,
            key.member_id,
            expires_at=key.expires_at,
            revoked_at=now,
            issued=True,
            created_at=key.created_at,
        )


def _refuse_last_operator(name: str, keys: Sequence[ApiKey], now: datetime) -> None:
    others = [k for k in keys if k.role is Role.OPERATOR and k.name != name and k.usable(now)]
    if not others:
        raise FailedPrecondition(
            f"API key {name!r} is the last usable operator key: issue another operator "
            "key first, then revoke this one"
        )
