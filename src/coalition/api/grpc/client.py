"""A small typed client for one node's Points and Ledger gRPC services (CLI, demo, tests).

Replies come back as the service's own views (``coalition.node.views``) and JSON objects
parsed with ``parse_json`` (entries, signed headers, proof documents), so a caller can
verify them with ``coalition.ledger`` directly. A refused call raises the matching
``coalition.errors`` kind with the node's message; a transport failure (node down,
deadline) raises ``TransportError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coalition.api.errors import error_kind
from coalition.errors import (
    CoalitionError,
    InvalidArgument,
)
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.node.views import (
    BalanceView,
    BulkResult,
    EntryView,
    ExpiryResult,
    LotView,
    PurchaseRow,
    RowError,
    WriteResult,
)
from coalition.v1 import ledger_pb2, ledger_pb2_grpc, points_pb2, points_pb2_grpc

_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")


class TransportError(CoalitionError):
    """The call did not get a verdict from the node: unreachable, timed out or crashed."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


# The reverse of coalition.api.errors, derived from it so the two never disagree. Codes
# shared by several kinds come back as the most general one (IdempotencyConflict and
# InsufficientPoints arrive as FailedPrecondition).
def _error(exc: grpc.RpcError) -> CoalitionError:
    code: grpc.StatusCode = exc.code()
    message: str = exc.details() or ""
    kind = error_kind(code)
    return kind(message) if kind is not None else TransportError(code, message)


def _object(data: bytes) -> JsonObject:
    value = parse_json(data)
    if not isinstance(value, dict):
        raise InvalidArgument("the node sent JSON that is not an object")
    return value


def _written(reply: points_pb2.WriteReply) -> WriteResult:
    return WriteResult(_object(reply.entry_json), reply.replayed)


def _entry(message: ledger_pb2.Entry) -> EntryView:
    index = message.log_index if message.HasField("log_index") else None
    return EntryView(_object(message.entry_json), index)


