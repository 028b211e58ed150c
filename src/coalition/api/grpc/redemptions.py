# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""``coalition.v1.PartnerRedemptions``: operators start, capture, void and read
cross-brand redemptions and release expired holds. Signed receipts pass through."""

from __future__ import annotations

import grpc

from coalition.api.grpc.kit import ApiKeyAuthorizer, CallAuthorizer, Servicer, guarded
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.node.auth import Action, Authenticator
from coalition.node.features.redemptions import Redemptions, RedemptionView
from coalition.v1 import settlement_pb2, settlement_pb2_grpc


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
        replayed=view.replayed,
    )


class PartnerRedemptionsServicer(Servicer, settlement_pb2_grpc.PartnerRedemptionsServicer):
    """``coalition.v1.PartnerRedemptions`` over a Redemptions; operators only."""

    def __init__(self, redemptions: Redemptions, authorize: CallAuthorizer) -> None:
        super().__init__(authorize)
        self._redemptions = redemptions

    @guarded
    def Authorize(
        self, request: settlement_pb2.AuthorizeRedemptionRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.PartnerRedemption:
        scope = self.allow_write(context, Action.OPERATE)
        view = self._redemptions.authorize(
            request.program,
            request.member_id,
            request.amount,
            request.reference,
            request.expires_in_s,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _redemption_message(view)

    @guarded
    def Capture(
        self, request: settlement_pb2.RedemptionRef, context: grpc.ServicerContext
    ) -> settlement_pb2.PartnerRedemption:
        self.allow(context, Action.OPERATE)
        return _redemption_message(self._redemptions.capture(request.hold_id))

    @guarded
    def Void(
        self, request: settlement_pb2.RedemptionRef, context: grpc.ServicerContext
    ) -> settlement_pb2.PartnerRedemption:
        self.allow(context, Action.OPERATE)
        return _redemption_message(self._redemptions.void(request.hold_id))

    @guarded
    def GetRedemption(
        self, request: settlement_pb2.RedemptionRef, context: grpc.ServicerContext
    ) -> settlement_pb2.PartnerRedemption:
        self.allow(context, Action.OPERATE)
        return _redemption_message(self._redemptions.get(request.hold_id))

    @guarded
    def ReleaseExpiredHolds(
        self, request: settlement_pb2.ReleaseExpiredHoldsRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.ReleaseExpiredHoldsReply:
        self.allow(context, Action.OPERATE)
        return settlement_pb2.ReleaseExpiredHoldsReply(released=self._redemptions.release_expired())


def add_redemptions_servicer(
    server: grpc.Server, redemptions: Redemptions, authenticator: Authenticator
) -> None:
    """Register ``coalition.v1.PartnerRedemptions`` on the member/operator gRPC server."""
    servicer = PartnerRedemptionsServicer(redemptions, ApiKeyAuthorizer(authenticator))
    settlement_pb2_grpc.add_PartnerRedemptionsServicer_to_server(servicer, server)
