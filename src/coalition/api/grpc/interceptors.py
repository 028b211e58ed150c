"""``WrapHandlers``: the base of the node's server interceptors that wrap method handlers.

grpcio asks a server interceptor for a method's handler on every call; each subclass
builds its wrapped handler once per method (``wrap``) and this base keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # the stubs' generics; at run time grpc's classes take no parameters
    Handler = grpc.RpcMethodHandler[Any, Any]
    Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    Interceptor = grpc.ServerInterceptor


class WrapHandlers(Interceptor):
    """A server interceptor whose ``wrap`` MUST return a handler of the same arity."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler | None] = {}

    def wrap(self, method: str, handler: Handler) -> Handler:
        raise NotImplementedError

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        if method not in self._handlers:
            handler = continuation(handler_call_details)
            self._handlers[method] = None if handler is None else self.wrap(method, handler)
        return self._handlers[method]
