# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""Partner redemptions and settlement over REST and gRPC.

Thin like the other transports: authenticate the API key, authorize the action
(operators start, capture and void redemptions and propose statements; operators and
auditors read statements and netting), call ``node.redemptions.Redemptions`` or
``node.settlement.Settlement``, build the reply. Signed receipts and statements pass
through untouched. Core errors reach the app's handler (REST) or ``grpc_server._guard``
(gRPC), which map them once through ``coalition.api.errors``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from coalition.api.grpc_server import _guard, authorize_call
from coalition.api.rest import IdempotencyHeader, Points, _idempotency_key, _Write, guard
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.entries import check_time
from coalition.node.auth import Action, Authenticator
from coalition.node.features.redemptions import Redemptions, RedemptionView
from coalition.node.features.settlement import NettingView, Settlement, StatementView
from coalition.v1 import settlement_pb2, settlement_pb2_grpc

Signed = dict[str, Any]
HoldId = Annotated[str, Path(description="The hold id (32 hex digits) of the redemption.")]
Time = Annotated[str, Query(description="RFC 3339 UTC, e.g. 2026-11-01T00:00:00.000000Z")]
Format = Annotated[Literal["json", "csv"], Query(alias="format", description="json or csv")]


# ------------------------------------------------------------------------- wire models


class PartnerRedemptionIn(_Write):
    program: str = Field(description="The partner whose points the member spends.")
    member_id: str = Field(description="The member's id at that partner.")
    amount: Points
    reference: str
    expires_in_s: Points = Field(3600, description="How long the hold lasts (1 s - 30 days).")


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


class ReleasedOut(BaseModel):
    released: int


class StatementIn(BaseModel):
    partner: str
    start: str = Field(description="RFC 3339 UTC start of the period (included).")
    end: str = Field(description="RFC 3339 UTC end of the period (excluded), in the past.")


class StatementOut(BaseModel):
    id: str
    parties: list[str]
    start: str
    end: str
    currency: str
    signed: Signed
    entry_id: str


def _redemption_out(view: RedemptionView) -> PartnerRedemptionOut:
    return PartnerRedemptionOut(**asdict(view))


def _statement_out(view: StatementView) -> StatementOut:
    fields = asdict(view)
    fields["parties"] = list(view.parties)
    return StatementOut(**fields)


# -------------------------------------------------------------------------------- REST


def redemptions_router(redemptions: Redemptions, authenticator: Authenticator) -> APIRouter:
    """``/v1/partner-redemptions`` (start, capture, void, read) and the hold expiry job;
    operators only."""
    router = APIRouter(
        tags=["partner redemptions"],
        dependencies=[guard(authenticator, Action.OPERATE)],
    )

    @router.post(
        "/v1/partner-redemptions",
        status_code=201,
        summary="Ask a partner to hold its member's points for a redemption here",
    )
    def authorize(body: PartnerRedemptionIn, key: IdempotencyHeader = None) -> PartnerRedemptionOut:
        view = redemptions.authorize(
            body.program,
            body.member_id,
            body.amount,
            body.reference,
            body.expires_in_s,
            idempotency_key=_idempotency_key(body, key),
        )
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

    @router.get("/v1/partner-redemptions/{hold_id}", summary="One partner redemption")
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


def settlement_router(settlement: Settlement, authenticator: Authenticator) -> APIRouter:
    """``/v1/settlement/statements`` (list: operators and auditors; propose: operators)
    and ``/v1/settlement/netting`` (CSV or JSON)."""
    router = APIRouter(tags=["settlement"])
    read = [guard(authenticator, Action.LEDGER_READ)]
    operate = [guard(authenticator, Action.OPERATE)]

    @router.get(
        "/v1/settlement/statements",
        summary="Statements recorded on this chain, oldest period first",
        dependencies=read,
    )
    def statements(
        partner: Annotated[str | None, Query(max_length=64)] = None,
    ) -> list[StatementOut]:
        return [_statement_out(v) for v in settlement.statements(partner)]

    @router.post(
        "/v1/settlement/statements",
        status_code=201,
        summary="Agree a finished period's statement with a partner (recorded on both chains)",
        dependencies=operate,
    )
    def propose(body: StatementIn) -> Signed:
        start, end = check_time(body.start, "start"), check_time(body.end, "end")
        return dict(settlement.propose(body.partner, start, end))

    @router.get(
        "/v1/settlement/netting",
        summary="Net positions and the fewest payments over the period's statements",
        dependencies=read,
        response_model=None,
    )
    def netting(start: Time, end: Time, fmt: Format = "json") -> Signed | PlainTextResponse:
        view = settlement.coalition_netting(check_time(start, "start"), check_time(end, "end"))
        if fmt == "csv":
            return PlainTextResponse(view.to_csv(), media_type="text/csv")
        return dict(view.to_json())

    return router


# -------------------------------------------------------------------------------- gRPC


def _json(value: JsonObject | None) -> bytes:
    return b"" if value is None else canonical_json(value)


def _redemption_message(view: RedemptionView) -> settlement_pb2.PartnerRedemption:
    return settlement_pb2.PartnerRedemption(
        hold_id=view.hold_id,
        program=view.program,
        member_id=view.member_id,
        amount=view.amount,
        reference=view.reference,
        status=view.status,
        created_at=view.created_at,
        expires_at=view.expires_at,
        agreement_id=view.agreement_id,
        agreement_version=view.agreement_version,
        value_minor=view.value_minor,
        currency=view.currency,
        receipt_entry=view.receipt_entry,
        reason=view.reason,
        authorization_json=_json(view.authorization),
        capture_json=_json(view.capture),
        release_json=_json(view.release),
    )


