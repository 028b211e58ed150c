# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""gRPC servicers for ``coalition.v1.Points`` and ``coalition.v1.Ledger``, and ``serve_grpc``.

Thin on purpose: each RPC reads the ``authorization`` metadata, authenticates and
authorizes it (``coalition.node.auth``), calls the NodeService and builds the reply. Core
errors are mapped once, in ``_guard``, with ``coalition.api.errors.grpc_status``; anything
else is a bug and becomes INTERNAL with the traceback in the log, never on the wire.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import asdict
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coalition.api.errors import grpc_status
from coalition.errors import CoalitionError
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import canonical_json
from coalition.node.auth import Action, Authenticator, Principal
from coalition.node.service import NodeService
from coalition.node.views import EntryView, PurchaseRow, WriteResult
from coalition.v1 import ledger_pb2, ledger_pb2_grpc, points_pb2, points_pb2_grpc

log = logging.getLogger(__name__)

POINTS_SERVICE = points_pb2.DESCRIPTOR.services_by_name["Points"].full_name
LEDGER_SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name
WATCH_POLL_SECONDS = 0.5
"""How often a WatchHeaders stream wakes to notice a cancelled call or a stopping server."""

F = TypeVar("F", bound=Callable[..., Any])


def _fail(context: grpc.ServicerContext, name: str, exc: Exception) -> None:
    """Abort the call for ``exc`` (always raises)."""
    if isinstance(exc, CoalitionError):
        context.abort(grpc_status(exc), str(exc))
    if not context.is_active():  # the client went away, e.g. mid EarnBulk stream
        context.abort(grpc.StatusCode.CANCELLED, "call cancelled")
    log.exception("unexpected error in %s", name)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; see the node log")


def _guard(method: F) -> F:
    """Map a unary-reply RPC's exceptions to a status, once for every method."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            _fail(context, method.__name__, exc)

    return wrapper  # type: ignore[return-value]


def _guard_stream(method: F) -> F:
    """``_guard`` for a server-streaming RPC (errors may arise between messages)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            _fail(context, method.__name__, exc)

    return wrapper  # type: ignore[return-value]


def authorize_call(
    authenticator: Authenticator,
    context: grpc.ServicerContext,
    action: Action,
    member_id: str | None = None,
) -> Principal:
    """Authenticate a call by its ``authorization`` metadata and authorize ``action``;
    every gRPC servicer of the node checks its callers with this one function."""
    metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}  # no -bin
    principal = authenticator.authenticate(metadata.get("authorization"))
    authenticator.authorize(principal, action, member_id)
    return principal


class _Servicer:
    def __init__(self, service: NodeService, authenticator: Authenticator) -> None:
        self._service = service
        self._auth = authenticator

    def _allow(
        self, context: grpc.ServicerContext, action: Action, member_id: str | None = None
    ) -> Principal:
        return authorize_call(self._auth, context, action, member_id)


def _write_reply(result: WriteResult) -> points_pb2.WriteReply:
    return points_pb2.WriteReply(entry_json=canonical_json(result.entry), replayed=result.replayed)


def _entry_message(view: EntryView) -> ledger_pb2.Entry:
    return ledger_pb2.Entry(entry_json=canonical_json(view.entry), log_index=view.log_index)


def _header_message(signed: SignedHeader) -> ledger_pb2.SignedHeader:
    return ledger_pb2.SignedHeader(signed_header_json=canonical_json(signed.to_json()))


def _rows(messages: Iterable[points_pb2.PurchaseRow]) -> Iterator[PurchaseRow]:
    """Bulk rows converted one by one as they arrive, so a large stream is never held."""
    for m in messages:
        yield PurchaseRow(m.member_id, m.reference, m.spend_minor, m.category, m.idempotency_key)


