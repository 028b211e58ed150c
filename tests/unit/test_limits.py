"""The named limits of ``node.limits``: a token bucket per key and stream slots in all and
per caller, on a clock the test moves (no sleeping, no timing)."""

from __future__ import annotations

import pytest

from coalition.api.errors import grpc_status, http_headers, http_status
from coalition.errors import ResourceExhausted
from coalition.node.auth import Action, ApiKey, Authenticator, Role, key_digest
from coalition.node.limits import RequestRates, StreamSlots


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_spends_its_burst_then_waits_for_the_rate() -> None:
    clock = Clock()
    rates = RequestRates(rate=10.0, burst=3, clock=clock)
    for _ in range(3):
        rates.take("ops")
    with pytest.raises(ResourceExhausted, match=r"^ops is over its rate limit") as refused:
        rates.take("ops")
    assert refused.value.retry_after_s == pytest.approx(0.1)
    rates.take("audit")  # another key has its own bucket
    clock.now += 0.11
    rates.take("ops")
    with pytest.raises(ResourceExhausted):
        rates.take("ops")
    clock.now += 60  # a long pause refills the bucket to its burst, no more
    for _ in range(3):
        rates.take("ops")
    with pytest.raises(ResourceExhausted):
        rates.take("ops")


def test_a_refusal_maps_to_429_with_retry_after_and_resource_exhausted() -> None:
    error = ResourceExhausted("over", retry_after_s=0.2)
    assert http_status(error) == 429
    assert http_headers(error) == {"Retry-After": "1"}
    assert grpc_status(error).name == "RESOURCE_EXHAUSTED"
    assert http_headers(ResourceExhausted("no hint")) == {}


def test_the_authenticator_counts_each_checked_call_of_a_key() -> None:
    clock = Clock()
    auth = Authenticator(
        [ApiKey("audit", key_digest("k"), Role.AUDITOR)], RequestRates(1.0, 2, clock)
    )
    auth.check("Bearer k", Action.LEDGER_READ)
    auth.authenticate("Bearer k")  # the body gate's look-up is not a call of its own
    auth.check("Bearer k", Action.LEDGER_READ)
    with pytest.raises(ResourceExhausted):
        auth.check("Bearer k", Action.LEDGER_READ)
    clock.now += 1
    auth.check("Bearer k", Action.LEDGER_READ)


def test_stream_slots_in_all_and_per_caller() -> None:
    slots = StreamSlots(max_streams=3, max_per_caller=2)
    first = slots.open("a")
    slots.open("a")
    with pytest.raises(ResourceExhausted, match=r"max_streams_per_caller = 2"):
        slots.open("a")
    slots.open(None)  # not identified: counted in all only
    with pytest.raises(ResourceExhausted, match=r"max_streams = 3"):
        slots.open("b")
    first()
    first()  # a release is safe twice: it frees one slot, not two
    assert slots.open_streams == 2
    slots.open("b")
    with pytest.raises(ResourceExhausted, match=r"max_streams = 3"):
        slots.open("a")
