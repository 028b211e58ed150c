"""Malformed request messages are the caller's fault: INVALID_ARGUMENT, never INTERNAL.

grpcio turns an exception of a method's request deserializer into INTERNAL ("Exception
deserializing request!"), so bytes that are no valid protobuf message looked like a bug
of the node. ``DecodeRequests`` is a server interceptor that hands each method raw bytes
and decodes them itself: a message that does not parse is refused with the status the
one error table gives ``InvalidArgument`` (``api.errors``), before any servicer runs.
Every server of the node (member/operator and partner) installs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from coalition.api.errors import grpc_status, refusal_message
from coalition.api.grpc.interceptors import Handler, WrapHandlers
from coalition.errors import InvalidArgument

Decode = Callable[[bytes], Any]


def _malformed(method: str, exc: Exception) -> InvalidArgument:
    return InvalidArgument(f"malformed request message for {method}: {exc}")


def _decoded(method: str, decode: Decode, data: bytes) -> Any:
    try:
        return decode(data)
    except Exception as exc:  # protobuf's DecodeError, or anything a bad message raises
        raise _malformed(method, exc) from None


def _unary(method: str, decode: Decode, behaviour: Any) -> Any:
    def call(data: bytes, context: grpc.ServicerContext) -> Any:
        try:
            request = _decoded(method, decode, data)
        except InvalidArgument as exc:
            context.abort(grpc_status(exc), refusal_message(exc))
        return behaviour(request, context)

    return call


def _streaming(method: str, decode: Decode, behaviour: Any) -> Any:
    def call(stream: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        # A bad message mid-stream raises InvalidArgument in the servicer's own loop,
        # where its ``guarded`` decorator maps it like any other refusal.
        return behaviour((_decoded(method, decode, data) for data in stream), context)

    return call


def _with_decoding(method: str, handler: Handler) -> Handler:
    decode = handler.request_deserializer
    if decode is None:
        return handler
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary(method, decode, handler.unary_unary), response_serializer=serialize
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _unary(method, decode, handler.unary_stream), response_serializer=serialize
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _streaming(method, decode, handler.stream_unary), response_serializer=serialize
        )
    return grpc.stream_stream_rpc_method_handler(
        _streaming(method, decode, handler.stream_stream), response_serializer=serialize
    )


class DecodeRequests(WrapHandlers):
    """The server interceptor; each method's wrapped handler is built once and kept."""

    def wrap(self, method: str, handler: Handler) -> Handler:
        return _with_decoding(method, handler)
