"""The node's HTTP app: ``create_app`` puts the route groups together behind one error
handler.

Every route authenticates the ``Authorization: Bearer <key>`` header and authorizes one
``Action`` (``deps.guard``); a request with a body passes ``body.BodyGate`` first (the
key checked before the body is read, the size limit, the one JSON parser). A
``CoalitionError`` raised anywhere reaches one handler, which maps it once through
``coalition.api.errors.http_status``; a body that does not fit the operation's schema
(422) and an unknown route or method get the same ``ErrorOut`` body. Every answer carries
``headers.DEFAULT_HEADERS`` (``Cache-Control: no-store``, CSP, nosniff, frame denial).

Swagger UI and ReDoc are off: FastAPI would load them from a CDN (see docs/design-notes.md,
"Input handling"); the OpenAPI document is served at ``/openapi.json``. No points rule
lives in this package: each route converts wire models to one call of a node service and
back.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from coalition.api.errors import MAX_MESSAGE_CHARS
from coalition.api.http.api_keys import keys_router
from coalition.api.http.body import MAX_BODY_BYTES, BodyGate
from coalition.api.http.bundle import bundle_router
from coalition.api.http.deps import error_response
from coalition.api.http.explorer import Membership, explorer_router
from coalition.api.http.headers import DefaultHeaders
from coalition.api.http.health import health_router
from coalition.api.http.ledger import ledger_router
from coalition.api.http.points import points_router
from coalition.errors import CoalitionError
from coalition.node.auth import Authenticator
from coalition.node.service import NodeService

_TAGS = [
    {"name": "members", "description": "Enrollment and one member's points."},
    {"name": "operations", "description": "Batch jobs an operator runs for the program."},
    {"name": "ledger", "description": "Signed headers, blocks, entries and proofs (auditors)."},
    {"name": "health", "description": "Liveness, without authentication."},
    {"name": "operator", "description": "API keys: issue, list, revoke (operators)."},
]


def _coalition_error(_: Request, exc: CoalitionError) -> JSONResponse:
    return error_response(exc)


def _schema_error(_: Request, exc: Exception) -> JSONResponse:
    """422 in the ``ErrorOut`` shape: where and what, never the refused input itself."""
    assert isinstance(exc, RequestValidationError)
    problems = [
        ".".join(str(part) for part in error.get("loc", ())) + ": " + str(error.get("msg", ""))
        for error in exc.errors()[:5]
    ]
    more = len(exc.errors()) - len(problems)
    message = "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
    return JSONResponse(
        {"error": "invalid_argument", "message": message[:MAX_MESSAGE_CHARS]}, status_code=422
    )


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such route, method not allowed) in the same shape."""
    assert isinstance(exc, HTTPException)
    kind = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse(
        {"error": kind, "message": str(exc.detail)[:MAX_MESSAGE_CHARS]},
        status_code=exc.status_code,
        headers=exc.headers,
    )


_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})


def _integer_bounds(node: Any) -> Any:
    """``node`` (the OpenAPI document, changed in place) with every integral bound an
    integer: FastAPI's document model holds bounds as floats (``9007199254740991.0``), which
    tells a generated client an integer field takes floats; the node refuses them."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _BOUNDS and isinstance(value, float) and value.is_integer():
                node[key] = int(value)
            else:
                _integer_bounds(value)
    elif isinstance(node, list):
        for item in node:
            _integer_bounds(item)
    return node


def create_app(
    service: NodeService,
    authenticator: Authenticator,
    routers: Sequence[APIRouter] = (),
    coalition: Membership | None = None,
) -> FastAPI:
    """The node's HTTP app; every route but ``/healthz`` and the explorer's static files
    needs an API key. ``routers`` adds the coalition features' route groups (the wiring
    builds them); their ``CoalitionError``s go through the same handler. ``coalition``
    lets the explorer name the node's partners and witness quorum."""
    app = FastAPI(
        title=f"Coalition node {service.program}",
        description=(
            "Member and operator API of one Coalition loyalty program node. Every route "
            "but `/healthz` takes `Authorization: Bearer <key>`, checked before a body is "
            f"read; a request body is at most {MAX_BODY_BYTES:,} bytes (413 past it); JSON "
            "bodies with duplicate keys, NaN, Infinity, floats or integers beyond 2^53 - 1 "
            "are refused with 400. Every refusal has the `ErrorOut` body."
        ),
        version="1",
        openapi_tags=_TAGS,
        docs_url=None,
        redoc_url=None,
    )
    generate = app.openapi
    app.openapi = lambda: _integer_bounds(generate())  # type: ignore[method-assign]
    app.exception_handler(CoalitionError)(_coalition_error)
    app.exception_handler(RequestValidationError)(_schema_error)
    app.exception_handler(HTTPException)(_http_error)
    app.add_middleware(BodyGate, authenticator=authenticator)  # inner: runs second
    app.add_middleware(DefaultHeaders)  # outer: the gate's refusals get the headers too
    app.include_router(points_router(service.points, authenticator))
    app.include_router(ledger_router(service.ledger, authenticator))
    app.include_router(health_router(service))
    app.include_router(bundle_router(service, authenticator))
    app.include_router(keys_router(service.api_keys, authenticator, service.now))
    for router in routers:
        app.include_router(router)
    app.include_router(explorer_router(service, authenticator, coalition))
    return app
