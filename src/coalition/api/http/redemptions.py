"""Cross-brand redemptions over HTTP, for operators: a member of a partner spends that
partner's points here. Start (the partner holds the points), capture (it debits them and
owes their value) or void (it gives them back), read one, and the hold expiry job.
Signed receipts pass through untouched. Starting answers 201, or 200 with ``replayed:
true`` when its idempotency key was used before, as the points writes do."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from coalition.api.http.deps import (
    CallerScope,
    Points,
    Signed,
    WriteBody,
    guard,
    idempotency_key,
)
from coalition.api.http.fields import (
    HoldId,
    IdempotencyHeader,
    MemberIdField,
    PositivePoints,
    ProgramField,
    ReferenceField,
    documented_range,
)
from coalition.api.http.responses import READ, WRITE, replayed
from coalition.node.auth import Action, Authenticator
from coalition.node.features.redemptions import MAX_HOLD_S, Redemptions, RedemptionView


class PartnerRedemptionIn(WriteBody):
    program: ProgramField = Field(description="The partner whose points the member spends.")
    member_id: MemberIdField = Field(description="The member's id at that partner.")
    amount: PositivePoints
    reference: ReferenceField
    expires_in_s: Points = Field(
        3600,
        description="How long the hold lasts, in seconds (at most MAX_HOLD_S, 30 days).",
        json_schema_extra=documented_range(1, MAX_HOLD_S),
    )


class PartnerRedemptionOut(BaseModel):
    hold_id: str
    program: str
    member_id: str
    amount: int
    reference: str
    status: str
    created_at: str
    expires_at: str | None
    agreement_id: str | None
    agreement_version: int | None
    value_minor: int | None
    currency: str | None
    receipt_entry: str | None
    reason: str | None
    authorization: Signed | None
    capture: Signed | None
    release: Signed | None
    replayed: bool = Field(
        description="Start: true when its idempotency key was seen before; false otherwise."
    )


class ReleasedOut(BaseModel):
    released: int


def _redemption_out(view: RedemptionView) -> PartnerRedemptionOut:
    return PartnerRedemptionOut(**asdict(view))


def redemptions_router(redemptions: Redemptions, authenticator: Authenticator) -> APIRouter:
    """``/v1/partner-redemptions`` (start, capture, void, read) and the hold expiry job;
    operators only."""
    router = APIRouter(
        tags=["partner redemptions"],
        dependencies=[guard(authenticator, Action.OPERATE)],
        responses=WRITE,
    )

    @router.post(
        "/v1/partner-redemptions",
        status_code=201,
        summary="Ask a partner to hold its member's points for a redemption here",
        responses=replayed(PartnerRedemptionOut),
    )
    def authorize(
        body: PartnerRedemptionIn,
        response: Response,
        scope: CallerScope,
        key: IdempotencyHeader = None,
    ) -> PartnerRedemptionOut:
        view = redemptions.authorize(
            body.program,
            body.member_id,
            body.amount,
            body.reference,
            body.expires_in_s,
            idempotency_key=idempotency_key(body, key),
            scope=scope,
        )
        response.status_code = 200 if view.replayed else 201
        return _redemption_out(view)

    @router.post(
        "/v1/partner-redemptions/{hold_id}/capture",
        summary="Capture: the partner debits the held points and owes their value",
    )
    def capture(hold_id: HoldId) -> PartnerRedemptionOut:
        return _redemption_out(redemptions.capture(hold_id))

    @router.post(
        "/v1/partner-redemptions/{hold_id}/void",
        summary="Void: the partner gives the held points back",
    )
    def void(hold_id: HoldId) -> PartnerRedemptionOut:
        return _redemption_out(redemptions.void(hold_id))

    @router.get(
        "/v1/partner-redemptions/{hold_id}", summary="One partner redemption", responses=READ
    )
    def get(hold_id: HoldId) -> PartnerRedemptionOut:
        return _redemption_out(redemptions.get(hold_id))

    @router.post(
        "/v1/jobs/hold-expiry",
        tags=["operations"],
        summary="Release the holds made for partners whose time has come",
    )
    def release_expired() -> ReleasedOut:
        return ReleasedOut(released=redemptions.release_expired())

    return router