class PointsServicer(_Servicer, points_pb2_grpc.PointsServicer):
    """``coalition.v1.Points`` over a NodeService."""

    @_guard
    def Enroll(
        self, request: points_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        self._allow(context, Action.OPERATE, request.member_id)
        key = request.idempotency_key
        return _write_reply(self._service.enroll(request.member_id, idempotency_key=key))

    @_guard
    def EarnPurchase(
        self, request: points_pb2.EarnPurchaseRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        self._allow(context, Action.OPERATE, request.member_id)
        result = self._service.earn_purchase(
            request.member_id,
            request.reference,
            request.spend_minor,
            request.category,
            idempotency_key=request.idempotency_key,
        )
        return _write_reply(result)

    @_guard
    def EarnReward(
        self, request: points_pb2.EarnRewardRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        self._allow(context, Action.OPERATE, request.member_id)
        result = self._service.earn_reward(
            request.member_id,
            request.event,
            request.reference,
            idempotency_key=request.idempotency_key,
        )
        return _write_reply(result)

    @_guard
    def EarnBulk(
        self, request_iterator: Iterator[points_pb2.PurchaseRow], context: grpc.ServicerContext
    ) -> points_pb2.BulkSummary:
        self._allow(context, Action.OPERATE)
        result = self._service.earn_bulk(_rows(request_iterator))
        rejected = [
            points_pb2.RowError(row=e.row, idempotency_key=e.idempotency_key, message=e.message)
            for e in result.rejected
        ]
        return points_pb2.BulkSummary(
            accepted=result.accepted, replayed=result.replayed, rejected=rejected
        )

    @_guard
    def ReversePurchase(
        self, request: points_pb2.ReversePurchaseRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        self._allow(context, Action.OPERATE, request.member_id)
        result = self._service.reverse_purchase(
            request.member_id, request.reference, idempotency_key=request.idempotency_key
        )
        return _write_reply(result)

    @_guard
    def Redeem(
        self, request: points_pb2.RedeemRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        self._allow(context, Action.MEMBER_SPEND, request.member_id)
        result = self._service.redeem(
            request.member_id,
            request.amount,
            request.reference,
            idempotency_key=request.idempotency_key,
        )
        return _write_reply(result)

    @_guard
    def Transfer(
        self, request: points_pb2.TransferRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        self._allow(context, Action.MEMBER_SPEND, request.member_id)
        result = self._service.transfer(
            request.member_id,
            request.to_member_id,
            request.amount,
            request.note,
            idempotency_key=request.idempotency_key,
        )
        return _write_reply(result)

    @_guard
    def Adjust(
        self, request: points_pb2.AdjustRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        self._allow(context, Action.OPERATE, request.member_id)
        result = self._service.adjust(
            request.member_id,
            request.amount,
            request.operator,
            request.note,
            idempotency_key=request.idempotency_key,
        )
        return _write_reply(result)

    @_guard
    def Revoke(
        self, request: points_pb2.RevokeRequest, context: grpc.ServicerContext
    ) -> points_pb2.WriteReply:
        self._allow(context, Action.OPERATE, request.member_id)
        result = self._service.revoke(
            request.member_id,
            request.earn_entry_id,
            request.operator,
            request.note,
            idempotency_key=request.idempotency_key,
        )
        return _write_reply(result)

    @_guard
    def RunExpiry(
        self, request: points_pb2.RunExpiryRequest, context: grpc.ServicerContext
    ) -> points_pb2.ExpirySummary:
        self._allow(context, Action.OPERATE)
        result = self._service.run_expiry()
        return points_pb2.ExpirySummary(entries=result.entries, points=result.points)

    @_guard
    def GetBalance(
        self, request: points_pb2.GetBalanceRequest, context: grpc.ServicerContext
    ) -> points_pb2.Balance:
        self._allow(context, Action.MEMBER_READ, request.member_id)
        return points_pb2.Balance(**asdict(self._service.balance(request.member_id)))

    @_guard
    def ListLots(
        self, request: points_pb2.ListLotsRequest, context: grpc.ServicerContext
    ) -> points_pb2.LotList:
        self._allow(context, Action.MEMBER_READ, request.member_id)
        lots = [points_pb2.Lot(**asdict(lot)) for lot in self._service.lots(request.member_id)]
        return points_pb2.LotList(lots=lots)

    @_guard
    def GetHistory(
        self, request: points_pb2.GetHistoryRequest, context: grpc.ServicerContext
    ) -> points_pb2.History:
        self._allow(context, Action.MEMBER_READ, request.member_id)
        if request.limit:
            views = self._service.history(request.member_id, request.limit)
        else:
            views = self._service.history(request.member_id)
        return points_pb2.History(entries=[_entry_message(v) for v in views])


class LedgerServicer(_Servicer, ledger_pb2_grpc.LedgerServicer):
    """``coalition.v1.Ledger`` over a NodeService: read-only, for operators and auditors."""

    @_guard
    def GetLatestHeader(
        self, request: ledger_pb2.GetLatestHeaderRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.LatestHeader:
        self._allow(context, Action.LEDGER_READ)
        signed = self._service.latest_header()
        if signed is None:
            return ledger_pb2.LatestHeader()
        return ledger_pb2.LatestHeader(header=_header_message(signed))

    @_guard
    def GetHeaders(
        self, request: ledger_pb2.GetHeadersRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.HeaderList:
        self._allow(context, Action.LEDGER_READ)
        if request.limit:
            headers = self._service.headers(request.start, request.limit)
        else:
            headers = self._service.headers(request.start)
        return ledger_pb2.HeaderList(headers=[_header_message(h) for h in headers])

    @_guard
    def GetBlock(
        self, request: ledger_pb2.GetBlockRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Block:
        self._allow(context, Action.LEDGER_READ)
        signed, entries = self._service.block(request.height)
        return ledger_pb2.Block(
            header=_header_message(signed), entry_json=[canonical_json(e) for e in entries]
        )

    @_guard
    def GetEntry(
        self, request: ledger_pb2.GetEntryRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Entry:
        self._allow(context, Action.LEDGER_READ)
        return _entry_message(self._service.entry(request.entry_id))

    @_guard
    def GetInclusionProof(
        self, request: ledger_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Proof:
        self._allow(context, Action.LEDGER_READ)
        tree_size = request.tree_size if request.HasField("tree_size") else None
        document = self._service.inclusion_proof(request.entry_id, tree_size)
        return ledger_pb2.Proof(proof_json=canonical_json(document))

    @_guard
    def GetConsistencyProof(
        self, request: ledger_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Proof:
        self._allow(context, Action.LEDGER_READ)
        document = self._service.consistency_proof(request.first_height, request.second_height)
        return ledger_pb2.Proof(proof_json=canonical_json(document))

    @_guard_stream
    def WatchHeaders(
        self, request: ledger_pb2.WatchHeadersRequest, context: grpc.ServicerContext
    ) -> Iterator[ledger_pb2.SignedHeader]:
        """Each header above ``after_height`` in order; ends when the call is cancelled
        (client gone or server stopping) or the node stops sealing."""
        self._allow(context, Action.LEDGER_READ)
        after = request.after_height
        while context.is_active():
            started = time.monotonic()
            signed = self._service.wait_for_header(after, WATCH_POLL_SECONDS)
            if signed is not None:
                yield _header_message(signed)
                after = signed.header.height
            elif time.monotonic() - started < WATCH_POLL_SECONDS / 2:
                return  # wait_for_header returns None early only when the node is stopping

    @_guard
    def GetPublicKey(
        self, request: ledger_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.PublicKey:
        self._allow(context, Action.LEDGER_READ)
        pem = self._service.public_key.to_pem().decode("ascii")
        return ledger_pb2.PublicKey(program=self._service.program, public_key_pem=pem)


def add_servicers(server: grpc.Server, service: NodeService, authenticator: Authenticator) -> None:
    """Register Points, Ledger and the standard health service (all SERVING) on ``server``."""
    points_pb2_grpc.add_PointsServicer_to_server(PointsServicer(service, authenticator), server)
    ledger_pb2_grpc.add_LedgerServicer_to_server(LedgerServicer(service, authenticator), server)
    checker = health.HealthServicer()
    for name in ("", POINTS_SERVICE, LEDGER_SERVICE):
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)


def serve_grpc(
    service: NodeService,
    authenticator: Authenticator,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 16,
    extra: Sequence[Callable[[grpc.Server], None]] = (),
) -> tuple[grpc.Server, int]:
    """Start a plaintext gRPC server and return it with its bound port (``port=0``: any
    free one). The caller MUST ``server.stop(grace)`` it; each open WatchHeaders stream
    holds a worker, so size ``max_workers`` for the expected watchers. ``extra`` adds
    more servicers (the coalition features', ``CoalitionNode.servicers``)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[("grpc.so_reuseport", 0)],  # a port in use is an error, never a shared port
    )
    add_servicers(server, service, authenticator)
    for add in extra:
        add(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    server.start()
    return server, bound
