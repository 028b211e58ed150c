"""Members' points over HTTP: enrollment, earning, spending, operator corrections, the
batch jobs, and one member's balance, lots and history.

The lots and history are paged: each answers the list it always did, at most ``limit``
items, with a ``Link: <...>; rel="next"`` header (RFC 8288) when a next page may exist.

Writes answer 201 with the signed entry, or 200 with the earlier entry when the
idempotency key was used before (``replayed``). Operators write; a member key may spend
and read its own member's points (``node.auth``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from coalition.api.http.deps import (
    CallerScope,
    Points,
    RequestBody,
    Signed,
    WriteBody,
    guard,
    idempotency_key,
    link_next,
)
from coalition.api.http.fields import (
    EntryIdField,
    IdempotencyHeader,
    LogIndexQuery,
    MemberId,
    MemberIdField,
    NoteField,
    PageLimit,
    PositivePoints,
    ReferenceField,
)
from coalition.api.http.ledger import EntryOut, entry_out
from coalition.api.http.responses import PAGED, READ, WRITE, replayed
from coalition.node.auth import Action, Authenticator
from coalition.node.points_service import PointsService
from coalition.node.views import BulkResult, PurchaseRow, WriteResult

MAX_BULK_ROWS = 10_000
"""Most purchase rows one ``POST /v1/earn/bulk`` request may carry."""

# ------------------------------------------------------------------------------ requests


class EnrollIn(WriteBody):
    member_id: MemberIdField


class PurchaseIn(WriteBody):
    reference: ReferenceField
    spend_minor: Points = Field(description="Amount spent, in minor units of the currency.")
    category: str = ""


class RewardIn(WriteBody):
    event: str
    reference: ReferenceField


class ReversalIn(WriteBody):
    reference: ReferenceField = Field(description="Reference of the purchase being refunded.")


class RedemptionIn(WriteBody):
    amount: PositivePoints
    reference: ReferenceField


class TransferIn(WriteBody):
    to_member_id: MemberIdField
    amount: PositivePoints
    note: NoteField


class AdjustmentIn(WriteBody):
    amount: Points = Field(description="Positive credits, negative debits.")
    operator: ReferenceField
    note: NoteField


class RevocationIn(WriteBody):
    earn_entry_id: EntryIdField
    operator: ReferenceField
    note: NoteField


class BulkRowIn(RequestBody):
    member_id: MemberIdField
    reference: ReferenceField
    spend_minor: Points
    category: str = ""
    idempotency_key: ReferenceField


BulkIn = Annotated[list[BulkRowIn], Field(max_length=MAX_BULK_ROWS)]

# ----------------------------------------------------------------------------- responses


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


_WRITE: dict[str, Any] = {
    "status_code": 201,
    "response_model": WriteOut,
    "responses": replayed(WriteOut) | WRITE,
}


def _written(result: WriteResult, response: Response) -> WriteOut:
    response.status_code = 200 if result.replayed else 201
    return WriteOut(entry=result.entry, replayed=result.replayed)


# ------------------------------------------------------------------------------- routers


def points_router(points: PointsService, authenticator: Authenticator) -> APIRouter:
    """Every member route and the operator's batch jobs: the writes (earning, spending,
    the operator's corrections), the jobs, then the reads."""
    router = APIRouter()
    router.include_router(_earning(points, authenticator))
    router.include_router(_spending(points, authenticator))
    router.include_router(_operator_corrections(points, authenticator))
    router.include_router(_batch_jobs(points, authenticator))
    router.include_router(_member_reads(points, authenticator))
    return router


