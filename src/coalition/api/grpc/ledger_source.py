"""A partner's ledger reads over gRPC, as the witness follows them.

``GrpcLedgerSource`` is the witness's ``LedgerSource`` (``node/features/witness.py``) on
``coalition.v1.Ledger`` over the mutual-TLS partner channel. Every gRPC failure (partner
down, deadline, the stream cancelled by ``close``, a refused call) is raised as the
core's ``LedgerSourceFailed``, so the follower handles core errors only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonValue, parse_json
from coalition.node.features.witness import LedgerSourceFailed
from coalition.v1 import ledger_pb2, ledger_pb2_grpc

CALL_TIMEOUT_S = 10.0


def _signed_from_bytes(data: bytes) -> SignedHeader:
    return SignedHeader.from_json(parse_json(data))


def _failed(exc: grpc.RpcError) -> LedgerSourceFailed:
    return LedgerSourceFailed(exc.code().name, exc.details())


class GrpcLedgerSource:
    """``coalition.v1.Ledger`` of a partner over its (mutual-TLS) partner channel."""

    def __init__(self, channel: grpc.Channel, timeout: float = CALL_TIMEOUT_S) -> None:
        self._stub = ledger_pb2_grpc.LedgerStub(channel)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._calls: list[Any] = []
        self._closed = False

    def watch(self, after_height: int) -> Iterator[SignedHeader]:
        call = self._stub.WatchHeaders(ledger_pb2.WatchHeadersRequest(after_height=after_height))
        with self._lock:
            if self._closed:
                call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it unannotated
                return
            self._calls.append(call)
        try:
            for message in call:
                yield _signed_from_bytes(message.signed_header_json)
        except grpc.RpcError as exc:
            raise _failed(exc) from exc
        finally:
            with self._lock:
                self._calls.remove(call)

    def headers(self, start: int, limit: int) -> list[SignedHeader]:
        try:
            reply = self._stub.GetHeaders(
                ledger_pb2.GetHeadersRequest(start=start, limit=limit), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise _failed(exc) from exc
        return [_signed_from_bytes(m.signed_header_json) for m in reply.headers]

    def consistency(self, first_height: int, second_height: int) -> JsonValue:
        try:
            reply = self._stub.GetConsistencyProof(
                ledger_pb2.GetConsistencyProofRequest(
                    first_height=first_height, second_height=second_height
                ),
                timeout=self._timeout,
            )
        except grpc.RpcError as exc:
            raise _failed(exc) from exc
        return parse_json(reply.proof_json)

    def block(self, height: int) -> list[bytes]:
        try:
            reply = self._stub.GetBlock(
                ledger_pb2.GetBlockRequest(height=height), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise _failed(exc) from exc
        return list(reply.entry_json)

    def close(self) -> None:
        """Cancel a running watch (the follower's thread then sees the stream end)."""
        with self._lock:
            self._closed = True
            calls = list(self._calls)
        for call in calls:
            call.cancel()
