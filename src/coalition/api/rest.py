"""The member and operator HTTP API: a thin FastAPI transport over ``NodeService``.

Every route authenticates the ``Authorization: Bearer <key>`` header, authorizes one
``Action`` (the member id comes from the path), converts wire models to service calls and
back, and lets ``CoalitionError`` reach one exception handler that maps it once through
``coalition.api.errors.http_status``. No points rule lives here.

Signed objects (entries, headers, proof documents) are passed through exactly as the
service returns them, so a client that re-canonicalizes them (RFC 8785) gets the bytes
that were signed. Request integers are strict JSON integers (never floats or strings) and
bounded to the I-JSON safe range (RFC 7493 §2.2); the service makes the real checks.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from coalition.api.errors import http_status
from coalition.errors import CoalitionError, InvalidArgument, NotFound
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import MAX_SAFE_INTEGER
from coalition.node.auth import Action, Authenticator, Principal
from coalition.node.service import NodeService
from coalition.node.views import BulkResult, EntryView, PurchaseRow, WriteResult

if TYPE_CHECKING:
    from coalition.runtime.wiring import CoalitionNode

MAX_BULK_ROWS = 10_000
"""Most purchase rows one ``POST /v1/earn/bulk`` request may carry."""

Points = Annotated[StrictInt, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
Signed = dict[str, Any]
"""A signed JSON object (entry, header, proof document), passed through untouched."""

_TAGS = [
    {"name": "members", "description": "Enrollment and one member's points."},
    {"name": "operations", "description": "Batch jobs an operator runs for the program."},
    {"name": "ledger", "description": "Signed headers, blocks, entries and proofs (auditors)."},
    {"name": "health", "description": "Liveness, without authentication."},
]


# ---------------------------------------------------------------- wire models (requests)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Write(_Request):
    idempotency_key: str | None = Field(
        None, description="Or send the `Idempotency-Key` header (1-128 of A-Za-z0-9._:/#-)."
    )


class EnrollIn(_Write):
    member_id: str


class PurchaseIn(_Write):
    reference: str
    spend_minor: Points = Field(description="Amount spent, in minor units of the currency.")
    category: str = ""


class RewardIn(_Write):
    event: str
    reference: str


class ReversalIn(_Write):
    reference: str = Field(description="Reference of the purchase being refunded.")


class RedemptionIn(_Write):
    amount: Points
    reference: str


class TransferIn(_Write):
    to_member_id: str
    amount: Points
    note: str


class AdjustmentIn(_Write):
    amount: Points = Field(description="Positive credits, negative debits.")
    operator: str
    note: str


class RevocationIn(_Write):
    earn_entry_id: str
    operator: str
    note: str


class BulkRowIn(_Request):
    member_id: str
    reference: str
    spend_minor: Points
    category: str = ""
    idempotency_key: str


BulkIn = Annotated[list[BulkRowIn], Field(max_length=MAX_BULK_ROWS)]


# --------------------------------------------------------------- wire models (responses)


class WriteOut(BaseModel):
    entry: Signed
    replayed: bool


class RowErrorOut(BaseModel):
    row: int
    idempotency_key: str
    message: str


class BulkOut(BaseModel):
    accepted: int
    replayed: int
    rejected: list[RowErrorOut]


class ExpiryOut(BaseModel):
    entries: int
    points: int


class BalanceOut(BaseModel):
    member_id: str
    account: str
    spendable: int
    pending: int
    held: int
    tier: str
    qualifying: int


class LotOut(BaseModel):
    id: str
    amount: int
    remaining: int
    qualifying: int
    earned_at: str
    available_at: str
    expires_at: str
    ref: str | None
    reversed: bool


class EntryOut(BaseModel):
    entry: Signed
    log_index: int | None = Field(description="Position in the log; null until sealed.")


class BlockOut(BaseModel):
    header: Signed
    entries: list[Signed]


class HealthOut(BaseModel):
    status: str
    program: str
    log_size: int


class ErrorOut(BaseModel):
    error: str
    message: str


# ----------------------------------------------------------------------------- helpers

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def guard(authenticator: Authenticator, action: Action) -> Any:
    """A route dependency: authenticate the caller and authorize ``action`` (on the path's
    member, when the route has one). Every REST router of the node uses this one."""

    def dependency(request: Request, _: BearerDoc) -> Principal:
        principal = authenticator.authenticate(request.headers.get("authorization"))
        authenticator.authorize(principal, action, request.path_params.get("member_id"))
        return principal

    return Depends(dependency)


"""Declares the scheme in OpenAPI; the raw header goes to ``Authenticator`` unchanged."""
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409)
}
_WRITE: dict[str, Any] = {
    "status_code": 201,
    "response_model": WriteOut,
    "responses": {200: {"description": "Replay of an earlier request", "model": WriteOut}}
    | _ERRORS,
}


def _kind(error: CoalitionError) -> str:
    """``InsufficientPoints`` -> ``insufficient_points``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def _idempotency_key(body: _Write, header: str | None) -> str:
    """The key from the body or the ``Idempotency-Key`` header; both must agree if both given."""
    if body.idempotency_key is not None and header is not None and body.idempotency_key != header:
        raise InvalidArgument("the Idempotency-Key header and the body's idempotency_key differ")
    key = body.idempotency_key if body.idempotency_key is not None else header
    if key is None:
        raise InvalidArgument("missing idempotency key: send idempotency_key or Idempotency-Key")
    return key


