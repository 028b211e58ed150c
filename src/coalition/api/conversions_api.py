# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""Conversions and rate agreements over REST and gRPC: thin transports over the features.

REST: ``conversions_router(feature, authenticator)`` is an ``APIRouter`` for
``api.rest.create_app``'s app (whose handler maps every CoalitionError once). gRPC:
``add_conversions_servicer(server, feature, authenticator)`` adds ``Conversions`` and
``Agreements``. Authorization is the points API's: converting is ``member-spend`` on the
path's member, reading a conversion or a quote ``member-read``, agreements ``operate``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, Field

from coalition.api.grpc_server import _guard, _Servicer
from coalition.api.rest import (
    _ERRORS,
    IdempotencyHeader,
    MemberId,
    Points,
    QueryInt,
    _idempotency_key,
    _Write,
    guard,
)
from coalition.errors import InvalidArgument
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.node.auth import Action, Authenticator
from coalition.node.features.agreements import AgreementView
from coalition.node.features.conversions import Conversions, ConversionView, QuoteView
from coalition.v1 import conversions_pb2, conversions_pb2_grpc

# ----------------------------------------------------------------------- wire models


class ConversionIn(_Write):
    to_program: str
    to_member_id: str = Field(description="The member's id in the target program.")
    amount: Points


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


class AgreementOut(BaseModel):
    id: str
    version: int
    from_program: str
    to_program: str
    valid_from: str
    valid_until: str
    in_force: bool
    signed: dict[str, Any]


def _conversion_out(view: ConversionView) -> ConversionOut:
    return ConversionOut(**asdict(view))


def _agreement_out(view: AgreementView) -> AgreementOut:
    return AgreementOut(**asdict(view))


# ------------------------------------------------------------------------------ REST


def conversions_router(feature: Conversions, authenticator: Authenticator) -> APIRouter:
    """Member conversions and the operator's agreements, for the node's REST app."""
    router = APIRouter()

    operate = [guard(authenticator, Action.OPERATE)]
    spend = [guard(authenticator, Action.MEMBER_SPEND)]
    read = [guard(authenticator, Action.MEMBER_READ)]

    @router.post(
        "/v1/members/{member_id}/conversions",
        tags=["conversions"],
        summary="Convert points into a partner program's points",
        dependencies=spend,
        status_code=201,
        responses=_ERRORS,
    )
    def convert(
        member_id: MemberId,
        body: ConversionIn,
        key: IdempotencyHeader = None,
    ) -> ConversionOut:
        view = feature.convert(
            member_id,
            body.to_program,
            body.to_member_id,
            body.amount,
            idempotency_key=_idempotency_key(body, key),
        )
        return _conversion_out(view)

    @router.get(
        "/v1/members/{member_id}/conversions/quote",
        tags=["conversions"],
        summary="What a conversion would give now (nothing is written)",
        dependencies=read,
        responses=_ERRORS,
    )
    def quote(
        member_id: MemberId, to_program: Annotated[str, Query()], amount: QueryInt
    ) -> QuoteOut:
        return QuoteOut(**asdict(feature.quote(member_id, to_program, amount)))

    @router.get(
        "/v1/members/{member_id}/conversions/{conversion_id}",
        tags=["conversions"],
        summary="One conversion: pending, completed or refunded",
        dependencies=read,
        responses=_ERRORS,
    )
    def status(member_id: MemberId, conversion_id: Annotated[str, Path()]) -> ConversionOut:
        return _conversion_out(feature.status(member_id, conversion_id))

    @router.post(
        "/v1/agreements",
        tags=["agreements"],
        summary="Propose a rate agreement; the counterparty countersigns",
        dependencies=operate,
        status_code=201,
        responses=_ERRORS,
    )
    def propose(document: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return dict(feature.agreements.propose(document))

    @router.get(
        "/v1/agreements",
        tags=["agreements"],
        summary="Every recorded rate agreement",
        dependencies=operate,
        responses=_ERRORS,
    )
    def agreements() -> list[AgreementOut]:
        return [_agreement_out(view) for view in feature.agreements.list()]

    return router


# ------------------------------------------------------------------------------ gRPC


def _conversion_message(view: ConversionView) -> conversions_pb2.Conversion:
    fields = asdict(view)
    fields["reason"] = view.reason or ""
    fields["final_entry"] = view.final_entry or ""
    return conversions_pb2.Conversion(**fields)


def _quote_message(view: QuoteView) -> conversions_pb2.ConversionQuote:
    fields = asdict(view)
    rate = fields.pop("rate")
    return conversions_pb2.ConversionQuote(**fields, rate_num=rate[0], rate_den=rate[1])


class ConversionsServicer(_Servicer, conversions_pb2_grpc.ConversionsServicer):
    """``coalition.v1.Conversions`` over the conversions feature."""

    def __init__(self, feature: Conversions, authenticator: Authenticator) -> None:
        super().__init__(feature.service, authenticator)
        self._feature = feature

    @_guard
    def Convert(
        self, request: conversions_pb2.ConvertRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.Conversion:
        self._allow(context, Action.MEMBER_SPEND, request.member_id)
        view = self._feature.convert(
            request.member_id,
            request.to_program,
            request.to_member_id,
            request.amount,
            idempotency_key=request.idempotency_key,
        )
        return _conversion_message(view)

    @_guard
    def GetConversion(
        self, request: conversions_pb2.GetConversionRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.Conversion:
        self._allow(context, Action.MEMBER_READ, request.member_id)
        return _conversion_message(self._feature.status(request.member_id, request.conversion_id))

    @_guard
    def Quote(
        self, request: conversions_pb2.QuoteRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.ConversionQuote:
        self._allow(context, Action.MEMBER_READ, request.member_id)
        view = self._feature.quote(request.member_id, request.to_program, request.amount)
        return _quote_message(view)


class AgreementsServicer(_Servicer, conversions_pb2_grpc.AgreementsServicer):
    """``coalition.v1.Agreements``: operators propose and list rate agreements."""

    def __init__(self, feature: Conversions, authenticator: Authenticator) -> None:
        super().__init__(feature.service, authenticator)
        self._agreements = feature.agreements

    @_guard
    def ProposeAgreement(
        self, request: conversions_pb2.ProposeAgreementRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.SignedAgreement:
        self._allow(context, Action.OPERATE)
        document = parse_json(request.agreement_json)
        if not isinstance(document, dict):
            raise InvalidArgument("agreement_json must be a JSON object")
        signed: JsonObject = self._agreements.propose(document)
        return conversions_pb2.SignedAgreement(signed_agreement_json=canonical_json(signed))

    @_guard
    def ListAgreements(
        self, request: conversions_pb2.ListAgreementsRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.AgreementList:
        self._allow(context, Action.OPERATE)
        summaries = []
        for view in self._agreements.list():
            fields = asdict(view)
            signed = fields.pop("signed")
            summaries.append(
                conversions_pb2.AgreementSummary(
                    **fields, signed_agreement_json=canonical_json(signed)
                )
            )
        return conversions_pb2.AgreementList(agreements=summaries)


def add_conversions_servicer(
    server: grpc.Server, feature: Conversions, authenticator: Authenticator
) -> None:
    """Register ``Conversions`` and ``Agreements`` on the member/operator gRPC server."""
    conversions_pb2_grpc.add_ConversionsServicer_to_server(
        ConversionsServicer(feature, authenticator), server
    )
    conversions_pb2_grpc.add_AgreementsServicer_to_server(
        AgreementsServicer(feature, authenticator), server
    )
