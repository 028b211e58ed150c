# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""``coalition.v1.Points``: members' points (enroll, earn, spend, operator corrections,
the batch jobs, one member's balance, lots and history). Operators write; a member key
may spend and read its own member's points (``node.auth``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict

import grpc

from coalition.api.grpc.kit import CallAuthorizer, Servicer, guarded, integer_token, page_size
from coalition.api.grpc.ledger import entry_message
from coalition.ledger.canonical import canonical_json
from coalition.node.auth import Action
from coalition.node.points_service import PointsService
from coalition.node.views import PurchaseRow, WriteResult
from coalition.v1 import points_pb2, points_pb2_grpc

POINTS_SERVICE = points_pb2.DESCRIPTOR.services_by_name["Points"].full_name


def _write_reply(result: WriteResult) -> points_pb2.WriteReply:
    return points_pb2.WriteReply(entry_json=canonical_json(result.entry), replayed=result.replayed)


def _rows(messages: Iterable[points_pb2.PurchaseRow]) -> Iterator[PurchaseRow]:
    """Bulk rows converted one by one as they arrive, so a large stream is never held."""
    for m in messages:
        yield PurchaseRow(m.member_id, m.reference, m.spend_minor, m.category, m.idempotency_key)


class PointsServicer(Servicer, points_pb2_grpc.PointsServicer):
    """``coalition.v1.Points`` over a node's PointsService."""

    def __init__(self, points: PointsService, authorize: CallAuthorizer) -> None:
        super().__init__(authorize)
        self._points = points

    @guarded
    def Enroll(
        self, request: points_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        scope = self.allow_write(context, Action.OPERATE, request.member_id)
        key = request.idempotency_key
        return _write_reply(
            self._points.enroll(request.member_id, idempotency_key=key, scope=scope)
        )

    @guarded
    def EarnPurchase(
        self, request: points_pb2.EarnPurchaseRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        scope = self.allow_write(context, Action.OPERATE, request.member_id)
        result = self._points.earn_purchase(
            request.member_id,
            request.reference,
            request.spend_minor,
            request.category,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _write_reply(result)

    @guarded
    def EarnReward(
        self, request: points_pb2.EarnRewardRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        scope = self.allow_write(context, Action.OPERATE, request.member_id)
        result = self._points.earn_reward(
            request.member_id,
            request.event,
            request.reference,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _write_reply(result)

    @guarded
    def EarnBulk(
        self, request_iterator: Iterator[points_pb2.PurchaseRow], context: grpc.ServicerContext
    ) -> points_pb2.BulkSummary:
        self.allow(context, Action.OPERATE)
        result = self._points.earn_bulk(_rows(request_iterator))
        rejected = [
            points_pb2.RowError(row=e.row, idempotency_key=e.idempotency_key, message=e.message)
            for e in result.rejected
        ]
        return points_pb2.BulkSummary(
            accepted=result.accepted, replayed=result.replayed, rejected=rejected
        )

    @guarded
    def ReversePurchase(
        self, request: points_pb2.ReversePurchaseRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        scope = self.allow_write(context, Action.OPERATE, request.member_id)
        result = self._points.reverse_purchase(
            request.member_id,
            request.reference,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _write_reply(result)

    @guarded
    def Redeem(
        self, request: points_pb2.RedeemRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        scope = self.allow_write(context, Action.MEMBER_SPEND, request.member_id)
        result = self._points.redeem(
            request.member_id,
            request.amount,
            request.reference,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _write_reply(result)

    @guarded
    def Transfer(
        self, request: points_pb2.TransferRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        scope = self.allow_write(context, Action.MEMBER_SPEND, request.member_id)
        result = self._points.transfer(
            request.member_id,
            request.to_member_id,
            request.amount,
            request.note,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _write_reply(result)

    @guarded
    def Adjust(
        self, request: points_pb2.AdjustRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        scope = self.allow_write(context, Action.OPERATE, request.member_id)
        result = self._points.adjust(
            request.member_id,
            request.amount,
            request.operator,
            request.note,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _write_reply(result)

    @guarded
    def Revoke(
        self, request: points_pb2.RevokeRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        scope = self.allow_write(context, Action.OPERATE, request.member_id)
        result = self._points.revoke(
            request.member_id,
            request.earn_entry_id,
            request.operator,
            request.note,
            idempotency_key=request.idempotency_key,
            scope=scope,
        )
        return _write_reply(result)

    @guarded
    def RunExpiry(
        self, request: points_pb2.RunExpiryRequest, context: grpc.ServicerContext
    ) -> points_pb2.ExpirySummary:
        self.allow(context, Action.OPERATE)
        result = self._points.run_expiry()
        return points_pb2.ExpirySummary(entries=result.entries, points=result.points)

    @guarded
    def GetBalance(
        self, request: points_pb2.GetBalanceRequest, context: grpc.ServicerContext
    ) -> points_pb2.Balance:
        self.allow(context, Action.MEMBER_READ, request.member_id)
        return points_pb2.Balance(**asdict(self._points.balance(request.member_id)))

    @guarded
    def ListLots(
        self, request: points_pb2.ListLotsRequest, context: grpc.ServicerContext
    ) -> points_pb2.LotList:
        self.allow(context, Action.MEMBER_READ, request.member_id)
        limit = page_size(request.page_size)
        found = self._points.lots_page(request.member_id, limit, request.page_token or None)
        lots = [points_pb2.Lot(**asdict(lot)) for lot in found]
        following = found[-1].id if len(found) == limit else ""
        return points_pb2.LotList(lots=lots, next_page_token=following)

    @guarded
    def GetHistory(
        self, request: points_pb2.GetHistoryRequest, context: grpc.ServicerContext
    ) -> points_pb2.History:
        self.allow(context, Action.MEMBER_READ, request.member_id)
        before = integer_token(request.page_token, "a member's history")
        limit = page_size(request.limit, 100)
        views, older = self._points.history_page(request.member_id, limit, before)
        following = "" if older is None else str(older)
        return points_pb2.History(
            entries=[entry_message(v) for v in views], next_page_token=following
        )
