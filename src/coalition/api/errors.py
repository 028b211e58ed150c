"""The one place where core errors become HTTP statuses and gRPC codes, and where a
refusal's message is cut to a size every transport carries (``refusal_message``)."""

from __future__ import annotations

import math
from typing import NoReturn

import grpc

from coalition.errors import (
    CoalitionError,
    CorruptDatabase,
    CorruptStore,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    LedgerDamaged,
    NotFound,
    PartnerUnavailable,
    PermissionDenied,
    RequestTooLarge,
    ResourceExhausted,
    StorageUnavailable,
    Unauthenticated,
    VerificationError,
)

# Most specific first: the first matching class wins.
_MAPPING: tuple[tuple[type[CoalitionError], int, grpc.StatusCode], ...] = (
    (IdempotencyConflict, 409, grpc.StatusCode.FAILED_PRECONDITION),
    (RequestTooLarge, 413, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidArgument, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, 404, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, 409, grpc.StatusCode.FAILED_PRECONDITION),
    (Unauthenticated, 401, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, 403, grpc.StatusCode.PERMISSION_DENIED),
    (VerificationError, 422, grpc.StatusCode.INVALID_ARGUMENT),
    (LedgerDamaged, 503, grpc.StatusCode.DATA_LOSS),
    (CorruptDatabase, 503, grpc.StatusCode.UNAVAILABLE),
    (CorruptStore, 500, grpc.StatusCode.DATA_LOSS),
    (PartnerUnavailable, 503, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhausted, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageUnavailable, 503, grpc.StatusCode.UNAVAILABLE),
)

RETRY_AFTER_METADATA = "retry-after"
"""The gRPC trailing metadata key of a retry hint: whole seconds, as HTTP's Retry-After."""


MAX_MESSAGE_CHARS = 1024
"""Most characters of a refusal's message on the wire (HTTP body, gRPC status details):
far below gRPC's 8 KiB default metadata limit, past which a client sees
RESOURCE_EXHAUSTED instead of the refusal."""


def refusal_message(error: CoalitionError) -> str:
    """The message a transport sends for ``error``, at most ``MAX_MESSAGE_CHARS``."""
    text = str(error)
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[: MAX_MESSAGE_CHARS - 30] + f"... ({len(text):,} characters)"


def retry_after(error: CoalitionError) -> int | None:
    """Whole seconds (at least 1) after which the refused call may succeed, or None: a
    limit's wait, or a transient storage failure's (``store.failures.RETRY_AFTER_S``)."""
    if not isinstance(error, ResourceExhausted | StorageUnavailable) or error.retry_after_s is None:
        return None
    return max(1, math.ceil(error.retry_after_s))


def http_headers(error: CoalitionError) -> dict[str, str]:
    """The headers a refusal carries: ``WWW-Authenticate`` on a 401 (RFC 7235 §3.1),
    ``Retry-After`` (RFC 9110 §10.2.3) on a 429 or 503 that knows when to retry."""
    headers = {"WWW-Authenticate": "Bearer"} if http_status(error) == 401 else {}
    wait = retry_after(error)
    if wait is not None:
        headers["Retry-After"] = str(wait)
    return headers


def grpc_abort(context: grpc.ServicerContext, error: CoalitionError) -> NoReturn:
    """End the call with ``error``'s status and message, and its retry hint (if any) in
    the trailing metadata ``retry-after``: the one way a gRPC servicer refuses."""
    wait = retry_after(error)
    if wait is not None:
        context.set_trailing_metadata(((RETRY_AFTER_METADATA, str(wait)),))
    context.abort(grpc_status(error), refusal_message(error))


def http_status(error: CoalitionError) -> int:
    """HTTP status for a core error (500 for an unmapped kind, which is a bug)."""
    for kind, status, _ in _MAPPING:
        if isinstance(error, kind):
            return status
    return 500


def grpc_status(error: CoalitionError) -> grpc.StatusCode:
    """gRPC status code for a core error (INTERNAL for an unmapped kind, a bug)."""
    for kind, _, code in _MAPPING:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


_REFUSALS = (InvalidArgument, NotFound, FailedPrecondition, Unauthenticated, PermissionDenied)
"""The core errors a client re-raises from a node's refusal (anything else is the
transport's or the node's own failure)."""
_CLIENT_KINDS: dict[grpc.StatusCode, type[CoalitionError]] = {
    grpc_status(kind("")): kind for kind in _REFUSALS
}
_HTTP_CLIENT_KINDS: dict[int, type[CoalitionError]] = {
    http_status(kind("")): kind for kind in _REFUSALS
}


def error_kind(code: grpc.StatusCode) -> type[CoalitionError] | None:
    """The core error a client raises for a node's gRPC status (the inverse of
    ``grpc_status`` for refusals), or None for a transport-level status."""
    return _CLIENT_KINDS.get(code)


def http_error_kind(status: int) -> type[CoalitionError] | None:
    """The core error a client raises for a node's HTTP status (the inverse of
    ``http_status`` for refusals), or None for any other status."""
    return _HTTP_CLIENT_KINDS.get(status)
