"""Partner messages at the node: the one inbox that checks them, and the client that sends.

``PartnerInbox.handle`` is the single place where a message from another node is
checked (sender in the manifest, TLS peer, signature, ``to``, clock skew, replay) before
a feature's handler sees it; replies are signed with the node's ledger key.
``PartnerClient`` signs, sends over a ``PartnerTransport`` (mutual-TLS gRPC in
production, ``api.grpc.partner.GrpcTransport``; ``InMemoryNetwork`` in protocol tests)
and checks the signed reply the same way. This module imports no transport.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PartnerUnavailable,
    PermissionDenied,
    Unauthenticated,
    VerificationError,
)
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import format_time
from coalition.ledger.envelope import (
    MAX_CLOCK_SKEW,
    Envelope,
    SignedMessage,
    open_message,
    parse_envelope,
    sign_message,
    verify_signature,
)
from coalition.ledger.keys import SigningKey
from coalition.node.manifest import Manifest
from coalition.node.sequencer import Sequencer
from coalition.store.columns import to_micros
from coalition.store.partners import SeenMessageRow

log = logging.getLogger("coalition.partners")

SEEN_WINDOW = timedelta(seconds=600)
"""Seen message ids are kept this long: longer than any ``at`` the skew check lets in."""
PRUNE_EVERY = timedelta(seconds=60)
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""gRPC message size limit on the partner channel (above the envelope's own limit)."""

Handler = Callable[[str, JsonObject], tuple[str, JsonObject]]
"""``handler(sender, body) -> (reply kind, reply body)``; a CoalitionError refuses."""

_KIND = re.compile(r"[a-z][a-z0-9-]{0,63}", re.ASCII)


def _now() -> datetime:
    return datetime.now(UTC)


def _replay(sender: str, message_id: str) -> FailedPrecondition:
    return FailedPrecondition(f"message {message_id} from {sender} was already received (replay)")


class ReplayGuard:
    """Remembers ``(sender, message id)`` pairs for SEEN_WINDOW, in the node's database
    (written through its sequencer)."""

    def __init__(self, sequencer: Sequencer, window: timedelta = SEEN_WINDOW) -> None:
        self.sequencer = sequencer
        self._window = window
        self._table = SeenMessageRow.__table__  # type: ignore[attr-defined]
        self._lock = threading.Lock()
        self._pruned_at: datetime | None = None

    def record(self, sender: str, message_id: str, now: datetime) -> None:
        """Record the pair; FailedPrecondition if it was recorded before (a replay)."""
        self._maybe_prune(now)
        try:
            self.sequencer.run(lambda tx: self._insert(tx.conn, sender, message_id, now))
        except IntegrityError:  # another replica on the same database recorded it first
            raise _replay(sender, message_id) from None

    def _insert(self, conn: Connection, sender: str, message_id: str, now: datetime) -> None:
        table = self._table
        seen = select(table.c.message_id).where(
            table.c.sender == sender, table.c.message_id == message_id
        )
        if conn.execute(seen).first() is not None:
            raise _replay(sender, message_id)  # a refusal: nothing written
        conn.execute(
            insert(table).values(sender=sender, message_id=message_id, seen_at=to_micros(now))
        )

    def prune(self, now: datetime) -> int:
        """Forget pairs seen before ``now - window``; the number forgotten."""
        cutoff = to_micros(now - self._window)

        def forget(conn: Connection) -> int:
            result = conn.execute(delete(self._table).where(self._table.c.seen_at < cutoff))
            return int(result.rowcount or 0)

        return self.sequencer.run(lambda tx: forget(tx.conn))

    def _maybe_prune(self, now: datetime) -> None:
        with self._lock:
            due = self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY
            if due:
                self._pruned_at = now
        if due:
            self.prune(now)


