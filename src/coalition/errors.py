"""The one exception hierarchy of Coalition, split by who is at fault.

Transports map these once (``api/errors.py``) to HTTP and gRPC status codes; the core
raises nothing else on purpose. Every message says what is wrong in words a caller can act
on.
"""

from __future__ import annotations

QUOTE_CHARS = 40
"""Most characters of a refused value a message quotes (``quoted``)."""


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for an error message, cut to a short prefix when longer: a refusal
    MUST NOT echo a whole refused value (a 10 MiB note would give a 10 MiB answer)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str | bytes) else "cut"
    return f"{text[:limit]}... ({size})"


class CoalitionError(Exception):
    """Base of every error Coalition raises on purpose."""


class InvalidArgument(CoalitionError):
    """The request itself is malformed: a bad amount, id, format or out-of-range value."""


class RequestTooLarge(InvalidArgument):
    """The request is larger than the transport accepts (an HTTP body over its limit)."""


class NotFound(CoalitionError):
    """The request names something that does not exist (a member, an entry, a block)."""


class FailedPrecondition(CoalitionError):
    """The request is well formed but the current state refuses it."""


class InsufficientPoints(FailedPrecondition):
    """A debit asks for more spendable points than the account holds."""


class IdempotencyConflict(FailedPrecondition):
    """An idempotency key was reused with a different request body."""


class Unauthenticated(CoalitionError):
    """No credentials, or credentials that match no known key."""


class PermissionDenied(CoalitionError):
    """Valid credentials whose role or scope does not allow the call."""


class VerificationError(CoalitionError):
    """Signed data, a proof or a chain failed verification: someone tampered or lied."""


class CorruptStore(CoalitionError):
    """The node's own stored data does not parse: the operator's fault, never the caller's."""


class LedgerDamaged(CorruptStore):
    """The node's own stored ledger fails the node's own verification (rows changed
    behind its back: an entry, a tree node, a header): what it cannot prove it does not
    serve, and a node that finds this at start does not start (docs/operations.md,
    "Integrity checks")."""


class PartnerUnavailable(CoalitionError):
    """A partner node could not be reached or did not answer in time (network, TLS
    handshake, deadline, its own internal error). The message may or may not have been
    handled: retry it (handlers are idempotent) or ask the partner to abort; never assume
    it failed."""


class ResourceExhausted(CoalitionError):
    """The caller is over one of the node's named limits (``node.limits``): nothing was
    done; ``retry_after_s``, when known, says when the same call may succeed."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageUnavailable(CoalitionError):
    """The node's own database cannot do the work now: its disk is full, it is read-only,
    the disk gives I/O errors, or its server cannot be reached (``store.failures``
    classifies these). The operator's fault or the machine's, never the caller's: the
    work was not done and nothing of it was kept (a write is not acknowledged), so the
    same call MAY be retried once the operator fixed the storage; ``retry_after_s`` says
    when it is worth trying again."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CorruptDatabase(CorruptStore):
    """The database's files themselves are damaged (a corrupt page, a file that is not a
    database): nothing a retry fixes; the operator restores the database from a backup
    or a replica (docs/operations.md, "When storage fails")."""
