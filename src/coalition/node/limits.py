"""The node's named limits on what one caller may take: open streams and request rate.

Both are checked before any work is done and refuse at once with ``ResourceExhausted``
(never a queue): ``StreamSlots`` bounds the gRPC streams open on one server, in all and per
caller, so streams can never take the workers unary calls and the health check need;
``RequestRates`` is a token bucket per API key or partner certificate. Each process of a
node keeps its own counts (``coalition run --processes N`` gives a key up to N times the
rate).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from coalition.errors import ResourceExhausted

Clock = Callable[[], float]


@dataclass(frozen=True)
class Limits:
    """The ``[limits]`` table of node.toml; the defaults never throttle the demo, the
    tests or the benchmarks (bench_writes: about 3,000 writes/s with one key)."""

    max_streams: int = 32
    """Streaming calls (WatchHeaders, EarnBulk) open at once on one gRPC server."""
    max_streams_per_caller: int = 8
    """Of those, how many one API key (or one partner certificate) may hold."""
    requests_per_second: float = 20_000.0
    """Sustained calls per second per API key (REST and gRPC together) and per partner
    certificate (its ``Partner/Call`` and ledger reads), per process."""
    burst: int = 40_000
    """Calls a key may make at once above that rate (the bucket's size)."""


DEFAULT_LIMITS = Limits()

UNARY_WORKERS = 16
"""gRPC worker threads kept for unary calls and the health check; a server has
``UNARY_WORKERS + max_streams`` workers, so open streams never take these."""


class StreamSlots:
    """How many streams are open on one server, in all and per caller."""

    def __init__(self, max_streams: int, max_per_caller: int) -> None:
        self.max_streams = max_streams
        self.max_per_caller = max_per_caller
        self._open = 0
        self._by_caller: dict[str, int] = {}
        self._lock = threading.Lock()

    def open(self, caller: str | None) -> Callable[[], None]:
        """Take a slot for ``caller`` (None: not identified yet, counted in all only), or
        raise ResourceExhausted. Returns the release, which is safe to call twice."""
        with self._lock:
            if self._open >= self.max_streams:
                raise ResourceExhausted(
                    f"this server already has {self._open} open streams, its limit "
                    f"(max_streams = {self.max_streams}); close one or retry later"
                )
            held = self._by_caller.get(caller, 0) if caller is not None else 0
            if caller is not None and held >= self.max_per_caller:
                raise ResourceExhausted(
                    f"{caller} already holds {held} open streams, the limit per caller "
                    f"(max_streams_per_caller = {self.max_per_caller}); close one first"
                )
            self._open += 1
            if caller is not None:
                self._by_caller[caller] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._open -= 1
                if caller is not None:
                    left = self._by_caller[caller] - 1
                    if left:
                        self._by_caller[caller] = left
                    else:
                        del self._by_caller[caller]

        return release

    @property
    def open_streams(self) -> int:
        return self._open


class RequestRates:
    """A token bucket per key: ``rate`` tokens a second up to ``burst``; a call takes one."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Count one call of ``key`` (a caller's name for messages: ``API key 'ops'``,
        ``partner 'skyair'``), or raise ResourceExhausted with the seconds until the
        bucket holds a token again."""
        now = self._clock()
        with self._lock:
            tokens, when = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise ResourceExhausted(
                    f"{key} is over its rate limit ({self.rate:g} requests/s, "
                    f"burst {self.burst}); retry in {math.ceil(wait * 1000) / 1000:g} s",
                    retry_after_s=wait,
                )
            self._buckets[key] = (tokens - 1.0, now)


def rates_for(limits: Limits, clock: Clock = time.monotonic) -> RequestRates:
    """The token buckets of ``limits``' rate (one set per server or authenticator)."""
    return RequestRates(limits.requests_per_second, limits.burst, clock)