class PartnerInbox:
    """Checks every incoming partner message, dispatches it by kind, signs the reply."""

    def __init__(
        self,
        program: str,
        manifest: Manifest,
        sequencer: Sequencer,
        signing_key: SigningKey,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        manifest.partner(program)
        if manifest.public_key(program) != signing_key.public_key:
            raise InvalidArgument(
                f"the signing key is not {program}'s key in the manifest {manifest.path}"
            )
        self.program = program
        self.manifest = manifest
        self._key = signing_key
        self._clock = clock or _now
        self._handlers: dict[str, Handler] = {}
        self.replay_guard = ReplayGuard(sequencer)

    def register(self, kind: str, handler: Handler) -> None:
        """Route messages of ``kind`` to ``handler``; one handler per kind."""
        if not _KIND.fullmatch(kind):
            raise InvalidArgument(f"bad message kind {kind!r}")
        if kind in self._handlers:
            raise InvalidArgument(f"a handler for {kind!r} messages is already registered")
        self._handlers[kind] = handler

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def handle(self, msg: SignedMessage, peer_program: str | None) -> SignedMessage:
        """Check ``msg``, run its handler, return the signed reply; or raise and log why.

        ``peer_program`` is the program the transport authenticated (the TLS client
        certificate's CN), or None for a transport that authenticates no one.
        """
        envelope = self._check(msg, peer_program)
        handler = self._handlers[envelope.kind]
        try:
            reply_kind, reply_body = handler(envelope.sender, envelope.body)
        except CoalitionError as exc:
            log.info(
                "%s message %s from %s refused by its handler: %s",
                envelope.kind,
                envelope.id,
                envelope.sender,
                exc,
            )
            raise
        reply = sign_message(
            self._key, reply_kind, self.program, envelope.sender, reply_body, self._clock()
        )
        log.debug("answered %s message %s from %s", envelope.kind, envelope.id, envelope.sender)
        return reply

    def _check(self, msg: SignedMessage, peer_program: str | None) -> Envelope:
        claimed = "?"
        try:
            envelope = parse_envelope(msg.envelope)
            claimed = f"{envelope.kind} message {envelope.id} from {envelope.sender}"
            try:
                key = self.manifest.public_key(envelope.sender)
            except NotFound:
                raise Unauthenticated(f"{envelope.sender!r} is not in the manifest") from None
            if peer_program is not None and peer_program != envelope.sender:
                raise PermissionDenied(
                    f"signed by {envelope.sender} but sent over {peer_program}'s TLS certificate"
                )
            try:
                verify_signature(msg, envelope, key)
            except VerificationError as exc:
                raise Unauthenticated(str(exc)) from None
            if envelope.to != self.program:
                raise PermissionDenied(f"addressed to {envelope.to}, not to {self.program}")
            now = self._clock()
            if abs(envelope.at - now) > MAX_CLOCK_SKEW:
                raise FailedPrecondition(
                    f"sent at {format_time(envelope.at)}, more than "
                    f"{int(MAX_CLOCK_SKEW.total_seconds())} s from this node's clock"
                )
            if envelope.kind not in self._handlers:
                raise InvalidArgument(f"{self.program} does not handle {envelope.kind!r} messages")
            self.replay_guard.record(envelope.sender, envelope.id, now)
        except CoalitionError as exc:
            log.warning(
                "refused %s (TLS peer %s): %s: %s",
                claimed,
                peer_program or "-",
                type(exc).__name__,
                exc,
            )
            raise
        return envelope


# --- sending --------------------------------------------------------------------------


class PartnerTransport(Protocol):
    """Carries a signed message to a partner and brings back its signed reply.

    Raises the CoalitionError the partner refused with, or PartnerUnavailable when the
    partner cannot be reached in ``timeout`` seconds.
    """

    def send(self, to: str, msg: SignedMessage, timeout: float) -> SignedMessage: ...

    def close(self) -> None: ...


class InMemoryNetwork:
    """Inboxes reachable by program id, without sockets: for fast protocol tests.

    Every check of ``PartnerInbox.handle`` still runs; the sender's program stands in for
    the TLS peer name. ``down`` makes a partner unreachable.
    """

    def __init__(self) -> None:
        self._inboxes: dict[str, PartnerInbox] = {}
        self.down: set[str] = set()

    def add(self, inbox: PartnerInbox) -> None:
        self._inboxes[inbox.program] = inbox

    def transport(self, program: str) -> PartnerTransport:
        return _InMemoryTransport(self, program)

    def deliver(self, sender: str, to: str, msg: SignedMessage) -> SignedMessage:
        inbox = self._inboxes.get(to)
        if inbox is None or to in self.down:
            raise PartnerUnavailable(f"{to} is unavailable (no in-memory inbox)")
        return inbox.handle(msg, sender)


class _InMemoryTransport:
    def __init__(self, network: InMemoryNetwork, program: str) -> None:
        self._network = network
        self._program = program

    def send(self, to: str, msg: SignedMessage, timeout: float) -> SignedMessage:
        return self._network.deliver(self._program, to, msg)

    def close(self) -> None:
        return None


class PartnerClient:
    """Sends signed partner messages and checks the signed replies.

    A reply must be signed with the partner's manifest key, come from the partner called,
    be addressed to this program, be within MAX_CLOCK_SKEW of this clock and carry an id
    not seen before; otherwise VerificationError (a tampered or replayed reply).
    """

    def __init__(
        self,
        program: str | Manifest,
        manifest: Manifest | str,
        signing_key: SigningKey,
        transport: PartnerTransport,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        # docs/coalition.md writes (manifest, own_program, ...): accept that order too.
        own, info = (manifest, program) if isinstance(program, Manifest) else (program, manifest)
        if not isinstance(own, str) or not isinstance(info, Manifest):
            raise InvalidArgument("PartnerClient takes (program, manifest, signing_key, transport)")
        info.partner(own)
        self.program: str = own
        self.manifest: Manifest = info
        self._key = signing_key
        self._clock = clock or _now
        self.transport: PartnerTransport = transport
        self._reply_ids: OrderedDict[tuple[str, str], datetime] = OrderedDict()
        self._lock = threading.Lock()

    def call_signed(
        self, to: str, kind: str, body: JsonObject, timeout: float = 5.0
    ) -> tuple[Envelope, SignedMessage]:
        """Send ``body`` as a ``kind`` message to ``to``; the checked reply and its bytes."""
        self.manifest.partner(to)
        if to == self.program:
            raise InvalidArgument("a node does not send partner messages to itself")
        msg = sign_message(self._key, kind, self.program, to, body, self._clock())
        reply = self.transport.send(to, msg, timeout)
        return self._check_reply(to, kind, reply), reply

    def call(
        self, to: str, kind: str, body: JsonObject, timeout: float = 5.0
    ) -> tuple[str, JsonObject]:
        """Send and return the verified reply's (kind, body)."""
        envelope, _ = self.call_signed(to, kind, body, timeout)
        return envelope.kind, envelope.body

    def _check_reply(self, to: str, kind: str, reply: SignedMessage) -> Envelope:
        try:
            envelope = open_message(reply, self.manifest.public_key)
            if envelope.sender != to:
                raise VerificationError(f"the reply comes from {envelope.sender}, not {to}")
            if envelope.to != self.program:
                raise VerificationError(f"the reply is addressed to {envelope.to}")
            now = self._clock()
            if abs(envelope.at - now) > MAX_CLOCK_SKEW:
                raise VerificationError(f"the reply was signed at {format_time(envelope.at)}")
            self._remember_reply(envelope, now)
        except (InvalidArgument, NotFound, VerificationError) as exc:
            log.warning("refused the reply of %s to %s: %s", to, kind, exc)
            raise VerificationError(f"{to}'s reply to {kind} is refused: {exc}") from None
        return envelope

    def _remember_reply(self, envelope: Envelope, now: datetime) -> None:
        key = (envelope.sender, envelope.id)
        with self._lock:
            while self._reply_ids:
                oldest_key, seen = next(iter(self._reply_ids.items()))
                if now - seen <= SEEN_WINDOW:
                    break
                del self._reply_ids[oldest_key]
            if key in self._reply_ids:
                raise VerificationError(f"reply id {envelope.id} was received before (replay)")
            self._reply_ids[key] = now

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> PartnerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