def _earning(points: PointsService, authenticator: Authenticator) -> APIRouter:
    router = APIRouter(tags=["members"], dependencies=[guard(authenticator, Action.OPERATE)])

    @router.post("/v1/members", summary="Enroll a member", **_WRITE)
    def enroll(
        body: EnrollIn, response: Response, scope: CallerScope, key: IdempotencyHeader = None
    ) -> WriteOut:
        result = points.enroll(
            body.member_id, idempotency_key=idempotency_key(body, key), scope=scope
        )
        return _written(result, response)

    @router.post(
        "/v1/members/{member_id}/earn",
        summary="Earn points for a purchase",
        **_WRITE,
    )
    def earn(
        member_id: MemberId,
        body: PurchaseIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> WriteOut:
        result = points.earn_purchase(
            member_id,
            body.reference,
            body.spend_minor,
            body.category,
            idempotency_key=idempotency_key(body, key),
            scope=scope,
        )
        return _written(result, response)

    @router.post(
        "/v1/members/{member_id}/rewards",
        summary="Earn fixed points for an event",
        **_WRITE,
    )
    def reward(
        member_id: MemberId,
        body: RewardIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> WriteOut:
        result = points.earn_reward(
            member_id,
            body.event,
            body.reference,
            idempotency_key=idempotency_key(body, key),
            scope=scope,
        )
        return _written(result, response)

    @router.post(
        "/v1/members/{member_id}/reversals",
        summary="Reverse the points of a refunded purchase",
        **_WRITE,
    )
    def reverse(
        member_id: MemberId,
        body: ReversalIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> WriteOut:
        result = points.reverse_purchase(
            member_id, body.reference, idempotency_key=idempotency_key(body, key), scope=scope
        )
        return _written(result, response)

    return router


def _spending(points: PointsService, authenticator: Authenticator) -> APIRouter:
    router = APIRouter(tags=["members"], dependencies=[guard(authenticator, Action.MEMBER_SPEND)])

    @router.post(
        "/v1/members/{member_id}/redemptions",
        summary="Redeem spendable points",
        **_WRITE,
    )
    def redeem(
        member_id: MemberId,
        body: RedemptionIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> WriteOut:
        result = points.redeem(
            member_id,
            body.amount,
            body.reference,
            idempotency_key=idempotency_key(body, key),
            scope=scope,
        )
        return _written(result, response)

    @router.post(
        "/v1/members/{member_id}/transfers",
        summary="Transfer points to another member",
        **_WRITE,
    )
    def transfer(
        member_id: MemberId,
        body: TransferIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> WriteOut:
        result = points.transfer(
            member_id,
            body.to_member_id,
            body.amount,
            body.note,
            idempotency_key=idempotency_key(body, key),
            scope=scope,
        )
        return _written(result, response)

    return router


def _operator_corrections(points: PointsService, authenticator: Authenticator) -> APIRouter:
    router = APIRouter(tags=["members"], dependencies=[guard(authenticator, Action.OPERATE)])

    @router.post(
        "/v1/members/{member_id}/adjustments",
        summary="Credit or debit points by hand (operator)",
        **_WRITE,
    )
    def adjust(
        member_id: MemberId,
        body: AdjustmentIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> WriteOut:
        result = points.adjust(
            member_id,
            body.amount,
            body.operator,
            body.note,
            idempotency_key=idempotency_key(body, key),
            scope=scope,
        )
        return _written(result, response)

    @router.post(
        "/v1/members/{member_id}/revocations",
        summary="Revoke the points of one earn entry (operator)",
        **_WRITE,
    )
    def revoke(
        member_id: MemberId,
        body: RevocationIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> WriteOut:
        result = points.revoke(
            member_id,
            body.earn_entry_id,
            body.operator,
            body.note,
            idempotency_key=idempotency_key(body, key),
            scope=scope,
        )
        return _written(result, response)

    return router


def _batch_jobs(points: PointsService, authenticator: Authenticator) -> APIRouter:
    router = APIRouter(
        tags=["operations"],
        dependencies=[guard(authenticator, Action.OPERATE)],
        responses=WRITE,
    )

    @router.post("/v1/earn/bulk", summary=f"Earn points for up to {MAX_BULK_ROWS} purchases")
    def earn_bulk(rows: BulkIn) -> BulkOut:
        result: BulkResult = points.earn_bulk(
            PurchaseRow(r.member_id, r.reference, r.spend_minor, r.category, r.idempotency_key)
            for r in rows
        )
        rejected = [
            RowErrorOut(row=e.row, idempotency_key=e.idempotency_key, message=e.message)
            for e in result.rejected
        ]
        return BulkOut(accepted=result.accepted, replayed=result.replayed, rejected=rejected)

    @router.post("/v1/jobs/expiry", summary="Expire every lot whose time has come")
    def run_expiry() -> ExpiryOut:
        result = points.run_expiry()
        return ExpiryOut(entries=result.entries, points=result.points)

    return router


def _member_reads(points: PointsService, authenticator: Authenticator) -> APIRouter:
    router = APIRouter(
        tags=["members"],
        dependencies=[guard(authenticator, Action.MEMBER_READ)],
        responses=READ,
    )

    @router.get("/v1/members/{member_id}/balance", summary="A member's balance and tier")
    def balance(member_id: MemberId) -> BalanceOut:
        return BalanceOut(**asdict(points.balance(member_id)))

    @router.get(
        "/v1/members/{member_id}/lots",
        summary="A member's lots of points, oldest first, a page at a time",
        responses=PAGED,
    )
    def lots(
        member_id: MemberId,
        request: Request,
        response: Response,
        limit: PageLimit = 1000,
        after: Annotated[str | None, Query(max_length=48, description="A lot id.")] = None,
    ) -> list[LotOut]:
        found = points.lots_page(member_id, limit, after)
        link_next(request, response, after=found[-1].id if len(found) == limit else None)
        return [LotOut(**asdict(lot)) for lot in found]

    @router.get(
        "/v1/members/{member_id}/history",
        summary="A member's entries, newest first, a page at a time",
        responses=PAGED,
    )
    def history(
        member_id: MemberId,
        request: Request,
        response: Response,
        limit: PageLimit = 100,
        before: LogIndexQuery | None = None,
    ) -> list[EntryOut]:
        views, older = points.history_page(member_id, limit, before)
        link_next(request, response, before=older)
        return [entry_out(view) for view in views]

    return router
