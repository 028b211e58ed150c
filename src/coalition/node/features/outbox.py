"""The durable outbox: delivers pending conversions to their target partners.

Rows live in ``coalition_outbox`` (written in the convert-out's own transaction), so a
restarted node resumes them. Background threads take due rows oldest first, up to
``batch`` per partner and call, and hand them to ``deliver``; a failed call (partner
unreachable, or refusing) postpones the rows with exponential backoff. A row older than
``abort_after_s`` is sent as ``abort`` instead: the partner either returns its receipt
or records the abort and signs a rejection. Nothing here ever refunds: only a signed
rejection does (``Conversions.record_answers``). ``wake()`` makes a new conversion go
out at once.

Who delivers what (several processes per node, ``store.conversions``, "Outbox claims"):
every process delivers the rows it wrote itself, claimed for it (``holder``) in the
convert-out's own transaction, so a conversion goes out from the process that took the
call, at once, with no poll and no hand-off to another process. A claim lasts
``claim_s`` past the row's next attempt, and a retry extends it. The holder of the
node's lease (``node.leadership``) also takes (its first sender a partner, every
``IDLE_WAIT_S``) the due rows that nobody holds: those of a killed process once their
claim lapsed, of a process that stopped (``stop`` gives its claims up), or from before
claims existed. Within a process,
``senders`` threads per partner send disjoint batches at once (an in-memory set of the
rows in flight), so a batch waiting on the partner does not hold up the next one.
Delivery is safe to repeat (a partner credits once per conversion id and answers
"already credited"), so a claim that lapses while its holder still works sends a row
twice at worst, never credits it twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from coalition.errors import CoalitionError, PartnerUnavailable
from coalition.node.leadership import holder_name
from coalition.node.sequencer import Sequencer
from coalition.store import conversions as conversions_store
from coalition.store.conversions import OutboxItem
from coalition.store.failures import is_storage_failure

log = logging.getLogger(__name__)

Deliver = Callable[[str, Sequence[OutboxItem], bool], set[str]]
"""``deliver(partner, items, abort) -> settled ids``; raises when the call failed."""

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0
IDLE_WAIT_S = 0.25
"""Longest sleep with nothing due; also how often the lease holder looks for rows
nobody holds (one indexed count per partner)."""
QUIET_WAIT_S = 1.0
"""Longest sleep of a sender that does not sweep: its own new rows wake it, its
postponed ones come due when ``next_due`` says; this only bounds a missed wake."""
CLAIM_S = 10.0
"""How long a claim outlives its row's next attempt (at most ``abort_after_s``): a killed
process's rows are taken over this late."""
SENDERS = 2
"""Delivery threads per partner in each process: batches in flight to one partner."""


def backoff_s(attempts: int) -> float:
    """Delay before attempt ``attempts + 1``: 0.2 s doubling, at most 10 s."""
    return float(min(BACKOFF_FIRST_S * 2 ** min(attempts, 16), BACKOFF_MAX_S))


