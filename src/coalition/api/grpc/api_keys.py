# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""``coalition.v1.ApiKeys``: operators issue, list and revoke API keys, the twin of the
REST routes ``/v1/operator/keys`` (``api.http.api_keys``); the rules are ``node.api_keys``'s."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc

from coalition.api.grpc.kit import ApiKeyAuthorizer, Servicer, guarded
from coalition.node.api_keys import ApiKeyStore, parse_expiry
from coalition.node.auth import Action, ApiKey, Authenticator
from coalition.v1 import keys_pb2, keys_pb2_grpc

KEYS_SERVICE = keys_pb2.DESCRIPTOR.services_by_name["ApiKeys"].full_name


def _time(at: datetime | None) -> str:
    return "" if at is None else at.isoformat()


def key_info(key: ApiKey, now: datetime) -> keys_pb2.KeyInfo:
    return keys_pb2.KeyInfo(
        name=key.name,
        role=key.role.value,
        member_id=key.member_id or "",
        source="database" if key.issued else "file",
        created_at=_time(key.created_at),
        expires_at=_time(key.expires_at),
        revoked_at=_time(key.revoked_at),
        usable=key.usable(now),
    )


class ApiKeysServicer(Servicer, keys_pb2_grpc.ApiKeysServicer):
    """``coalition.v1.ApiKeys`` over the node's issued keys; operators only."""

    def __init__(
        self, keys: ApiKeyStore, authenticator: Authenticator, now: Callable[[], datetime]
    ) -> None:
        super().__init__(ApiKeyAuthorizer(authenticator))
        self._keys = keys
        self._authenticator = authenticator
        self._now = now

    @guarded
    def IssueKey(
        self, request: keys_pb2.IssueKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.IssuedKey:
        self.allow(context, Action.MANAGE_KEYS)
        issued = self._keys.issue(
            request.name,
            request.role,
            request.member_id or None,
            parse_expiry(request.expires_at) if request.expires_at else None,
            file_keys=self._authenticator.file_keys(),
        )
        return keys_pb2.IssuedKey(key=key_info(issued.key, self._now()), secret=issued.secret)

    @guarded
    def ListKeys(
        self, request: keys_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> keys_pb2.KeyList:
        self.allow(context, Action.MANAGE_KEYS)
        now = self._now()
        keys = [*self._authenticator.file_keys(), *self._keys.issued()]
        return keys_pb2.KeyList(keys=[key_info(key, now) for key in keys])

    @guarded
    def RevokeKey(
        self, request: keys_pb2.RevokeKeyRequest, context: grpc.ServicerContext
    ) -> keys_pb2.KeyInfo:
        self.allow(context, Action.MANAGE_KEYS)
        revoked = self._keys.revoke(request.name, file_keys=self._authenticator.file_keys())
        return key_info(revoked, self._now())


def add_keys_servicer(
    server: grpc.Server,
    keys: ApiKeyStore,
    authenticator: Authenticator,
    now: Callable[[], datetime],
) -> None:
    """Register ``coalition.v1.ApiKeys`` on the member/operator gRPC server."""
    keys_pb2_grpc.add_ApiKeysServicer_to_server(ApiKeysServicer(keys, authenticator, now), server)
