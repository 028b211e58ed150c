"""Writes by account racing over several services of one node on one PostgreSQL database
(issue 10: several processes must add throughput, so member writes of different accounts
no longer wait for each other; ``node.sequencer``'s contract).

Each "process" is a ``NodeService`` of its own on one PostgreSQL schema (as in
``test_log_order``). A few members are shared by every thread, so writes conflict on
accounts all the time: redeems and transfers that may overdraw, transfers in both
directions between the same two members (locks taken in opposite orders if the writer
did not sort them), purchases whose reference another member already earned with, one
idempotency key sent to two services at once, and serial writes (bulk earns, the expiry
job) mixed in. Afterwards: every acknowledged write is in the log exactly once, the log
is dense, the database equals the replay of the chain (which refuses any overdraft), and
the spendable points add up to what the acknowledged entries moved.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial

import pytest
from sqlalchemy import Connection, func, select

from coalition.audit import check_database
from coalition.errors import FailedPrecondition
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import SigningKey
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.node.views import PurchaseRow, WriteResult
from coalition.store import columns as columns_store
from coalition.store import ledger as ledger_store
from coalition.store.db import make_engine
from coalition.store.ledger import entries

from support.databases import postgres_schema
from support.nodes import temporary_node

pytestmark = pytest.mark.postgres

MEMBERS = ("ann", "bob", "cat", "dan")
THREADS = 6
OPS_PER_THREAD = 30


@pytest.fixture
def pg_url(postgres_available: None) -> Iterator[str]:
    with postgres_schema() as url:
        yield url


Write = Callable[[NodeService], WriteResult]


def _write(rng: random.Random, thread: int, n: int) -> Write:
    """One random member write, bound to its idempotency key (a pure function of the
    thread and step, so sending it twice is the same request)."""
    key = f"w{thread}-{n}"
    member = rng.choice(MEMBERS)
    other = rng.choice([m for m in MEMBERS if m != member])
    amount = rng.randint(1, 60)
    choice = rng.randrange(5)
    if choice == 0:
        return lambda s: s.points.redeem(member, amount, key, idempotency_key=key)
    if choice == 1:
        return lambda s: s.points.transfer(member, other, amount, "gift", idempotency_key=key)
    if choice == 2:
        return lambda s: s.points.adjust(member, 40, "op", "top up", idempotency_key=key)
    if choice == 3:  # a small pool of references: most are taken by another member first
        reference = f"p{rng.randrange(8)}"
        return lambda s: s.points.earn_purchase(member, reference, 1000, idempotency_key=key)
    return lambda s: s.points.adjust(member, -amount, "op", "take", idempotency_key=key)


def _each_at_once(calls: list[Callable[[], WriteResult]]) -> list[WriteResult | BaseException]:
    """Every call of ``calls`` made at the same moment, each in a thread of its own."""
    start = threading.Barrier(len(calls))
    answers: list[WriteResult | BaseException] = [FailedPrecondition("no answer")] * len(calls)

    def send(n: int) -> None:
        start.wait()
        try:
            answers[n] = calls[n]()
        except BaseException as exc:
            answers[n] = exc

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def _at_once(services: list[NodeService], write: Write) -> list[WriteResult | BaseException]:
    """``write`` sent to every service at the same moment."""
    return _each_at_once([partial(write, service) for service in services])


def _log_ids(service: NodeService) -> list[tuple[int, str]]:
    with service.sequencer.read() as conn:
        rows = ledger_store.entry_bodies(conn, 0, 1 << 62)
    return [(index, str(columns_store.stored_object(body)["id"])) for index, body, _ in rows]


@pytest.mark.parametrize("seed", [1, 2])
def test_writes_racing_on_shared_accounts_over_three_services_keep_the_contract(
    pg_url: str, seed: int
) -> None:
    key = SigningKey.generate()
    with ExitStack() as stack:
        sealer = SealerConfig(max_entries=50, max_delay_ms=40)
        services = [
            stack.enter_context(temporary_node(pg_url, key=key, sealer=sealer)) for _ in range(3)
        ]
        acknowledged: dict[str, JsonObject] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def keep(answer: WriteResult | BaseException) -> None:
            if isinstance(answer, WriteResult):
                with lock:
                    acknowledged[str(answer.entry["id"])] = answer.entry
            elif not isinstance(answer, FailedPrecondition):  # overdraft, reference used
                errors.append(answer)

        for member in MEMBERS:
            keep(services[0].points.enroll(member, idempotency_key=f"enrol-{member}"))
            keep(services[1].points.adjust(member, 100, "op", "open", idempotency_key=f"o{member}"))

        def work(thread: int) -> None:
            rng = random.Random(seed * 1000 + thread)
            try:
                for n in range(OPS_PER_THREAD):
                    write = _write(rng, thread, n)
                    if n % 7 == 0:  # one key, two services, the same moment
                        pair = rng.sample(services, 2)
                        answers = _at_once(pair, write)
                        ids = {str(a.entry["id"]) for a in answers if isinstance(a, WriteResult)}
                        assert len(ids) <= 1, f"one key gave two entries: {answers}"
                        for answer in answers:
                            keep(answer)
                    elif n % 11 == 5:  # a serial write among them
                        rows = [
                            PurchaseRow(m, f"bulk{thread}-{n}-{m}", 500, "", f"b{thread}-{n}-{m}")
                            for m in MEMBERS
                        ]
                        result = services[thread % 3].points.earn_bulk(rows)
                        assert result.rejected == [], result.rejected
                        services[(thread + 1) % 3].points.run_expiry()
                    else:
                        try:
                            keep(write(services[(thread + n) % 3]))
                        except BaseException as exc:
                            keep(exc)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert errors == []

        log = _log_ids(services[0])
        assert [index for index, _ in log] == list(range(len(log))), "the log is dense"
        logged = [entry_id for _, entry_id in log]
        bulk = len(logged) - len(acknowledged)
        assert set(acknowledged) <= set(logged), "every acknowledged write is in the log"
        assert len(set(logged)) == len(logged)
        with services[0].sequencer.read() as conn:
            earns_in_bulk = conn.execute(
                select(func.count()).select_from(entries).where(entries.c.idem_key.like("b%"))
            ).scalar_one()
        assert bulk == earns_in_bulk, "nothing but the bulk earns is unaccounted for"
        for service in services:
            assert service.sequencer.next_index == len(log)

        moved = 0
        for entry in acknowledged.values():
            if entry["kind"] == "adjust" or entry["kind"] == "redeem":
                amount = entry["amount"]
                assert isinstance(amount, int)
                moved += amount if entry["kind"] == "adjust" else -amount
        spendable = [services[n % 3].points.balance(m).spendable for n, m in enumerate(MEMBERS)]
        assert min(spendable) >= 0
        assert sum(spendable) == moved, "spendable points are what the entries moved"
        report = check_database(pg_url)  # the replay refuses an overdraft, compares tables
        assert report.ok, report.render()


def test_one_key_with_two_requests_at_two_services_at_once_gives_one_entry_and_a_conflict(
    pg_url: str,
) -> None:
    """Two members' redeems under one idempotency key, sent to two services at the same
    moment: they lock different accounts, so neither waits for the other, and the loser
    of the race on the key's unique index is refused with IdempotencyConflict (a rerun
    alone and serial), never a database error."""
    key = SigningKey.generate()
    with ExitStack() as stack:
        services = [stack.enter_context(temporary_node(pg_url, key=key)) for _ in range(2)]
        for member in ("eve", "fay"):
            services[0].points.enroll(member, idempotency_key=f"enrol-{member}")
            services[0].points.adjust(member, 100, "op", "open", idempotency_key=f"o-{member}")
        for round_ in range(10):
            key_ = f"k{round_}"
            answers = _each_at_once(
                [
                    partial(services[0].points.redeem, "eve", 1, key_, idempotency_key=key_),
                    partial(services[1].points.redeem, "fay", 1, key_, idempotency_key=key_),
                ]
            )
            kinds = sorted(type(answer).__name__ for answer in answers)
            assert kinds == ["IdempotencyConflict", "WriteResult"], answers
        assert len(_log_ids(services[0])) == 4 + 10


def _held_then_released(
    url: str, take: Callable[[Connection], None], write: Callable[[], WriteResult]
) -> tuple[bool, WriteResult]:
    """Run ``write`` while another session holds what ``take`` locked: whether it was
    still waiting after 0.5 s, and its result once the session let go."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            with conn.begin():
                take(conn)
                result: list[WriteResult] = []
                thread = threading.Thread(target=lambda: result.append(write()))
                thread.start()
                thread.join(0.5)
                waited = thread.is_alive()
            thread.join(30)
    finally:
        engine.dispose()
    assert result, "the write never finished"
    return waited, result[0]