class Outbox:
    """One process's delivery of its node's pending conversions: threads per partner, so
    a partner that is down or slow never holds up deliveries to the others."""

    def __init__(
        self,
        sequencer: Sequencer,
        deliver: Deliver,
        partners: Sequence[str],
        *,
        abort_after_s: float = 30.0,
        batch: int = 500,
        senders: int = SENDERS,
        claim_s: float = CLAIM_S,
        wall_clock: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        if senders < 1:
            raise ValueError("an outbox needs at least one sender a partner")
        self._sequencer = sequencer
        self._deliver = deliver
        self.partners = tuple(partners)
        self.abort_after_us = int(abort_after_s * 1_000_000)
        self.claim_us = int(min(claim_s, abort_after_s) * 1_000_000)
        self._batch = batch
        self._senders = senders
        self._wall = wall_clock
        self._pid = os.getpid()
        self._holder = holder_name()
        self._wake = {partner: threading.Event() for partner in self.partners}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._swept = dict.fromkeys(self.partners, 0.0)
        self._claimed = False  # whether this process may hold claims (wrote or took rows)

    @property
    def holder(self) -> str:
        """Who this process is in ``claimed_by`` (a forked child is another holder)."""
        if os.getpid() != self._pid:
            self._pid, self._holder = os.getpid(), holder_name()
        return self._holder

    def enqueue(self, conn: Connection, conversion_id: str, to_program: str) -> None:
        """In the convert-out's transaction: queue the conversion, claimed by this process."""
        self._claimed = True
        conversions_store.enqueue(
            conn,
            conversion_id,
            to_program,
            self._wall(),
            holder=self.holder,
            claim_us=self.claim_us,
        )

    def wake(self, partner: str | None = None) -> None:
        """Look for due rows now (a conversion to ``partner``, or any, was just written)."""
        for name, event in self._wake.items():
            if partner is None or name == partner:
                event.set()

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for partner in self.partners:
            for n in range(self._senders):
                thread = threading.Thread(
                    target=self._run,
                    args=(partner, n == 0),
                    name=f"outbox:{partner}:{n}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the calls in progress (if any) return, and give up this process's
        claims so the lease holder (another process, or this one's next start) takes them
        at once."""
        threads, self._threads = self._threads, []
        if not threads:
            return
        self._stop.set()
        self.wake()
        for thread in threads:
            thread.join(timeout)
        if not self._claimed:
            return  # nothing to give up (a read-only process never claims)
        holder = self.holder
        try:
            self._sequencer.run(lambda tx: conversions_store.release(tx.conn, holder))
        except Exception:
            log.exception("giving up the outbox claims failed; they lapse on their own")

    def pending(self) -> int:
        """Conversions still to deliver."""
        with self._sequencer.read() as conn:
            return conversions_store.pending_count(conn)

    def _run(self, partner: str, sweeper: bool) -> None:
        wake = self._wake[partner]
        while not self._stop.is_set():
            sweep = sweeper and self._sequencer.leadership.held()
            try:
                wait = self._pass(partner, sweep=sweep)
            except Exception as exc:
                if is_storage_failure(exc):  # a full disk: one line, the rows wait
                    log.warning("the outbox pass for %s waits for the storage: %s", partner, exc)
                else:
                    log.exception("the outbox pass for %s failed; retrying", partner)
                wake.wait(BACKOFF_MAX_S)  # a database outage or a bug: no tight loop
                continue
            if self._stop.is_set():
                return
            longest = IDLE_WAIT_S if sweep else QUIET_WAIT_S
            wake.wait(longest if wait is None else min(wait, longest))

    def run_once(self) -> None:
        """One pass for every partner in turn, in the caller's thread (tests, tools),
        taking the rows nobody holds whether or not this process holds the lease."""
        for partner in self.partners:
            self._swept[partner] = 0.0
            self._pass(partner, sweep=True)

    def _pass(self, partner: str, *, sweep: bool) -> float | None:
        """Deliver every row of this process due now to ``partner`` (after taking those
        nobody holds, with ``sweep``); seconds until its next row is due (None when it
        has none queued)."""
        self._wake[partner].clear()
        holder = self.holder
        if sweep:
            self._take_lapsed(partner, holder)
        while not self._stop.is_set():
            now = self._wall()
            with self._sequencer.read() as conn:
                with self._lock:
                    limit = self._batch + len(self._in_flight)
                found = conversions_store.claimed(conn, partner, holder, now, limit)
            with self._lock:
                items = [i for i in found if i.conversion_id not in self._in_flight][: self._batch]
                self._in_flight.update(i.conversion_id for i in items)
            if not items:
                if found:  # all in flight in another sender, which looks again after
                    return None
                break
            try:
                if not self._send_due(partner, items, now):
                    break  # the partner failed: the rest waits for its backoff
            finally:
                with self._lock:
                    self._in_flight.difference_update(i.conversion_id for i in items)
        with self._sequencer.read() as conn:
            next_us = conversions_store.next_due(conn, partner, holder)
        if next_us is None:
            return None
        return max(next_us - self._wall(), 0) / 1_000_000

    def _take_lapsed(self, partner: str, holder: str) -> None:
        """Claim the due rows nobody holds, at most once every ``IDLE_WAIT_S``; one read
        when there are none."""
        moment = time.monotonic()
        if moment - self._swept[partner] < IDLE_WAIT_S:
            return
        self._swept[partner] = moment
        now = self._wall()
        with self._sequencer.read() as conn:
            if not conversions_store.lapsed_count(conn, partner, now):
                return
        limit, claim_us = self._batch * 8, self.claim_us
        taken = self._sequencer.run(
            lambda tx: conversions_store.take_lapsed(tx.conn, partner, holder, now, claim_us, limit)
        )
        if taken:
            self._claimed = True
            log.info("took over %d conversion(s) to %s that nobody delivered", taken, partner)

    def _send_due(self, partner: str, items: list[OutboxItem], now: int) -> bool:
        """Abort the rows past their deadline, send the others; False when a call failed
        (the rest is not tried)."""
        aborting = [i for i in items if now - i.queued_at >= self.abort_after_us]
        sending = [i for i in items if now - i.queued_at < self.abort_after_us]
        for chunk, abort in ((aborting, True), (sending, False)):
            if chunk and (self._stop.is_set() or not self._send(partner, chunk, abort)):
                return False
        return True

    def _send(self, partner: str, items: list[OutboxItem], abort: bool) -> bool:
        """One call; on failure, or for rows left unanswered, postpone. True if it went."""
        try:
            settled = self._deliver(partner, items, abort)
        except CoalitionError as exc:
            level = logging.INFO if isinstance(exc, PartnerUnavailable) else logging.WARNING
            what = "abort" if abort else "delivery"
            log.log(
                level, "%s of %d conversion(s) to %s failed: %s", what, len(items), partner, exc
            )
            self._postpone(items, f"{type(exc).__name__}: {exc}")
            return False
        left = [i for i in items if i.conversion_id not in settled]
        if left:
            self._postpone(left, "no answer yet")
        return True

    def _postpone(self, items: list[OutboxItem], error: str) -> None:
        now = self._wall()
        by_attempts: dict[int, list[str]] = {}
        for item in items:
            by_attempts.setdefault(item.attempts, []).append(item.conversion_id)

        def postpone(conn: Connection) -> None:
            for attempts, ids in by_attempts.items():
                delay = int(backoff_s(attempts) * 1_000_000)
                conversions_store.postpone(conn, ids, now + delay, error, self.claim_us)

        self._sequencer.run(lambda tx: postpone(tx.conn))
