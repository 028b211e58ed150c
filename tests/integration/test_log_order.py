"""Several processes of one node on one PostgreSQL database (issue 10, items 2-4): the
log's order is kept by the database, one sealer is elected by a lease with a fencing
token, and a SQLite file refuses a second ``coalition run``.

Each "process" here is a ``NodeService`` of its own (``runtime.wiring.open_service``:
its own engine, sequencer, lease holder and sealer) on one PostgreSQL schema; what they
share is only the database, as separate processes would. The SQLite refusal uses real
processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from coalition.api.grpc.client import NodeClient
from coalition.audit import DatabaseSource, audit_chain, check_database
from coalition.demo.processes import NodeProcess, free_ports
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.keys import SigningKey
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.node.views import WriteResult
from coalition.points.replay import Replay
from coalition.store import columns as columns_store
from coalition.store import leases as leases_store
from coalition.store import ledger as ledger_store
from coalition.store.db import IDLE_IN_TRANSACTION_MS
from coalition.store.ledger import blocks, entries

from support.databases import postgres_schema
from support.nodes import temporary_node

pytestmark = pytest.mark.postgres

FAILOVER_S = 5.0


@pytest.fixture
def pg_url(postgres_available: None) -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def _services(
    stack: ExitStack, url: str, key: SigningKey, count: int, sealer: SealerConfig
) -> list[NodeService]:
    """``count`` started services of one node on ``url``, the first one leading."""
    return [stack.enter_context(temporary_node(url, key=key, sealer=sealer)) for _ in range(count)]


def _until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held; AssertionError after ``timeout``."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - began


def _leader(services: list[NodeService]) -> NodeService:
    holding = [s for s in services if s.leadership.held()]
    assert len(holding) == 1, [s.leadership.holder for s in holding]
    return holding[0]


def _log(service: NodeService) -> list[tuple[int, str]]:
    """(index, entry id) of every committed entry, in index order."""
    with service.sequencer.read() as conn:
        rows = ledger_store.entry_bodies(conn, 0, 1 << 62)
    return [(index, str(columns_store.stored_object(body)["id"])) for index, body, _ in rows]


def _headers(service: NodeService) -> list[SignedHeader]:
    return service.ledger.headers(0, 10_000)


def _block_count(service: NodeService) -> int:
    with service.sequencer.read() as conn:
        return int(conn.execute(select(func.count()).select_from(blocks)).scalar_one())


def _assert_chain(service: NodeService, url: str) -> None:
    """The stored chain audits (signatures, links, roots) and covers the whole log."""
    headers = _headers(service)
    with service.sequencer.read() as conn:
        count = int(conn.execute(select(func.count()).select_from(entries)).scalar_one())
    assert headers and headers[-1].header.log_size == count
    assert [h.header.height for h in headers] == list(range(len(headers)))
    with DatabaseSource(url) as source:
        report = audit_chain(source, service.public_key)
    assert report.ok, report.to_json()


MEMBERS_PER_THREAD = 4


def test_three_services_on_one_database_write_one_dense_log(pg_url: str, key: SigningKey) -> None:
    """Threads write through all three: enrol through one, earn through the next, redeem
    through the third. Every acknowledged write is in the log exactly once, at dense
    indexes, the sealed chain covers it, and every service sees every member, the whole
    log and the same balances, which equal the replay."""
    with ExitStack() as stack:
        services = _services(stack, pg_url, key, 3, SealerConfig(max_entries=40, max_delay_ms=40))
        acknowledged: list[str] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(thread: int) -> None:
            try:
                for n in range(MEMBERS_PER_THREAD):
                    member = f"t{thread}m{n}"
                    first, second, third = (services[(thread + k) % 3] for k in range(3))
                    results = [
                        first.points.enroll(member, idempotency_key=f"e-{member}"),
                        second.points.adjust(
                            member, 100, "op", "open", idempotency_key=f"a-{member}"
                        ),
                        third.points.redeem(
                            member, 30, f"r-{member}", idempotency_key=f"r-{member}"
                        ),
                        first.points.redeem(
                            member, 20, f"s-{member}", idempotency_key=f"s-{member}"
                        ),
                    ]
                    with lock:
                        acknowledged.extend(str(r.entry["id"]) for r in results)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        assert len(acknowledged) == 6 * MEMBERS_PER_THREAD * 4
        log = _log(services[0])
        assert [index for index, _ in log] == list(range(len(log)))
        ids = [entry_id for _, entry_id in log]
        assert sorted(ids) == sorted(acknowledged), "each acknowledged write exactly once"
        for service in services:
            assert service.sequencer.next_index == len(log)
        _leader(services).ledger.flush()
        _until(lambda: all(s.sealer.log_size == len(log) for s in services), FAILOVER_S)
        _assert_chain(services[0], pg_url)
        with services[0].sequencer.read() as conn:
            bodies = ledger_store.entry_bodies(conn, 0, len(log))
        replay = Replay()
        for _, body, _ in bodies:
            replay.apply(columns_store.stored_object(body))
        for service in services:
            header = service.ledger.latest_header()
            assert header is not None and header.header.log_size == len(log)
            for thread in range(6):
                for n in range(MEMBERS_PER_THREAD):
                    balance = service.points.balance(f"t{thread}m{n}")
                    assert balance.spendable == 50
                    assert replay.accounts[balance.account].balance(service.now()) == 50
        report = check_database(pg_url)
        assert report.ok, report.render()


def _redeem_at_once(services: list[NodeService], key_: str) -> list[WriteResult]:
    """Redeem with one idempotency key through every service at the same moment."""
    start = threading.Barrier(len(services))
    results: dict[int, WriteResult | BaseException] = {}

    def send(n: int, service: NodeService) -> None:
        start.wait()
        try:
            results[n] = service.points.redeem("kim", 7, key_, idempotency_key=key_)
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=send, args=(n, s)) for n, s in enumerate(services)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    answers = [results[n] for n in range(len(services))]
    assert all(isinstance(a, WriteResult) for a in answers), answers
    return [a for a in answers if isinstance(a, WriteResult)]


def test_one_idempotency_key_sent_to_two_services_at_once_gives_one_entry(
    pg_url: str, key: SigningKey
) -> None:
    with ExitStack() as stack:
        services = _services(stack, pg_url, key, 2, SealerConfig(max_entries=100, max_delay_ms=50))
        services[0].points.enroll("kim", idempotency_key="enrol-kim")
        services[1].points.adjust("kim", 1000, "op", "open", idempotency_key="open-kim")
        for round_ in range(10):
            first, second = _redeem_at_once(services, f"spend-{round_}")
            assert first.entry["id"] == second.entry["id"]
            assert sorted([first.replayed, second.replayed]) == [False, True]
        assert [s.points.balance("kim").spendable for s in services] == [930, 930]
        assert len(_log(services[0])) == 2 + 10


def test_the_lease_fails_over_when_the_holder_stops_renewing(pg_url: str, key: SigningKey) -> None:
    """The holder stalls (stops renewing, as when SIGSTOPped): another service takes the
    lease with a higher token and seals what was written meanwhile within 5 s."""
    with ExitStack() as stack:
        services = _services(stack, pg_url, key, 3, SealerConfig(max_entries=100, max_delay_ms=50))
        holder = _leader(services)
        token = holder.leadership.token
        assert token is not None
        holder.leadership.pause()
        others = [s for s in services if s is not holder]
        written = others[0].points.enroll("lee", idempotency_key="enrol-lee").entry
        stalled_at = time.monotonic()
        _until(lambda: any(s.leadership.held() for s in others), FAILOVER_S)
        index = dict((entry_id, i) for i, entry_id in _log(others[0]))[str(written["id"])]
        waited = _until(lambda: all(s.sealer.log_size > index for s in others), FAILOVER_S)
        assert time.monotonic() - stalled_at <= FAILOVER_S, waited
        new = _leader(others)
        assert new.leadership.token == token + 1
        with new.sequencer.read() as conn:
            stored = leases_store.current(conn, "sealer")
        assert stored is not None and stored.holder == new.leadership.holder
        _assert_chain(new, pg_url)


def test_the_lease_moves_at_once_when_the_holder_closes(pg_url: str, key: SigningKey) -> None:
    with ExitStack() as stack:
        first = stack.enter_context(temporary_node(pg_url, key=key))
        second = stack.enter_context(temporary_node(pg_url, key=key))
        assert first.leadership.held() and not second.leadership.held()
        first.points.enroll("max", idempotency_key="enrol-max")
        first.close()  # seals what it wrote, lets the lease lapse
        assert first.ledger.latest_header() is not None
        second.points.enroll("ada", idempotency_key="enrol-ada")
        _until(lambda: second.leadership.held(), FAILOVER_S)
        _until(lambda: second.sealer.log_size == 2, FAILOVER_S)
        _assert_chain(second, pg_url)


def test_every_entry_is_sealed_when_the_holder_stops_before_the_others(
    pg_url: str, key: SigningKey
) -> None:
    """Regression (CI, stop 16): all workers of a supervisor stop at once; the lease
    holder stopped first and the others' last writes stayed unsealed."""
    sealer = SealerConfig(max_entries=1000, max_delay_ms=60_000)  # nothing seals by time
    with ExitStack() as stack:
        first = stack.enter_context(temporary_node(pg_url, key=key, sealer=sealer))
        second = stack.enter_context(temporary_node(pg_url, key=key, sealer=sealer))
        assert first.leadership.held() and not second.leadership.held()
        second.points.enroll("max", idempotency_key="enrol-max")
        first.close()
        assert first.sealer.sealed_at_stop
        second.points.enroll("ada", idempotency_key="enrol-ada")
        second.close()  # takes the lapsed lease and seals its own writes
        assert second.sealer.sealed_at_stop
        _assert_chain(second, pg_url)
        assert [len(_log(second)), _headers(second)[-1].header.log_size] == [2, 2]