def _written(result: WriteResult, response: Response) -> WriteOut:
    response.status_code = 200 if result.replayed else 201
    return WriteOut(entry=result.entry, replayed=result.replayed)


def _entry_out(view: EntryView) -> EntryOut:
    return EntryOut(entry=view.entry, log_index=view.log_index)


def _header_doc(header: SignedHeader) -> Signed:
    """A signed header as its JSON document: ``{"header": {...}, "signature": "..."}``."""
    return dict(header.to_json())


# --------------------------------------------------------------------------------- app

IdempotencyHeader = Annotated[str | None, Header(alias="Idempotency-Key")]
QueryInt = Annotated[int, Query(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
"""A query integer within the I-JSON range; the service checks its real range."""
MemberId = Annotated[str, Path(description="The member's id in this program.")]


def create_app(
    service: NodeService,
    authenticator: Authenticator,
    routers: Sequence[APIRouter] = (),
    coalition: CoalitionNode | None = None,
) -> FastAPI:
    """The node's REST app; every route but ``/healthz`` and the explorer's static files
    needs an API key. ``routers`` adds more routes (the coalition features',
    ``CoalitionNode.routers``); their ``CoalitionError``s go through the same handler.
    ``coalition`` lets the explorer name the node's partners and witness quorum."""
    app = FastAPI(
        title=f"Coalition node {service.program}",
        description="Member and operator API of one Coalition loyalty program node.",
        version="1",
        openapi_tags=_TAGS,
    )

    @app.exception_handler(CoalitionError)
    def _coalition_error(_: Request, exc: CoalitionError) -> JSONResponse:
        status = http_status(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        body = {"error": _kind(exc), "message": str(exc)}
        return JSONResponse(body, status_code=status, headers=headers)

    operate = [guard(authenticator, Action.OPERATE)]
    spend = [guard(authenticator, Action.MEMBER_SPEND)]
    read = [guard(authenticator, Action.MEMBER_READ)]
    ledger = [guard(authenticator, Action.LEDGER_READ)]

    # ------------------------------------------------------------------------ writes

    @app.post(
        "/v1/members", tags=["members"], summary="Enroll a member", dependencies=operate, **_WRITE
    )
    def enroll(body: EnrollIn, response: Response, key: IdempotencyHeader = None) -> WriteOut:
        result = service.enroll(body.member_id, idempotency_key=_idempotency_key(body, key))
        return _written(result, response)

    @app.post(
        "/v1/members/{member_id}/earn",
        tags=["members"],
        summary="Earn points for a purchase",
        dependencies=operate,
        **_WRITE,
    )
    def earn(
        member_id: MemberId, body: PurchaseIn, response: Response, key: IdempotencyHeader = None
    ) -> WriteOut:
        result = service.earn_purchase(
            member_id,
            body.reference,
            body.spend_minor,
            body.category,
            idempotency_key=_idempotency_key(body, key),
        )
        return _written(result, response)

    @app.post(
        "/v1/members/{member_id}/rewards",
        tags=["members"],
        summary="Earn fixed points for an event",
        dependencies=operate,
        **_WRITE,
    )
    def reward(
        member_id: MemberId, body: RewardIn, response: Response, key: IdempotencyHeader = None
    ) -> WriteOut:
        result = service.earn_reward(
            member_id, body.event, body.reference, idempotency_key=_idempotency_key(body, key)
        )
        return _written(result, response)

    @app.post(
        "/v1/members/{member_id}/reversals",
        tags=["members"],
        summary="Reverse the points of a refunded purchase",
        dependencies=operate,
        **_WRITE,
    )
    def reverse(
        member_id: MemberId, body: ReversalIn, response: Response, key: IdempotencyHeader = None
    ) -> WriteOut:
        result = service.reverse_purchase(
            member_id, body.reference, idempotency_key=_idempotency_key(body, key)
        )
        return _written(result, response)

    @app.post(
        "/v1/members/{member_id}/redemptions",
        tags=["members"],
        summary="Redeem spendable points",
        dependencies=spend,
        **_WRITE,
    )
    def redeem(
        member_id: MemberId, body: RedemptionIn, response: Response, key: IdempotencyHeader = None
    ) -> WriteOut:
        result = service.redeem(
            member_id, body.amount, body.reference, idempotency_key=_idempotency_key(body, key)
        )
        return _written(result, response)

    @app.post(
        "/v1/members/{member_id}/transfers",
        tags=["members"],
        summary="Transfer points to another member",
        dependencies=spend,
        **_WRITE,
    )
    def transfer(
        member_id: MemberId, body: TransferIn, response: Response, key: IdempotencyHeader = None
    ) -> WriteOut:
        result = service.transfer(
            member_id,
            body.to_member_id,
            body.amount,
            body.note,
            idempotency_key=_idempotency_key(body, key),
        )
        return _written(result, response)

    @app.post(
        "/v1/members/{member_id}/adjustments",
        tags=["members"],
        summary="Credit or debit points by hand (operator)",
        dependencies=operate,
        **_WRITE,
    )
    def adjust(
        member_id: MemberId, body: AdjustmentIn, response: Response, key: IdempotencyHeader = None
    ) -> WriteOut:
        result = service.adjust(
            member_id,
            body.amount,
            body.operator,
            body.note,
            idempotency_key=_idempotency_key(body, key),
        )
        return _written(result, response)

    @app.post(
        "/v1/members/{member_id}/revocations",
        tags=["members"],
        summary="Revoke the points of one earn entry (operator)",
        dependencies=operate,
        **_WRITE,
    )
    def revoke(
        member_id: MemberId, body: RevocationIn, response: Response, key: IdempotencyHeader = None
    ) -> WriteOut:
        result = service.revoke(
            member_id,
            body.earn_entry_id,
            body.operator,
            body.note,
            idempotency_key=_idempotency_key(body, key),
        )
        return _written(result, response)

    @app.post(
        "/v1/earn/bulk",
        tags=["operations"],
        summary=f"Earn points for up to {MAX_BULK_ROWS} purchases",
        dependencies=operate,
        responses=_ERRORS,
    )
    def earn_bulk(rows: BulkIn) -> BulkOut:
        result: BulkResult = service.earn_bulk(
            PurchaseRow(r.member_id, r.reference, r.spend_minor, r.category, r.idempotency_key)
            for r in rows
        )
        rejected = [
            RowErrorOut(row=e.row, idempotency_key=e.idempotency_key, message=e.message)
            for e in result.rejected
        ]
        return BulkOut(accepted=result.accepted, replayed=result.replayed, rejected=rejected)

    @app.post(
        "/v1/jobs/expiry",
        tags=["operations"],
        summary="Expire every lot whose time has come",
        dependencies=operate,
        responses=_ERRORS,
    )
    def run_expiry() -> ExpiryOut:
        result = service.run_expiry()
        return ExpiryOut(entries=result.entries, points=result.points)

    # ------------------------------------------------------------------ member reads

    @app.get(
        "/v1/members/{member_id}/balance",
        tags=["members"],
        summary="A member's balance and tier",
        dependencies=read,
        responses=_ERRORS,
    )
    def balance(member_id: MemberId) -> BalanceOut:
        return BalanceOut(**asdict(service.balance(member_id)))

    @app.get(
        "/v1/members/{member_id}/lots",
        tags=["members"],
        summary="A member's lots of points",
        dependencies=read,
        responses=_ERRORS,
    )
    def lots(member_id: MemberId) -> list[LotOut]:
        return [LotOut(**asdict(lot)) for lot in service.lots(member_id)]

    @app.get(
        "/v1/members/{member_id}/history",
        tags=["members"],
        summary="A member's entries, newest first",
        dependencies=read,
        responses=_ERRORS,
    )
    def history(member_id: MemberId, limit: QueryInt = 100) -> list[EntryOut]:
        return [_entry_out(view) for view in service.history(member_id, limit)]

    # ------------------------------------------------------------------ ledger reads

    @app.get(
        "/v1/ledger/public-key",
        tags=["ledger"],
        summary="The program's Ed25519 public key (PEM)",
        dependencies=ledger,
        response_class=PlainTextResponse,
        responses=_ERRORS,
    )
    def public_key() -> str:
        return service.public_key.to_pem().decode("ascii")

    @app.get(
        "/v1/ledger/headers/latest",
        tags=["ledger"],
        summary="The latest signed block header",
        dependencies=ledger,
        responses=_ERRORS,
    )
    def latest_header() -> Signed:
        header = service.latest_header()
        if header is None:
            raise NotFound("no block has been sealed yet")
        return _header_doc(header)

    @app.get(
        "/v1/ledger/headers",
        tags=["ledger"],
        summary="Signed block headers from a height",
        dependencies=ledger,
        responses=_ERRORS,
    )
    def headers(
        start: QueryInt = 0,
        limit: QueryInt = 1000,
    ) -> list[Signed]:
        return [_header_doc(h) for h in service.headers(start, limit)]

    @app.get(
        "/v1/ledger/blocks/{height}",
        tags=["ledger"],
        summary="One block: its signed header and its entries",
        dependencies=ledger,
        responses=_ERRORS,
    )
    def block(height: Annotated[int, Path(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]) -> BlockOut:
        header, entries = service.block(height)
        return BlockOut(header=_header_doc(header), entries=entries)

    @app.get(
        "/v1/ledger/entries/{entry_id}",
        tags=["ledger"],
        summary="One entry and its log index",
        dependencies=ledger,
        responses=_ERRORS,
    )
    def entry(entry_id: str) -> EntryOut:
        return _entry_out(service.entry(entry_id))

    @app.get(
        "/v1/ledger/entries/{entry_id}/proof",
        tags=["ledger"],
        summary="Inclusion proof document of one entry",
        dependencies=ledger,
        responses=_ERRORS,
    )
    def inclusion_proof(
        entry_id: str,
        tree_size: QueryInt | None = None,
    ) -> Signed:
        return service.inclusion_proof(entry_id, tree_size)

    @app.get(
        "/v1/ledger/consistency",
        tags=["ledger"],
        summary="Consistency proof document between two block heights",
        dependencies=ledger,
        responses=_ERRORS,
    )
    def consistency(
        first: QueryInt,
        second: QueryInt,
    ) -> Signed:
        return service.consistency_proof(first, second)

    # ------------------------------------------------------------------------ health

    @app.get("/healthz", tags=["health"], summary="Liveness and log size")
    def healthz() -> HealthOut:
        header = service.latest_header()
        return HealthOut(status="ok", program=service.program, log_size=_log_size(header))

    from coalition.api.bundle_api import bundle_router  # imports guard from here

    app.include_router(bundle_router(service, authenticator))
    for router in routers:
        app.include_router(router)
    from coalition.api.explorer_api import explorer_router  # imports guard from here

    app.include_router(explorer_router(service, authenticator, coalition))
    return app


def _log_size(header: SignedHeader | None) -> int:
    return 0 if header is None else header.header.log_size


def serve_http(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0
) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Run ``app`` under uvicorn in a daemon thread and return once it accepts connections.

    ``port=0`` binds a free port; the bound port is returned. Stop with
    ``server.should_exit = True`` then ``thread.join()``.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"http:{bound}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the HTTP server on {host}:{bound} did not start")
        time.sleep(0.01)
    return server, thread, bound
