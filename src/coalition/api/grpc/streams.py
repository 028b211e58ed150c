"""``LimitStreams``: a server interceptor that bounds the streaming calls open at once.

grpcio's sync server runs each call on a worker thread of its pool and a streaming call
holds its thread until the stream ends, so 16 idle WatchHeaders streams once took every
worker and the health check stopped answering. Each server of the node therefore has
``UNARY_WORKERS + max_streams`` workers, and this interceptor admits a streaming call only
while a ``StreamSlots`` slot is free, in all and for its caller (an API key, a partner
certificate): over the limit the call ends at once with the status of
``ResourceExhausted``, so at least ``UNARY_WORKERS`` workers stay for unary calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from coalition.api.errors import grpc_abort
from coalition.api.grpc.interceptors import Handler, WrapHandlers
from coalition.errors import ResourceExhausted
from coalition.node.limits import StreamSlots

CallerOf = Callable[[grpc.ServicerContext], str | None]
"""Names a call's caller for the per-caller limit (None: unknown, counted in all only)."""


class LimitStreams(WrapHandlers):
    """Wraps every streaming method's handler (built once per method and kept)."""

    def __init__(self, slots: StreamSlots, caller_of: CallerOf) -> None:
        super().__init__()
        self.slots = slots
        self._caller_of = caller_of

    def _admit(self, context: grpc.ServicerContext) -> Callable[[], None]:
        try:
            release = self.slots.open(self._caller_of(context))
        except ResourceExhausted as exc:
            grpc_abort(context, exc)
        context.add_callback(release)  # also when the call ends before the handler returns
        return release

    def wrap(self, method: str, handler: Handler) -> Handler:
        serialize, deserialize = handler.response_serializer, handler.request_deserializer
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming_reply(handler.unary_stream), deserialize, serialize
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming_reply(handler.stream_stream), deserialize, serialize
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary_reply(handler.stream_unary), deserialize, serialize
            )
        return handler

    def _streaming_reply(self, behaviour: Any) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            release = self._admit(context)
            try:
                yield from behaviour(request, context)
            finally:
                release()

        return call

    def _unary_reply(self, behaviour: Any) -> Any:
        def call(requests: Any, context: grpc.ServicerContext) -> Any:
            release = self._admit(context)
            try:
                return behaviour(requests, context)
            finally:
                release()

        return call