def test_a_sealer_that_lost_its_lease_cannot_seal(pg_url: str, key: SigningKey) -> None:
    """Fencing: the old holder, woken after another took over, tries to seal what is
    pending; its transaction finds another holder and token and writes nothing. Its
    state is reloaded, and the chain the new holder seals has no fork."""
    slow = SealerConfig(max_entries=1000, max_delay_ms=60_000)  # nobody seals on its own
    with ExitStack() as stack:
        old, new = _services(stack, pg_url, key, 2, slow)
        old.points.enroll("ivy", idempotency_key="enrol-ivy")
        assert old.ledger.flush() is not None
        old.leadership.pause()
        _until(new.leadership.held, FAILOVER_S)
        new.points.enroll("joe", idempotency_key="enrol-joe")
        blocks_before = _block_count(new)
        assert old.sealer.seal() is None  # woken: not the holder any more
        assert old.sealer.pending == 1  # reloaded: it sees the entry, but did not seal it
        assert _block_count(new) == blocks_before
        sealed = new.ledger.flush()
        assert sealed is not None and sealed.header.log_size == 2 and sealed.header.height == 1
        _until(lambda: old.sealer.log_size == 2, FAILOVER_S)  # the old one follows
        _assert_chain(new, pg_url)


def test_a_stale_sealer_state_is_reloaded_before_it_seals(pg_url: str, key: SigningKey) -> None:
    """A sealer whose view of the chain is old (others sealed since; its loop never ran)
    takes the lease: it builds on the newest stored block, never on its stale one."""
    with ExitStack() as stack:
        stale = stack.enter_context(temporary_node(pg_url, key=key, start=False))
        fresh = stack.enter_context(temporary_node(pg_url, key=key))
        assert stale.sealer.last is None
        for n in range(3):
            fresh.points.enroll(f"m{n}", idempotency_key=f"enrol-{n}")
            fresh.ledger.flush()
        fresh.leadership.stop()  # lets the lease go
        assert stale.leadership.try_acquire()
        assert stale.sealer.last is None  # the sealer's view from before (reads see the DB)
        stale.points.enroll("late", idempotency_key="enrol-late")
        sealed = stale.sealer.seal()
        assert sealed is not None
        assert sealed.header.height == 3 and sealed.header.first_index == 3
        assert sealed.header.log_size == 4
        _assert_chain(fresh, pg_url)


