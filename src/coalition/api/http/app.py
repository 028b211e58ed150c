"""The node's HTTP app: ``create_app`` puts the route groups together behind one error
handler.

Every route authenticates the ``Authorization: Bearer <key>`` header and authorizes one
``Action`` (``deps.guard``); a ``CoalitionError`` raised anywhere reaches one handler,
which maps it once through ``coalition.api.errors.http_status``. No points rule lives
in this package: each route converts wire models to one call of a node service and back.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from coalition.api.errors import http_status
from coalition.api.http.bundle import bundle_router
from coalition.api.http.deps import error_body
from coalition.api.http.explorer import Membership, explorer_router
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
]


def _coalition_error(_: Request, exc: CoalitionError) -> JSONResponse:
    status = http_status(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


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
        description="Member and operator API of one Coalition loyalty program node.",
        version="1",
        openapi_tags=_TAGS,
    )
    app.exception_handler(CoalitionError)(_coalition_error)
    app.include_router(points_router(service.points, authenticator))
    app.include_router(ledger_router(service.ledger, authenticator))
    app.include_router(health_router(service))
    app.include_router(bundle_router(service, authenticator))
    for router in routers:
        app.include_router(router)
    app.include_router(explorer_router(service, authenticator, coalition))
    return app