def test_a_write_by_account_waits_for_its_accounts_and_for_serial_writes_only(
    pg_url: str,
) -> None:
    """The lock contract of ``node.sequencer``: a member's write waits while another
    transaction holds that member's account lock or the gate exclusive (a serial write),
    and does not wait for another member's account lock or for the head's row until it
    numbers its entry."""
    with temporary_node(pg_url) as service:
        for member in ("gus", "hal"):
            service.points.enroll(member, idempotency_key=f"enrol-{member}")
            service.points.adjust(member, 100, "op", "open", idempotency_key=f"o-{member}")
        program = service.program
        gus = service.points.balance("gus").account
        hal = service.points.balance("hal").account

        def redeem(member: str, key_: str) -> Callable[[], WriteResult]:
            return lambda: service.points.redeem(member, 1, key_, idempotency_key=key_)

        cases = [
            (lambda c: ledger_store.lock_accounts(c, program, [gus]), redeem("gus", "1"), True),
            (lambda c: ledger_store.lock_accounts(c, program, [gus]), redeem("hal", "2"), False),
            (lambda c: ledger_store.lock_all_writes(c, program), redeem("hal", "3"), True),
            (lambda c: ledger_store.lock_accounts(c, "otherair", [hal]), redeem("hal", "4"), False),
        ]
        for take, write, waits in cases:
            waited, result = _held_then_released(pg_url, take, write)
            assert waited == waits, (write, waited)
            assert not result.replayed
        # The head's row: a writer by account decides while it is held and waits to number.
        waited, _ = _held_then_released(pg_url, ledger_store.take_head, redeem("gus", "5"))
        assert waited
        assert service.points.balance("gus").spendable == 98
        assert service.points.balance("hal").spendable == 97
