# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""``coalition.v1.Agreements``: operators propose and list rate agreements."""

from __future__ import annotations

from dataclasses import asdict

import grpc

from coalition.api.grpc.kit import (
    ApiKeyAuthorizer,
    CallAuthorizer,
    Servicer,
    guarded,
    page_size,
)
from coalition.errors import InvalidArgument
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.node.auth import Action, Authenticator
from coalition.node.features.agreements import Agreements, cursor_of, parse_cursor
from coalition.v1 import conversions_pb2, conversions_pb2_grpc


class AgreementsServicer(Servicer, conversions_pb2_grpc.AgreementsServicer):
    """``coalition.v1.Agreements`` over the agreements feature; operators only."""

    def __init__(self, agreements: Agreements, authorize: CallAuthorizer) -> None:
        super().__init__(authorize)
        self._agreements = agreements

    @guarded
    def ProposeAgreement(
        self, request: conversions_pb2.ProposeAgreementRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.SignedAgreement:
        self.allow(context, Action.OPERATE)
        document = parse_json(request.agreement_json)
        if not isinstance(document, dict):
            raise InvalidArgument("agreement_json must be a JSON object")
        signed: JsonObject = self._agreements.propose(document)
        return conversions_pb2.SignedAgreement(signed_agreement_json=canonical_json(signed))

    @guarded
    def ListAgreements(
        self, request: conversions_pb2.ListAgreementsRequest, context: grpc.ServicerContext
    ) -> conversions_pb2.AgreementList:
        self.allow(context, Action.OPERATE)
        limit = page_size(request.page_size)
        found = self._agreements.list(limit, parse_cursor(request.page_token or None))
        summaries = []
        for view in found:
            fields = asdict(view)
            signed = fields.pop("signed")
            summaries.append(
                conversions_pb2.AgreementSummary(
                    **fields, signed_agreement_json=canonical_json(signed)
                )
            )
        following = cursor_of(found[-1]) if len(found) == limit else ""
        return conversions_pb2.AgreementList(agreements=summaries, next_page_token=following)


def add_agreements_servicer(
    server: grpc.Server, agreements: Agreements, authenticator: Authenticator
) -> None:
    """Register ``coalition.v1.Agreements`` on the member/operator gRPC server."""
    servicer = AgreementsServicer(agreements, ApiKeyAuthorizer(authenticator))
    conversions_pb2_grpc.add_AgreementsServicer_to_server(servicer, server)
