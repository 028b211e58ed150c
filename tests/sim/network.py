"""The simulated partner network: ``PartnerTransport`` and the witness's
``LedgerSource`` between the nodes of one run, faults chosen by the run's seed.

A partner call is request/reply (``PartnerTransport``): the sender waits. So every
fault is decided when the call is made, by the seeded generator:

- the request is lost, or the pair is partitioned, or the partner is down: the sender
  gets PartnerUnavailable and the partner saw nothing;
- the request is delayed past the sender's timeout: PartnerUnavailable now, and the
  request is queued and handled when it falls due (``deliver_due``), its reply lost;
- the request is duplicated: handled now and again when the copy falls due (the
  partner's replay guard, or its clock-skew check, must refuse the copy);
- the reply is lost: the partner acted, the sender gets PartnerUnavailable;
- the sender crashes while the reply is on its way: ``SenderCrashed`` unwinds the
  sender's stack (as a kill would stop it there, its open transactions rolled back) and
  the scheduler discards the node.

Queued requests fall due in the order the generator shuffles them, so they overtake
each other and newer calls (reordering). A partner's refusal travels back as the
CoalitionError it raised, as over gRPC.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from coalition.errors import CoalitionError, PartnerUnavailable
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonValue, canonical_json
from coalition.ledger.envelope import SignedMessage, parse_envelope
from coalition.node.features.witness import GAP_BATCH, LedgerSourceFailed
from coalition.node.partners import PartnerInbox, PartnerTransport
from coalition.node.service import NodeService

from sim.clock import SimClock
from sim.trace import Trace


@dataclass(frozen=True)
class Faults:
    """Probabilities of each fault, per call (or per ledger read)."""

    drop: float = 0.04
    delay: float = 0.04
    duplicate: float = 0.04
    drop_reply: float = 0.05
    source_failure: float = 0.05
    crash_sender: float = 0.01
    max_delay_s: float = 30.0


CALM = Faults(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
"""No faults: the network of the final quiescent phase."""


class SenderCrashed(BaseException):
    """The sending node crashed with a partner's reply on its way (not an Exception, so
    no handler of the node's code takes it for an error it could recover from)."""

    def __init__(self, program: str) -> None:
        super().__init__(f"{program} crashed waiting for a reply")
        self.program = program


@dataclass(order=True)
class _Queued:
    due: timedelta
    seq: int
    sender: str = field(compare=False)
    to: str = field(compare=False)
    msg: SignedMessage = field(compare=False)


def _kind(msg: SignedMessage) -> str:
    try:
        return parse_envelope(msg.envelope).kind
    except CoalitionError:
        return "?"


