"""API keys over HTTP, for operators: issue one (its secret is in this answer only),
list them (never a secret or digest) and revoke one. The rules are ``node.api_keys``'s;
every process of the node serves the change within ``node.auth.POLL_INTERVAL_S``.

Issuing is not idempotent by key: the key's ``name`` is unique, so a repeated issue
answers 409 instead of making a second key (and no secret is ever stored to replay)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from coalition.api.http.deps import RequestBody, guard
from coalition.api.http.responses import READ, WRITE
from coalition.node.api_keys import KEY_NAME_PATTERN, ApiKeyStore, parse_expiry
from coalition.node.auth import Action, ApiKey, Authenticator

KeyName = Annotated[
    str,
    Path(
        description="The key's name.",
        pattern=f"^{KEY_NAME_PATTERN}$",
        max_length=64,
    ),
]


class KeyIn(RequestBody):
    name: str = Field(
        description="Unique name, 1-64 of A-Za-z0-9._:@- (starting with a letter or digit).",
        max_length=64,
    )
    role: str = Field(description="member, operator or auditor.", max_length=16)
    member_id: str | None = Field(
        None, description="The member a member key acts for (member keys only).", max_length=64
    )
    expires_at: str | None = Field(
        None,
        description="RFC 3339 time with offset after which the key is refused (401).",
        max_length=40,
    )


class KeyOut(BaseModel):
    name: str
    role: str
    member_id: str | None
    source: str = Field(description="`database` (issued here) or `file` (the keys file).")
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None
    usable: bool = Field(description="Neither revoked nor expired now.")


class IssuedOut(KeyOut):
    secret: str = Field(description="The key itself, shown this once: only its SHA-256 is kept.")


def _time(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def key_out(key: ApiKey, now: datetime) -> KeyOut:
    return KeyOut(
        name=key.name,
        role=key.role.value,
        member_id=key.member_id,
        source="database" if key.issued else "file",
        created_at=_time(key.created_at),
        expires_at=_time(key.expires_at),
        revoked_at=_time(key.revoked_at),
        usable=key.usable(now),
    )


def keys_router(
    keys: ApiKeyStore, authenticator: Authenticator, now: Callable[[], datetime]
) -> APIRouter:
    """``/v1/operator/keys``; operators only."""
    router = APIRouter(
        tags=["operator"],
        dependencies=[guard(authenticator, Action.MANAGE_KEYS)],
    )

    @router.post("/v1/operator/keys", summary="Issue an API key", status_code=201, responses=WRITE)
    def issue(body: KeyIn) -> IssuedOut:
        expires_at = None if body.expires_at is None else parse_expiry(body.expires_at)
        issued = keys.issue(
            body.name,
            body.role,
            body.member_id,
            expires_at,
            file_keys=authenticator.file_keys(),
        )
        view = key_out(issued.key, now())
        return IssuedOut(**view.model_dump(), secret=issued.secret)

    @router.get("/v1/operator/keys", summary="Every API key, without secrets", responses=READ)
    def list_keys() -> list[KeyOut]:
        at = now()
        return [key_out(key, at) for key in [*authenticator.file_keys(), *keys.issued()]]

    @router.post(
        "/v1/operator/keys/{name}/revoke", summary="Revoke an issued API key", responses=WRITE
    )
    def revoke(name: KeyName) -> KeyOut:
        return key_out(keys.revoke(name, file_keys=authenticator.file_keys()), now())

    return router
