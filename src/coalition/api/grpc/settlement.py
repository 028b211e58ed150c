# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""``coalition.v1.Settlement``: operators propose a period's statement to a partner;
operators and auditors list statements and read the coalition's netting."""

from __future__ import annotations

import grpc

from coalition.api.grpc.kit import ApiKeyAuthorizer, CallAuthorizer, Servicer, guarded
from coalition.ledger.canonical import canonical_json
from coalition.ledger.entries import check_time
from coalition.node.auth import Action, Authenticator
from coalition.node.features.settlement import NettingView, Settlement, StatementView
from coalition.v1 import settlement_pb2, settlement_pb2_grpc


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


class SettlementServicer(Servicer, settlement_pb2_grpc.SettlementServicer):
    """``coalition.v1.Settlement`` over a Settlement."""

    def __init__(self, settlement: Settlement, authorize: CallAuthorizer) -> None:
        super().__init__(authorize)
        self._settlement = settlement

    @guarded
    def ProposeStatement(
        self, request: settlement_pb2.ProposeStatementRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.SettlementStatement:
        self.allow(context, Action.OPERATE)
        start, end = check_time(request.start, "start"), check_time(request.end, "end")
        signed = self._settlement.propose(request.partner, start, end)
        statement = signed["statement"]
        assert isinstance(statement, dict)
        return _statement_message(self._settlement.statement(str(statement["id"])))

    @guarded
    def ListStatements(
        self, request: settlement_pb2.ListStatementsRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.StatementList:
        self.allow(context, Action.LEDGER_READ)
        views = self._settlement.statements(request.partner or None)
        return settlement_pb2.StatementList(statements=[_statement_message(v) for v in views])

    @guarded
    def GetNetting(
        self, request: settlement_pb2.GetNettingRequest, context: grpc.ServicerContext
    ) -> settlement_pb2.NettingReport:
        self.allow(context, Action.LEDGER_READ)
        view = self._settlement.coalition_netting(
            check_time(request.start, "start"), check_time(request.end, "end")
        )
        return _netting_message(view)


def add_settlement_servicer(
    server: grpc.Server, settlement: Settlement, authenticator: Authenticator
) -> None:
    """Register ``coalition.v1.Settlement`` on the member/operator gRPC server."""
    servicer = SettlementServicer(settlement, ApiKeyAuthorizer(authenticator))
    settlement_pb2_grpc.add_SettlementServicer_to_server(servicer, server)
