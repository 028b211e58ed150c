"""The durable outbox: delivers pending conversions to their target partners.

Rows live in ``coalition_outbox`` (written in the convert-out's own transaction), so a
restarted node resumes them. A background thread takes due rows oldest first, up to
``batch`` per partner and call, and hands them to ``deliver``; a failed call (partner
unreachable, or refusing) postpones the rows with exponential backoff. A row older than
``abort_after_s`` is sent as ``abort`` instead: the partner either returns its receipt
or records the abort and signs a rejection. Nothing here ever refunds: only a signed
rejection does (``Conversions.record_answers``). ``wake()`` makes a new conversion go
out at once.

With several processes per node only the holder of the node's lease delivers (the job
discipline of ``node.leadership``): the loop checks ``held()`` before every pass, and a
process without the lease only waits. Delivery is safe to repeat (a partner credits once
per conversion id and answers "already credited"), so the short overlap when a paused
holder wakes after losing its lease sends a row twice at worst, never credits it twice.
Rows written by another process are found by the holder's poll (``IDLE_WAIT_S``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from coalition.errors import CoalitionError, PartnerUnavailable
from coalition.node.sequencer import Sequencer
from coalition.store import conversions as conversions_store
from coalition.store.conversions import OutboxItem

log = logging.getLogger(__name__)

Deliver = Callable[[str, Sequence[OutboxItem], bool], set[str]]
"""``deliver(partner, items, abort) -> settled ids``; raises when the call failed."""

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0
IDLE_WAIT_S = 0.25
"""Longest sleep with nothing due: rows another process wrote are noticed this late (one
indexed ``next_due`` query per partner and wait)."""
FOLLOWER_WAIT_S = 0.5
"""How often a process without the node's lease looks whether it has it now."""


def backoff_s(attempts: int) -> float:
    """Delay before attempt ``attempts + 1``: 0.2 s doubling, at most 10 s."""
    return float(min(BACKOFF_FIRST_S * 2 ** min(attempts, 16), BACKOFF_MAX_S))


class Outbox:
    """One node's delivery of pending conversions: a thread per partner, so a partner
    that is down or slow never holds up deliveries to the others."""

    def __init__(
        self,
        sequencer: Sequencer,
        deliver: Deliver,
        partners: Sequence[str],
        *,
        abort_after_s: float = 30.0,
        batch: int = 500,
        wall_clock: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self._sequencer = sequencer
        self._deliver = deliver
        self.partners = tuple(partners)
        self.abort_after_us = int(abort_after_s * 1_000_000)
        self._batch = batch
        self._wall = wall_clock
        self._wake = {partner: threading.Event() for partner in self.partners}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

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
            thread = threading.Thread(
                target=self._run, args=(partner,), name=f"outbox:{partner}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the calls in progress (if any) return."""
        threads, self._threads = self._threads, []
        if not threads:
            return
        self._stop.set()
        self.wake()
        for thread in threads:
            thread.join(timeout)

    def pending(self) -> int:
        """Conversions still to deliver."""
        with self._sequencer.read() as conn:
            return conversions_store.pending_count(conn)

    def _run(self, partner: str) -> None:
        wake = self._wake[partner]
        while not self._stop.is_set():
            if not self._sequencer.leadership.held():
                self._stop.wait(FOLLOWER_WAIT_S)
                continue
            try:
                wait = self._pass(partner)
            except Exception:
                log.exception("the outbox pass for %s failed; retrying", partner)
                wake.wait(BACKOFF_MAX_S)  # a database outage or a bug: no tight loop
                continue
            if self._stop.is_set():
                return
            wake.wait(IDLE_WAIT_S if wait is None else min(wait, IDLE_WAIT_S))

    def run_once(self) -> None:
        """One pass for every partner in turn, in the caller's thread (tests, tools),
        whether or not this process holds the lease."""
        for partner in self.partners:
            self._pass(partner)

    def _pass(self, partner: str) -> float | None:
        """Deliver every row due now to ``partner``; seconds until its next row is due
        (None when it has none queued)."""
        self._wake[partner].clear()
        now = self._wall()
        with self._sequencer.read() as conn:
            items = conversions_store.due(conn, partner, now, self._batch * 8)
        aborting = [i for i in items if now - i.queued_at >= self.abort_after_us]
        sending = [i for i in items if now - i.queued_at < self.abort_after_us]
        calls = [
            (group[start : start + self._batch], abort)
            for group, abort in ((aborting, True), (sending, False))
            for start in range(0, len(group), self._batch)
        ]
        for chunk, abort in calls:
            if self._stop.is_set() or not self._send(partner, chunk, abort):
                break  # the partner failed: the rest (aborts and sends) waits for its backoff
        with self._sequencer.read() as conn:
            next_us = conversions_store.next_due(conn, partner)
        if next_us is None:
            return None
        return max(next_us - self._wall(), 0) / 1_000_000

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
                conversions_store.postpone(conn, ids, now + delay, error)

        self._sequencer.run(lambda tx: postpone(tx.conn))