def test_followers_see_the_whole_log_and_wait_for_headers(pg_url: str, key: SigningKey) -> None:
    """A service without the lease keeps ``latest_header`` and ``wait_for_header`` (the
    WatchHeaders stream) current from the database."""
    with ExitStack() as stack:
        leader, follower = _services(
            stack, pg_url, key, 2, SealerConfig(max_entries=1, max_delay_ms=20)
        )
        assert not follower.leadership.held()
        got: list[SignedHeader | None] = []
        waiter = threading.Thread(
            target=lambda: got.append(follower.ledger.wait_for_header(-1, 10))
        )
        waiter.start()
        follower.points.enroll("sam", idempotency_key="enrol-sam")  # written by the follower
        waiter.join(15)
        assert got and got[0] is not None and got[0].header.height == 0
        header = follower.ledger.latest_header()
        assert header is not None and header.header.log_size == 1
        assert leader.ledger.latest_header() == header


def test_a_process_stalled_inside_its_transaction_does_not_stop_the_others(
    pg_url: str, key: SigningKey
) -> None:
    """A writer that stops (SIGSTOP) while it holds the log head's row lock: PostgreSQL
    ends its session after ``IDLE_IN_TRANSACTION_MS``, its work is rolled back, and the
    other processes' writes go on."""
    with ExitStack() as stack:
        stalled, other = _services(stack, pg_url, key, 2, SealerConfig())
        conn = stack.enter_context(stalled.sequencer.engine.connect())
        conn.begin()
        held = ledger_store.take_head(conn)  # ... and never another statement
        began = time.monotonic()
        written = other.points.enroll("eve", idempotency_key="enrol-eve")
        waited = time.monotonic() - began
        assert IDLE_IN_TRANSACTION_MS / 1000 - 1 <= waited <= IDLE_IN_TRANSACTION_MS / 1000 + 5
        with pytest.raises(DBAPIError):
            conn.execute(text("SELECT 1"))
        assert _log(other) == [(held, str(written.entry["id"]))]