class HeaderWatch:
    """Signed headers (JSON objects) as the node seals them; iterate, then ``cancel``."""

    def __init__(self, call: grpc.CallIterator[ledger_pb2.SignedHeader]) -> None:
        self._call = call

    def __iter__(self) -> Iterator[JsonObject]:
        try:
            for message in self._call:
                yield _object(message.signed_header_json)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise _error(exc) from None

    def cancel(self) -> None:
        self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it unannotated

    def __enter__(self) -> HeaderWatch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class NodeClient:
    """One channel to one node, authenticated with one API key (None: no credentials).

    ``timeout`` is the deadline of each unary call in seconds; ``tls_roots`` (PEM CA
    certificates) connects over TLS to a node whose ``[tls]`` is on. Use as a context
    manager, or call ``close``.
    """

    def __init__(
        self,
        target: str,
        api_key: str | None,
        timeout: float = 10.0,
        *,
        tls_roots: bytes | None = None,
    ) -> None:
        self._channel = (
            grpc.insecure_channel(target)
            if tls_roots is None
            else grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_roots))
        )
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._points = points_pb2_grpc.PointsStub(self._channel)
        self._ledger = ledger_pb2_grpc.LedgerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[_Request, _Reply], request: _Request
    ) -> _Reply:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def _write(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, points_pb2.WriteReply],
        request: _Request,
    ) -> WriteResult:
        return _written(self._call(method, request))

    # --- points writes ------------------------------------------------------------------

    def enroll(self, member_id: str, *, idempotency_key: str) -> WriteResult:
        request = points_pb2.EnrollRequest(member_id=member_id, idempotency_key=idempotency_key)
        return self._write(self._points.Enroll, request)

    def earn_purchase(
        self,
        member_id: str,
        reference: str,
        spend_minor: int,
        category: str = "",
        *,
        idempotency_key: str,
    ) -> WriteResult:
        request = points_pb2.EarnPurchaseRequest(
            member_id=member_id,
            reference=reference,
            spend_minor=spend_minor,
            category=category,
            idempotency_key=idempotency_key,
        )
        return self._write(self._points.EarnPurchase, request)

    def earn_reward(
        self, member_id: str, event: str, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        request = points_pb2.EarnRewardRequest(
            member_id=member_id, event=event, reference=reference, idempotency_key=idempotency_key
        )
        return self._write(self._points.EarnReward, request)

    def earn_bulk(self, rows: Iterable[PurchaseRow], *, timeout: float | None = None) -> BulkResult:
        """Stream ``rows`` (consumed lazily, so a large file is never held in memory).

        ``timeout`` defaults to none: a bulk load takes as long as its size demands.
        """
        messages = (
            points_pb2.PurchaseRow(
                member_id=row.member_id,
                reference=row.reference,
                spend_minor=row.spend_minor,
                category=row.category,
                idempotency_key=row.idempotency_key,
            )
            for row in rows
        )
        try:
            reply = self._points.EarnBulk(messages, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        rejected = [RowError(e.row, e.idempotency_key, e.message) for e in reply.rejected]
        return BulkResult(reply.accepted, reply.replayed, rejected)

    def reverse_purchase(
        self, member_id: str, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        request = points_pb2.ReversePurchaseRequest(
            member_id=member_id, reference=reference, idempotency_key=idempotency_key
        )
        return self._write(self._points.ReversePurchase, request)

    def redeem(
        self, member_id: str, amount: int, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        request = points_pb2.RedeemRequest(
            member_id=member_id, amount=amount, reference=reference, idempotency_key=idempotency_key
        )
        return self._write(self._points.Redeem, request)

    def transfer(
        self, member_id: str, to_member_id: str, amount: int, note: str, *, idempotency_key: str
    ) -> WriteResult:
        request = points_pb2.TransferRequest(
            member_id=member_id,
            to_member_id=to_member_id,
            amount=amount,
            note=note,
            idempotency_key=idempotency_key,
        )
        return self._write(self._points.Transfer, request)

    def adjust(
        self, member_id: str, amount: int, operator: str, note: str, *, idempotency_key: str
    ) -> WriteResult:
        request = points_pb2.AdjustRequest(
            member_id=member_id,
            amount=amount,
            operator=operator,
            note=note,
            idempotency_key=idempotency_key,
        )
        return self._write(self._points.Adjust, request)

    def revoke(
        self, member_id: str, earn_entry_id: str, operator: str, note: str, *, idempotency_key: str
    ) -> WriteResult:
        request = points_pb2.RevokeRequest(
            member_id=member_id,
            earn_entry_id=earn_entry_id,
            operator=operator,
            note=note,
            idempotency_key=idempotency_key,
        )
        return self._write(self._points.Revoke, request)

    def run_expiry(self) -> ExpiryResult:
        reply = self._call(self._points.RunExpiry, points_pb2.RunExpiryRequest())
        return ExpiryResult(reply.entries, reply.points)

    # --- member reads -------------------------------------------------------------------

    def balance(self, member_id: str) -> BalanceView:
        reply = self._call(
            self._points.GetBalance, points_pb2.GetBalanceRequest(member_id=member_id)
        )
        return BalanceView(
            reply.member_id,
            reply.account,
            reply.spendable,
            reply.pending,
            reply.held,
            reply.tier,
            reply.qualifying,
        )

    def lots(self, member_id: str) -> list[LotView]:
        """Every lot of the member, oldest first, read a page at a time."""
        found, token = self.lots_page(member_id)
        while token is not None:
            more, token = self.lots_page(member_id, page_token=token)
            found.extend(more)
        return found

    def lots_page(
        self, member_id: str, page_size: int = 0, page_token: str | None = None
    ) -> tuple[list[LotView], str | None]:
        """One page of the member's lots (``page_size`` 0: the server's 1,000) and the
        token of the next (None after the last)."""
        request = points_pb2.ListLotsRequest(
            member_id=member_id, page_size=page_size, page_token=page_token or ""
        )
        reply = self._call(self._points.ListLots, request)
        lots = [
            LotView(
                lot.id,
                lot.amount,
                lot.remaining,
                lot.qualifying,
                lot.earned_at,
                lot.available_at,
                lot.expires_at,
                lot.ref if lot.HasField("ref") else None,
                lot.reversed,
            )
            for lot in reply.lots
        ]
        return lots, reply.next_page_token or None

    def history(self, member_id: str, limit: int = 100) -> list[EntryView]:
        """The member's newest ``limit`` entries."""
        return self.history_page(member_id, limit)[0]

    def history_page(
        self, member_id: str, limit: int = 100, page_token: str | None = None
    ) -> tuple[list[EntryView], str | None]:
        """One page of the member's entries, newest first, older than the page whose
        token this is; and the token of the next older page (None after the last)."""
        request = points_pb2.GetHistoryRequest(
            member_id=member_id, limit=limit, page_token=page_token or ""
        )
        reply = self._call(self._points.GetHistory, request)
        return [_entry(message) for message in reply.entries], reply.next_page_token or None

    # --- ledger reads -------------------------------------------------------------------

    def latest_header(self) -> JsonObject | None:
        """The newest signed header, or None before the first block."""
        reply = self._call(self._ledger.GetLatestHeader, ledger_pb2.GetLatestHeaderRequest())
        return _object(reply.header.signed_header_json) if reply.HasField("header") else None

    def headers(self, start: int, limit: int = 1000) -> list[JsonObject]:
        request = ledger_pb2.GetHeadersRequest(start=start, limit=limit)
        reply = self._call(self._ledger.GetHeaders, request)
        return [_object(h.signed_header_json) for h in reply.headers]

    def block(self, height: int) -> tuple[JsonObject, list[JsonObject]]:
        reply = self._call(self._ledger.GetBlock, ledger_pb2.GetBlockRequest(height=height))
        return _object(reply.header.signed_header_json), [_object(e) for e in reply.entry_json]

    def entry(self, entry_id: str) -> EntryView:
        reply = self._call(self._ledger.GetEntry, ledger_pb2.GetEntryRequest(entry_id=entry_id))
        return _entry(reply)

    def inclusion_proof(self, entry_id: str, tree_size: int | None = None) -> JsonObject:
        request = ledger_pb2.GetInclusionProofRequest(entry_id=entry_id, tree_size=tree_size)
        reply = self._call(self._ledger.GetInclusionProof, request)
        return _object(reply.proof_json)

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject:
        request = ledger_pb2.GetConsistencyProofRequest(
            first_height=first_height, second_height=second_height
        )
        reply = self._call(self._ledger.GetConsistencyProof, request)
        return _object(reply.proof_json)

    def watch_headers(self, after_height: int, *, timeout: float | None = None) -> HeaderWatch:
        """Headers above ``after_height`` (-1: from genesis) as they are sealed, until
        cancelled or ``timeout`` seconds (None: no deadline)."""
        request = ledger_pb2.WatchHeadersRequest(after_height=after_height)
        call = self._ledger.WatchHeaders(request, metadata=self._metadata, timeout=timeout)
        return HeaderWatch(call)

    def public_key_pem(self) -> str:
        reply = self._call(self._ledger.GetPublicKey, ledger_pb2.GetPublicKeyRequest())
        return reply.public_key_pem

    def health(self, service: str = "") -> str:
        """The standard health status name of ``service`` ("" = the whole server)."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = self._call(self._health.Check, request)
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)  # untyped stub
        return name
