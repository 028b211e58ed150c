"""Member conversions over HTTP: convert, quote, and one conversion's status.

Converting is ``member-spend`` on the path's member; reading a conversion or a quote is
``member-read``. A conversion answers at once with its pending state (201); it completes
or is refunded when the partner answers (``node.features.conversions``). A repeated
convert with the same idempotency key answers 200 with ``replayed: true`` and the first
conversion as it stands now, as the points writes do.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from coalition.api.http.deps import (
    CallerScope,
    WriteBody,
    guard,
    idempotency_key,
)
from coalition.api.http.fields import (
    ConversionId,
    IdempotencyHeader,
    MemberId,
    MemberIdField,
    PositivePoints,
    PositiveQuery,
    ProgramField,
    ProgramQuery,
)
from coalition.api.http.responses import READ, WRITE, replayed
from coalition.node.auth import Action, Authenticator
from coalition.node.features.conversions import Conversions, ConversionView


class ConversionIn(WriteBody):
    to_program: ProgramField
    to_member_id: MemberIdField = Field(description="The member's id in the target program.")
    amount: PositivePoints


class ConversionOut(BaseModel):
    id: str
    member_id: str
    to_program: str
    to_member_id: str
    agreement_id: str
    agreement_version: int
    amount: int
    fee: int
    net: int
    credit: int
    value_minor: int
    currency: str
    status: str = Field(description="pending, completed or refunded")
    reason: str | None
    created_at: str
    out_entry: str
    final_entry: str | None
    replayed: bool = Field(
        description="Convert: true when its idempotency key was seen before; false on reads."
    )


class QuoteOut(BaseModel):
    to_program: str
    agreement_id: str
    agreement_version: int
    amount: int
    fee: int
    net: int
    credit: int
    value_minor: int
    currency: str
    rate: tuple[int, int]
    daily_cap_points: int
    converted_today: int


def _conversion_out(view: ConversionView) -> ConversionOut:
    return ConversionOut(**asdict(view))


def conversions_router(conversions: Conversions, authenticator: Authenticator) -> APIRouter:
    """``/v1/members/{member_id}/conversions``: convert, quote, status."""
    router = APIRouter(tags=["conversions"])
    spend = [guard(authenticator, Action.MEMBER_SPEND)]
    read = [guard(authenticator, Action.MEMBER_READ)]

    @router.post(
        "/v1/members/{member_id}/conversions",
        summary="Convert points into a partner program's points",
        dependencies=spend,
        status_code=201,
        responses=replayed(ConversionOut) | WRITE,
    )
    def convert(
        member_id: MemberId,
        body: ConversionIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> ConversionOut:
        view = conversions.convert(
            member_id,
            body.to_program,
            body.to_member_id,
            body.amount,
            idempotency_key=idempotency_key(body, key),
            scope=scope,
        )
        response.status_code = 200 if view.replayed else 201
        return _conversion_out(view)

    @router.get(
        "/v1/members/{member_id}/conversions/quote",
        summary="What a conversion would give now (nothing is written)",
        dependencies=read,
        responses=READ,
    )
    def quote(member_id: MemberId, to_program: ProgramQuery, amount: PositiveQuery) -> QuoteOut:
        return QuoteOut(**asdict(conversions.quote(member_id, to_program, amount)))

    @router.get(
        "/v1/members/{member_id}/conversions/{conversion_id}",
        summary="One conversion: pending, completed or refunded",
        dependencies=read,
        responses=READ,
    )
    def status(member_id: MemberId, conversion_id: ConversionId) -> ConversionOut:
        return _conversion_out(conversions.status(member_id, conversion_id))

    return router