def _healthz(http: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://{http}/healthz", timeout=5) as answer:
        report: dict[str, object] = json.loads(answer.read())
    return report


@pytest.mark.slow
def test_two_coalition_run_processes_on_one_database_serve_one_node(
    pg_url: str, tmp_path: Path
) -> None:
    """The issue's reproduction, with real processes: writes spread over two ``coalition
    run`` processes of one node all succeed (none answers a duplicate key or an unknown
    member), and both report the whole log, one of them sealing."""
    config = tmp_path / "node.toml"
    config.write_text(f'[program]\nid = "skyair"\n\n[node]\ndatabase = "{pg_url}"\n')
    made = subprocess.run(
        [sys.executable, "-m", "coalition.cli", "keygen", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    secrets = tomllib.loads((tmp_path / "keys" / "api-keys.secret.toml").read_text())
    operator = next(k["secret"] for k in secrets["api_keys"] if k["role"] == "operator")
    ports = iter(free_ports(4))
    nodes = []
    for n in range(2):
        grpc, http = f"127.0.0.1:{next(ports)}", f"127.0.0.1:{next(ports)}"
        env = {"COALITION_GRPC_ADDRESS": grpc, "COALITION_HTTP_ADDRESS": http}
        nodes.append(
            NodeProcess(config, grpc=grpc, http=http, log_path=tmp_path / f"{n}.log", env=env)
        )
    with ExitStack() as stack:
        for node in nodes:
            node.start()
            stack.callback(node.stop)
        for node in nodes:
            node.wait_ready(60)
        clients = [stack.enter_context(NodeClient(node.grpc, operator)) for node in nodes]
        for n in range(20):
            member = f"m{n}"
            one, other = clients[n % 2], clients[(n + 1) % 2]
            one.enroll(member, idempotency_key=f"e-{member}")
            other.adjust(member, 100, "op", "open", idempotency_key=f"a-{member}")
            one.redeem(member, 40, f"r-{member}", idempotency_key=f"r-{member}")
        for client in clients:
            assert client.balance("m7").spendable == 60
        _until(lambda: all(_healthz(n.http)["log_size"] == 60 for n in nodes), FAILOVER_S)
        reports = [_healthz(node.http) for node in nodes]
        assert sorted(bool(r["sealer"]) for r in reports) == [False, True], reports
        assert len({r["pid"] for r in reports}) == 2
    report = check_database(pg_url)
    assert report.ok and report.entries == 60, report.render()
