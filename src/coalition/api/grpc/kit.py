"""What every servicer of the node shares: how a call is authorized and how an exception
becomes a status.

Each RPC authorizes its caller first (``Servicer.allow``), calls one node service and
builds the reply. Core errors are mapped once, by the ``guarded`` decorators, through
``coalition.api.errors.grpc_status``; anything else is a bug and becomes INTERNAL with
the traceback in the log, never on the wire.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import grpc

from coalition.api.errors import grpc_abort
from coalition.errors import CoalitionError, InvalidArgument
from coalition.node.auth import Action, Authenticator, Principal
from coalition.node.idempotency import KeyScope
from coalition.node.paging import MAX_PAGE

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _fail(context: grpc.ServicerContext, name: str, exc: Exception) -> None:
    """Abort the call for ``exc`` (always raises)."""
    if isinstance(exc, CoalitionError):
        grpc_abort(context, exc)
    if not context.is_active():  # the client went away, e.g. mid EarnBulk stream
        context.abort(grpc.StatusCode.CANCELLED, "call cancelled")
    log.exception("unexpected error in %s", name)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; see the node log")


def guarded(method: F) -> F:
    """Map a unary-reply RPC's exceptions to a status; every such RPC of the node has it."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            _fail(context, method.__name__, exc)

    return wrapper  # type: ignore[return-value]


def guarded_stream(method: F) -> F:
    """``guarded`` for a server-streaming RPC (errors may arise between messages)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            _fail(context, method.__name__, exc)

    return wrapper  # type: ignore[return-value]


class CallAuthorizer(Protocol):
    """Decides who makes a call and whether they may do ``action`` (on ``member_id``):
    returns the caller, or raises Unauthenticated or PermissionDenied."""

    def __call__(
        self, context: grpc.ServicerContext, action: Action, member_id: str | None = None
    ) -> Principal: ...


class ApiKeyAuthorizer:
    """Authorizes by the call's ``authorization`` metadata (``Bearer <key>``), as the
    HTTP API does by its header: the member/operator server's authorizer."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def __call__(
        self, context: grpc.ServicerContext, action: Action, member_id: str | None = None
    ) -> Principal:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}  # no -bin
        return self._authenticator.check(metadata.get("authorization"), action, member_id)


class Servicer:
    """Base of every servicer of the node: it needs only how to authorize its calls;
    each subclass takes the one feature or service it calls as well."""

    def __init__(self, authorize: CallAuthorizer) -> None:
        self._authorize = authorize

    def allow(
        self, context: grpc.ServicerContext, action: Action, member_id: str | None = None
    ) -> Principal:
        """The caller, once allowed to do ``action``; MUST be the first step of every RPC."""
        return self._authorize(context, action, member_id)

    def allow_write(
        self, context: grpc.ServicerContext, action: Action, member_id: str | None = None
    ) -> KeyScope:
        """``allow`` for a write that takes an idempotency key: the caller's key scope
        (``node.idempotency``), which the RPC MUST pass to the service with the key."""
        return KeyScope.of(self.allow(context, action, member_id))


def page_size(requested: int, default: int = MAX_PAGE) -> int:
    """A list call's ``page_size`` (or ``limit``): 0, proto3's unset, means ``default``;
    anything else goes to the service, which refuses what is outside 1..MAX_PAGE."""
    return requested or default


def integer_token(token: str, what: str) -> int | None:
    """A page token that carries an integer cursor (a log index, an evidence id); None for
    the first page. INVALID_ARGUMENT for a token this node never gave."""
    if not token:
        return None
    if not token.isascii() or not token.isdigit() or len(token) > 19:
        raise InvalidArgument(f"page_token {token[:40]!r} is not a page token of {what}")
    return int(token)