def _statement_message(view: StatementView) -> settlement_pb2.SettlementStatement:
    return settlement_pb2.SettlementStatement(
        id=view.id,
        parties=list(view.parties),
        start=view.start,
        end=view.end,
        currency=view.currency,
        signed_json=canonical_json(view.signed),
        entry_id=view.entry_id,
    )


def _netting_message(view: NettingView) -> settlement_pb2.NettingReport:
    netting = view.netting
    return settlement_pb2.NettingReport(
        start=view.start,
        end=view.end,
        currency=view.currency or "",
        positions=[
            settlement_pb2.NetPosition(program=p, amount=a) for p, a in netting.positions.items()
        ],
        payments=[
            settlement_pb2.NetPayment(payer=p.payer, payee=p.payee, amount=p.amount)
            for p in netting.payments
        ],
        statements=view.statements,
        unreachable=view.unreachable,
        csv=view.to_csv(),
        json=canonical_json(view.to_json()),
    )


class _Servicer:
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def _allow(self, context: grpc.ServicerContext, action: Action) -> None:
        authorize_call(self._auth, context, action)


class PartnerRedemptionsServicer(_Servicer, settlement_pb2_grpc.PartnerRedemptionsServicer):
    """``coalition.v1.PartnerRedemptions`` over a Redemptions; operators only."""

    def __init__(self, redemptions: Redemptions, authenticator: Authenticator) -> None:
        super().__init__(authenticator)
        self._redemptions = redemptions

    @_guard
    def Authorize(
        self, request: settlement_pb2.AuthorizeRedemptionRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.PartnerRedemption:
        self._allow(context, Action.OPERATE)
        view = self._redemptions.authorize(
            request.program,
            request.member_id,
            request.amount,
            request.reference,
            request.expires_in_s,
            idempotency_key=request.idempotency_key,
        )
        return _redemption_message(view)

    @_guard
    def Capture(
        self, request: settlement_pb2.RedemptionRef, context: grpc.ServicerContext
    ) -> settlement_pb2.PartnerRedemption:
        self._allow(context, Action.OPERATE)
        return _redemption_message(self._redemptions.capture(request.hold_id))

    @_guard
    def Void(
        self, request: settlement_pb2.RedemptionRef, context: grpc.ServicerContext
    ) -> settlement_pb2.PartnerRedemption:
        self._allow(context, Action.OPERATE)
        return _redemption_message(self._redemptions.void(request.hold_id))

    @_guard
    def GetRedemption(
        self, request: settlement_pb2.RedemptionRef, context: grpc.ServicerContext
    ) -> settlement_pb2.PartnerRedemption:
        self._allow(context, Action.OPERATE)
        return _redemption_message(self._redemptions.get(request.hold_id))

    @_guard
    def ReleaseExpiredHolds(
        self, request: settlement_pb2.ReleaseExpiredHoldsRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.ReleaseExpiredHoldsReply:
        self._allow(context, Action.OPERATE)
        return settlement_pb2.ReleaseExpiredHoldsReply(released=self._redemptions.release_expired())


class SettlementServicer(_Servicer, settlement_pb2_grpc.SettlementServicer):
    """``coalition.v1.Settlement`` over a Settlement."""

    def __init__(self, settlement: Settlement, authenticator: Authenticator) -> None:
        super().__init__(authenticator)
        self._settlement = settlement

    @_guard
    def ProposeStatement(
        self, request: settlement_pb2.ProposeStatementRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.SettlementStatement:
        self._allow(context, Action.OPERATE)
        start, end = check_time(request.start, "start"), check_time(request.end, "end")
        signed = self._settlement.propose(request.partner, start, end)
        statement = signed["statement"]
        assert isinstance(statement, dict)
        return _statement_message(self._settlement.statement(str(statement["id"])))

    @_guard
    def ListStatements(
        self, request: settlement_pb2.ListStatementsRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.StatementList:
        self._allow(context, Action.LEDGER_READ)
        views = self._settlement.statements(request.partner or None)
        return settlement_pb2.StatementList(statements=[_statement_message(v) for v in views])

    @_guard
    def GetNetting(
        self, request: settlement_pb2.GetNettingRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.NettingReport:
        self._allow(context, Action.LEDGER_READ)
        view = self._settlement.coalition_netting(
            check_time(request.start, "start"), check_time(request.end, "end")
        )
        return _netting_message(view)


def add_redemptions_servicer(
    server: grpc.Server, redemptions: Redemptions, authenticator: Authenticator
) -> None:
    """Register ``coalition.v1.PartnerRedemptions`` on the member/operator gRPC server."""
    settlement_pb2_grpc.add_PartnerRedemptionsServicer_to_server(
        PartnerRedemptionsServicer(redemptions, authenticator), server
    )


def add_settlement_servicer(
    server: grpc.Server, settlement: Settlement, authenticator: Authenticator
) -> None:
    """Register ``coalition.v1.Settlement`` on the member/operator gRPC server."""
    settlement_pb2_grpc.add_SettlementServicer_to_server(
        SettlementServicer(settlement, authenticator), server
    )