class SimNetwork:
    """The links between the running nodes of one run."""

    def __init__(self, rng: random.Random, clock: SimClock, trace: Trace) -> None:
        self._rng = rng
        self._clock = clock
        self._trace = trace
        self._inboxes: dict[str, PartnerInbox] = {}
        self._services: dict[str, NodeService] = {}
        self._queue: list[_Queued] = []
        self._seq = 0
        self.cut: set[frozenset[str]] = set()
        """Partitioned pairs of programs."""
        self.faults = Faults()
        self.calls = 0
        self.faults_injected = 0

    # --- nodes coming and going --------------------------------------------------------

    def attach(self, inbox: PartnerInbox, service: NodeService) -> None:
        self._inboxes[inbox.program] = inbox
        self._services[inbox.program] = service

    def detach(self, program: str) -> None:
        self._inboxes.pop(program, None)
        self._services.pop(program, None)

    def reachable(self, sender: str, to: str) -> bool:
        up = sender in self._inboxes and to in self._inboxes
        return up and frozenset((sender, to)) not in self.cut

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def transport(self, program: str) -> PartnerTransport:
        return _SimTransport(self, program)

    def source(self, follower: str, program: str) -> SimLedgerSource:
        return SimLedgerSource(self, follower, program)

    # --- calls ---------------------------------------------------------------------------

    def _fault(self, p: float) -> bool:
        hit = p > 0 and self._rng.random() < p
        self.faults_injected += hit
        return hit

    def _later(self, sender: str, to: str, msg: SignedMessage) -> timedelta:
        delay = timedelta(seconds=self._rng.uniform(0.1, self.faults.max_delay_s))
        self._seq += 1
        self._queue.append(
            _Queued(self._clock.monotonic_delta() + delay, self._seq, sender, to, msg)
        )
        return delay

    def send(self, sender: str, to: str, msg: SignedMessage) -> SignedMessage:
        self.calls += 1
        kind = _kind(msg)
        what = f"{kind} {sender}->{to}"
        if not self.reachable(sender, to):
            self._trace.note(f"net {what}: unreachable")
            raise PartnerUnavailable(f"{to} is unreachable from {sender} (simulated)")
        if self._fault(self.faults.drop):
            self._trace.note(f"net {what}: request lost")
            raise PartnerUnavailable(f"{to} did not answer {kind} (simulated: request lost)")
        if self._fault(self.faults.delay):
            delay = self._later(sender, to, msg)
            self._trace.note(f"net {what}: request delayed {delay.total_seconds():.3f} s")
            raise PartnerUnavailable(f"{to} did not answer {kind} in time (simulated: delayed)")
        if self._fault(self.faults.duplicate):
            delay = self._later(sender, to, msg)
            self._trace.note(f"net {what}: duplicated, copy in {delay.total_seconds():.3f} s")
        try:
            reply = self._inboxes[to].handle(msg, sender)
        except CoalitionError as exc:
            self._trace.note(f"net {what}: refused {type(exc).__name__}: {exc}")
            raise
        if self._fault(self.faults.drop_reply):
            self._trace.note(f"net {what}: handled, reply lost")
            raise PartnerUnavailable(f"{to}'s reply to {kind} was lost (simulated)")
        if self._fault(self.faults.crash_sender):
            self._trace.note(f"net {what}: handled, {sender} crashed before the reply")
            raise SenderCrashed(sender)
        self._trace.note(f"net {what}: answered {_kind(reply)}")
        return reply

    def deliver_due(self) -> int:
        """Hand the queued requests that fell due to their partners, in a seeded order;
        their replies go nowhere (the sender stopped waiting). How many were handled."""
        now = self._clock.monotonic_delta()
        due = [q for q in self._queue if q.due <= now]
        if not due:
            return 0
        self._queue = [q for q in self._queue if q.due > now]
        self._rng.shuffle(due)
        handled = 0
        for queued in due:
            what = f"late {_kind(queued.msg)} {queued.sender}->{queued.to}"
            if not self.reachable(queued.sender, queued.to):
                self._trace.note(f"net {what}: lost (unreachable)")
                continue
            try:
                self._inboxes[queued.to].handle(queued.msg, queued.sender)
            except CoalitionError as exc:
                self._trace.note(f"net {what}: refused {type(exc).__name__}: {exc}")
                continue
            handled += 1
            self._trace.note(f"net {what}: handled")
        return handled

    def drop_in_flight(self) -> None:
        self._queue.clear()

    # --- ledger reads (the witness) ------------------------------------------------------

    def ledger_of(self, follower: str, program: str) -> NodeService:
        if not self.reachable(follower, program):
            self._trace.note(f"net ledger {program}->{follower}: unreachable")
            raise LedgerSourceFailed("UNAVAILABLE", f"{program} is unreachable (simulated)")
        if self._fault(self.faults.source_failure):
            self._trace.note(f"net ledger {program}->{follower}: read failed")
            raise LedgerSourceFailed("UNAVAILABLE", f"{program}'s read failed (simulated)")
        return self._services[program]


class _SimTransport:
    def __init__(self, network: SimNetwork, program: str) -> None:
        self._network = network
        self._program = program

    def send(self, to: str, msg: SignedMessage, timeout: float) -> SignedMessage:
        return self._network.send(self._program, to, msg)

    def close(self) -> None:
        return None


class SimLedgerSource:
    """A partner's ledger reads as the witness follows them, over the simulated network
    (each read may fail as a gRPC call would: LedgerSourceFailed)."""

    def __init__(self, network: SimNetwork, follower: str, program: str) -> None:
        self._network = network
        self._follower = follower
        self._program = program

    def _ledger(self) -> NodeService:
        return self._network.ledger_of(self._follower, self._program)

    def watch(self, after_height: int) -> Iterator[SignedHeader]:
        """The headers sealed after ``after_height`` now; the stream then ends."""
        return iter(self.headers(after_height + 1, GAP_BATCH))

    def headers(self, start: int, limit: int) -> list[SignedHeader]:
        return self._ledger().ledger.headers(start, limit)

    def consistency(self, first_height: int, second_height: int) -> JsonValue:
        return self._ledger().ledger.consistency_proof(first_height, second_height)

    def block(self, height: int) -> list[bytes]:
        """The block's entries as the partner's GetBlock serves them (canonical bytes)."""
        return [canonical_json(e) for e in self._ledger().ledger.block(height)[1]]

    def close(self) -> None:
        return None
