"""The refusals every HTTP route documents in OpenAPI, from one table.

A route group passes one of the presets below as its router's ``responses`` (``READ`` for
an authenticated GET, ``WRITE`` for an authenticated POST, PUT, PATCH or DELETE, which
``body.BodyGate`` reads first, ``PUBLIC`` for a route without a key), so the document
says each status the code can answer, and the schemathesis test
(tests/integration/test_openapi_contract.py) fails on any status, content type or body
the document does not name. Every refusal has the ``ErrorOut`` body
(``deps.error_response``, the 422/404/405 handlers of ``app``); the statuses themselves
come from ``coalition.api.errors`` (one table, core error -> status).

A new route group MUST use a preset (or ``refusals``) rather than listing statuses by hand.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from coalition.api.errors import MAX_MESSAGE_CHARS
from coalition.api.http.body import MAX_BODY_BYTES


class ErrorOut(BaseModel):
    """The body of every refusal."""

    error: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$",
        description="The kind of refusal in snake_case, e.g. `insufficient_points`.",
    )
    message: str = Field(
        max_length=MAX_MESSAGE_CHARS,
        description="What is wrong, in words a caller can act on; it quotes at most a short "
        "prefix of a refused value.",
    )


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds after which the same call may succeed (RFC 9110 §10.2.3).",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "`Bearer` (RFC 7235 §3.1).",
        "schema": {"type": "string"},
    }
}

STATUSES: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "Malformed request: a value out of its range or pattern, a missing idempotency key, "
        "or a body that is not strict JSON (duplicate keys, NaN, Infinity, floats, integers "
        "beyond 2^53 - 1).",
        {},
    ),
    401: ("No API key, or a key that is unknown or expired.", _WWW_AUTHENTICATE),
    403: ("The key's role or member does not allow this call.", {}),
    404: ("Nothing by that name: a member, entry, block, conversion, hold ...", {}),
    409: (
        "The current state refuses the request (e.g. insufficient points), or the "
        "idempotency key was used for a different request.",
        {},
    ),
    413: (f"The request body is over {MAX_BODY_BYTES:,} bytes (MAX_BODY_BYTES).", {}),
    422: ("Well-formed JSON that does not fit the operation's schema.", {}),
    429: ("The key is over its rate limit; nothing was done.", _RETRY_AFTER),
    503: (
        "A partner node or the node's storage is unavailable; nothing was lost, retry.",
        {},
    ),
}
"""Each refusal status: its description and the headers it carries."""


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these refusal statuses, each with the ``ErrorOut``
    body, its description and its headers (``STATUSES``)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = STATUSES[status]
        entry: dict[str, Any] = {"model": ErrorOut, "description": description}
        if headers:
            entry["headers"] = headers
        documented[status] = entry
    return documented


def replayed(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 of a write whose idempotency key was used before (its first answer)."""
    return {200: {"description": "Replay of an earlier request", "model": model}}


PAGED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One page of the list",
        "headers": {
            "Link": {
                "description": 'The next page, `<path?query>; rel="next"` (RFC 8288), when '
                "one may exist (``deps.link_next``).",
                "schema": {"type": "string"},
            }
        },
    }
}
"""The 200 of a paged list route."""


PUBLIC = refusals(503)
"""A route without a key (the health check)."""
READ = refusals(400, 401, 403, 404, 409, 422, 429, 503)
"""An authenticated route without a body (409: a read the state refuses, e.g. a quote with
no agreement in force)."""
WRITE = refusals(400, 401, 403, 404, 409, 413, 422, 429, 503)
"""An authenticated POST, PUT, PATCH or DELETE, with a body or not (``body.BodyGate``: 401
before the body, 413, 400 for a body that is not strict JSON)."""
