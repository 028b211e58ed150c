"""The gate in front of every HTTP route that takes a body (POST, PUT, PATCH, DELETE).

In this order, before any route runs, so a refused request reads and writes nothing:

1. the caller is authenticated from the ``Authorization`` header (401 before a byte of
   the body is read; the route's ``guard`` still authorizes the action);
2. the body is read up to ``MAX_BODY_BYTES``: a larger ``Content-Length`` is refused at
   once, a chunked body as soon as it passes the limit (413);
3. a JSON body (``application/json``, ``+json`` or untyped) is parsed by the one parser of
   every transport, ``coalition.ledger.canonical.parse_json``: duplicate keys, NaN,
   Infinity, floats (``1E400`` included) and integers beyond 2**53 - 1 are refused (400).

Every refusal has the documented error body (``deps.error_response``). The route then
reads the same bytes (FastAPI decodes them again: the gate's parse is the rule, and a body
it accepted decodes to the same value).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coalition.api.http.deps import error_response
from coalition.errors import CoalitionError, InvalidArgument, RequestTooLarge
from coalition.ledger.canonical import parse_json
from coalition.node.auth import Authenticator

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body in bytes (8 MiB): room for a bulk earn of ``MAX_BULK_ROWS`` rows
with every field at its longest."""

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _ClientGone(Exception):
    """The client disconnected before its body was complete: nothing to answer."""


def is_json(content_type: str | None) -> bool:
    """Whether FastAPI may decode a body of this type as JSON, so the gate must parse it:
    ``application/json``, ``application/*+json``, or no type at all (FastAPI versions
    without a strict content type decode an untyped body as JSON)."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyGate:
    """ASGI middleware: authentication, then the size limit, then the JSON rule."""

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, max_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self._authenticator = authenticator
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            self._authenticator.authenticate(headers.get("authorization"))
            body = await self._read(headers, receive)
            if body and is_json(headers.get("content-type")):
                parse_json(body)
        except _ClientGone:
            return
        except CoalitionError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, headers: Headers, receive: Receive) -> bytes:
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidArgument("Content-Length is not a number of bytes")
            if int(declared) > self._max:
                raise self._too_large(f"{int(declared):,} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max:
                raise self._too_large("more")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, got: str) -> RequestTooLarge:
        return RequestTooLarge(
            f"request body too large: at most {self._max:,} bytes (MAX_BODY_BYTES), got {got}"
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the body already read, then the client's own messages
    (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
