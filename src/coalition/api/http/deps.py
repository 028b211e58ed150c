"""What every HTTP route module shares: the auth guard, idempotency keys, the error body
and the request/response bases.

Request integers are strict JSON integers (never floats or strings) bounded to the
I-JSON safe range (RFC 7493 §2.2); the services make the real range checks. Signed
objects (entries, headers, proof documents) are passed through untouched, so a client
that re-canonicalizes them (RFC 8785) gets the bytes that were signed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from coalition.api.errors import http_headers, http_status, refusal_message
from coalition.api.http.fields import IdempotencyKeyField
from coalition.errors import CoalitionError, InvalidArgument
from coalition.ledger.canonical import MAX_SAFE_INTEGER
from coalition.node.auth import Action, Authenticator, Principal
from coalition.node.idempotency import KeyScope

Points = Annotated[StrictInt, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
Signed = dict[str, Any]
"""A signed JSON object (entry, header, proof document), passed through untouched."""
QueryInt = Annotated[int, Query(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
"""A query integer within the I-JSON range; the service checks its real range."""


class RequestBody(BaseModel):
    """Base of every request body: an unknown field is refused, never ignored."""

    model_config = ConfigDict(extra="forbid")


class WriteBody(RequestBody):
    """Base of a request that writes: it carries an idempotency key (or its header does)."""

    idempotency_key: IdempotencyKeyField = None


def error_body(error: CoalitionError) -> dict[str, str]:
    """The JSON body of a refusal (``responses.ErrorOut``): ``InsufficientPoints("...")`` ->
    ``{"error": "insufficient_points", "message": "..."}``, the message cut to
    ``api.errors.MAX_MESSAGE_CHARS``."""
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()
    return {"error": kind, "message": refusal_message(error)}


def error_response(error: CoalitionError) -> JSONResponse:
    """The one HTTP answer to a core error: its status (``api.errors.http_status``), the
    ``ErrorOut`` body, and the status's headers (``api.errors.http_headers``)."""
    return JSONResponse(
        error_body(error), status_code=http_status(error), headers=http_headers(error) or None
    )


def idempotency_key(body: WriteBody, header: str | None) -> str:
    """The key from the body or the ``Idempotency-Key`` header; both must agree if both given."""
    if body.idempotency_key is not None and header is not None and body.idempotency_key != header:
        raise InvalidArgument("the Idempotency-Key header and the body's idempotency_key differ")
    key = body.idempotency_key if body.idempotency_key is not None else header
    if key is None:
        raise InvalidArgument("missing idempotency key: send idempotency_key or Idempotency-Key")
    return key


def link_next(request: Request, response: Response, **query: object) -> None:
    """Set ``Link: <...>; rel="next"`` (RFC 8288, as GitHub's API pages) to this route
    with ``query`` replacing those parameters: how a paged list route names its next
    page while its body stays the list it always was. A None value sets no header."""
    if any(value is None for value in query.values()):
        return
    params = dict(request.query_params) | {k: str(v) for k, v in query.items()}
    url = request.url.replace_query_params(**params)
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
"""Declares the scheme in OpenAPI; the raw header goes to ``Authenticator`` unchanged."""


def guard(authenticator: Authenticator, action: Action) -> Any:
    """A route dependency: authenticate the caller and authorize ``action`` (on the path's
    member, when the route has one). Every HTTP route but the health check and the
    explorer's static files uses this one."""

    async def dependency(request: Request, _: BearerDoc) -> Principal:
        member_id = request.path_params.get("member_id")
        caller = authenticator.check(request.headers.get("authorization"), action, member_id)
        request.state.caller = caller
        return caller

    return Depends(dependency)


def key_scope(request: Request) -> KeyScope:
    """The idempotency scope of the caller ``guard`` let through (``node.idempotency``):
    every write route MUST pass it to the service with the key."""
    return KeyScope.of(request.state.caller)


CallerScope = Annotated[KeyScope, Depends(key_scope)]
"""A write route's parameter: the caller's idempotency scope (``key_scope``)."""
