# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""``coalition.v1.Conversions``: convert (``member-spend`` on the request's member),
quote and read a conversion (``member-read``)."""

from __future__ import annotations

from dataclasses import asdict

import grpc

from coalition.api.grpc.kit import ApiKeyAuthorizer, CallAuthorizer, Servicer, guarded
from coalition.node.auth import Action, Authenticator
from coalition.node.features.conversions import Conversions, ConversionView, QuoteView
from coalition.v1 import conversions_pb2, conversions_pb2_grpc


def _conversion_message(view: ConversionView) -> conversions_pb2.Conversion:
    fields = asdict(view)
    fields["reason"] = view.reason or ""
    fields["final_entry"] = view.final_entry or ""
    return conversions_pb2.Conversion(**fields)


def _quote_message(view: QuoteView) -> conversions_pb2.ConversionQuote:
    fields = asdict(view)
    rate = fields.pop("rate")
    return conversions_pb2.ConversionQuote(**fields, rate_num=rate[0], rate_den=rate[1])


class ConversionsServicer(Servicer, conversions_pb2_grpc.ConversionsServicer):
    """``coalition.v1.Conversions`` over the conversions feature."""

    def __init__(self, conversions: Conversions, authorize: CallAuthorizer) -> None:
        super().__init__(authorize)
        self._conversions = conversions

    @guarded
    def Convert(
        self, request: conversions_pb2.ConvertRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.Conversion:
        scope = self.allow_write(context, Action.MEMBER_SPEND, request.member_id)
        view = self._conversions.convert(
            request.member_id,
            request.to_program,
            request.to_member_id,
            request.amount,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _conversion_message(view)

    @guarded
    def GetConversion(
        self, request: conversions_pb2.GetConversionRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.Conversion:
        self.allow(context, Action.MEMBER_READ, request.member_id)
        view = self._conversions.status(request.member_id, request.conversion_id)
        return _conversion_message(view)

    @guarded
    def Quote(
        self, request: conversions_pb2.QuoteRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.ConversionQuote:
        self.allow(context, Action.MEMBER_READ, request.member_id)
        view = self._conversions.quote(request.member_id, request.to_program, request.amount)
        return _quote_message(view)


def add_conversions_servicer(
    server: grpc.Server, conversions: Conversions, authenticator: Authenticator
) -> None:
    """Register ``coalition.v1.Conversions`` on the member/operator gRPC server."""
    servicer = ConversionsServicer(conversions, ApiKeyAuthorizer(authenticator))
    conversions_pb2_grpc.add_ConversionsServicer_to_server(servicer, server)
