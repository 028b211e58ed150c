"""Whose idempotency keys are whose: one namespace per caller (issue 11, class 5).

An idempotency key means something only to the caller that chose it, so every write
records its key in the caller's *scope*, and a key never collides with, replays or
reveals another scope's key of the same text:

- **operator scope**: every operator key of the program shares one scope. The brand's
  systems are one integration that may hold several keys (one per service, a rotated
  key beside the old one), and a request retried through another of its keys MUST
  replay, not write twice. Operator keys are stored as given, so every key recorded
  before scopes existed (almost all written by operators) keeps replaying and refusing
  exactly as before, with no migration.
- **member scope**: every key of one member id (``Principal.member_id``) shares one
  scope, the member's. It is stored as ``@`` and the SHA-256 of the member id and the
  key: ``@`` is never in a key (``points.accounts.validate_reference``), so no stored
  member key equals an operator key, and the member id is not written in clear.

A member write whose key is new in its scope also looks up the key as stored before
scopes existed (``legacy``): when that row holds the same request, it is a retry of a
request sent before the upgrade and replays; otherwise it belongs to someone else and is
ignored (it neither refuses nor answers anything). The request of every member write
names the member itself, so a same-request match can only be the member's own request
(or the operator's identical one for that member).

Auditors write nothing; partner messages are idempotent by their own ids (conversion,
hold), not by keys; cross-brand redemptions and bulk earn are operator-only, so their
keys are in the operator scope.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from coalition.node.auth import Principal, Role


@dataclass(frozen=True, slots=True)
class KeyScope:
    """The namespace of one caller's idempotency keys: ``OPERATOR``, or
    ``KeyScope(member_id)`` for one member's.

    Transports MUST pass every write the scope of the caller that sent it
    (``KeyScope.of``); a service called without one writes in the operator scope (the
    demo, the tests, code of the node itself)."""

    member_id: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> KeyScope:
        """The scope of an authenticated caller: a member key's member, else the operator."""
        if principal.role is Role.MEMBER:
            assert principal.member_id  # node.auth refuses a member key without one
            return cls(principal.member_id)
        return OPERATOR

    def stored(self, key: str) -> str:
        """How ``key`` (already validated) is recorded in this scope: at most 128
        characters, like the key itself."""
        if self.member_id is None:
            return key
        digest = hashlib.sha256(f"member\x00{self.member_id}\x00{key}".encode()).hexdigest()
        return "@" + digest

    def legacy(self, key: str) -> str | None:
        """Where a key of this scope may have been recorded before scopes existed, when
        that differs from ``stored``: the bare key, for a member scope."""
        return None if self.member_id is None else key


OPERATOR = KeyScope()
"""The scope every operator key of the program shares."""
