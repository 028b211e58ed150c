"""The simulator's clock: the one source of time of every node of a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
"""Where every run's time starts (a fixed moment: the same seed, the same entries)."""


class SimClock:
    """Time that moves only when the scheduler advances it.

    ``now`` is every node's wall clock (entries, envelopes, the outbox, the witness, the
    lease on SQLite), ``monotonic`` its monotonic clock (the lease's renewals)."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self._start = start
        self._elapsed_us = 0

    def now(self) -> datetime:
        return self._start + timedelta(microseconds=self._elapsed_us)

    def monotonic(self) -> float:
        return self._elapsed_us / 1_000_000

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("simulated time never goes back")
        self._elapsed_us += round(seconds * 1_000_000)

    def monotonic_delta(self) -> timedelta:
        """``monotonic`` as a timedelta (exact: the queue's due times)."""
        return timedelta(microseconds=self._elapsed_us)
