"""The sequencer's contract (coalition.node.sequencer), on SQLite and PostgreSQL: what a
decision commits, what a refusal or a failure leaves behind, and the group commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, func, insert, select

from coalition.errors import CoalitionError, FailedPrecondition
from coalition.ledger.canonical import JsonObject
from coalition.node.config import SealerConfig
from coalition.node.sequencer import Sequencer, Transaction
from coalition.node.service import NodeService
from coalition.points import operations
from coalition.points.operations import EntryContext
from coalition.points.state import Account
from coalition.store import columns as columns_store
from coalition.store import ledger as ledger_store
from coalition.store.ledger import entries
from coalition.store.partners import SeenMessageRow

from support.nodes import Clock, temporary_node

SEEN = SeenMessageRow.__table__  # type: ignore[attr-defined]


@pytest.fixture
def node(database_url: str) -> Iterator[NodeService]:
    with temporary_node(
        database_url, clock=Clock(), sealer=SealerConfig(max_entries=1000, max_delay_ms=20)
    ) as service:
        yield service


def _mark(conn: Connection, message_id: str) -> None:
    """A row of a decision's own (the replay guard's table serves as any table)."""
    conn.execute(insert(SEEN).values(sender="tester", message_id=message_id, seen_at=0))


def _marks(sequencer: Sequencer) -> list[str]:
    with sequencer.read() as conn:
        return sorted(conn.execute(select(SEEN.c.message_id)).scalars())


def _entry_count(sequencer: Sequencer) -> int:
    with sequencer.read() as conn:
        return int(conn.execute(select(func.count()).select_from(entries)).scalar_one())


def _enrol_entry(tx: Transaction, account: str) -> JsonObject:
    """Append an ``enroll`` entry for ``account`` (a bare entry: no member row)."""
    body = operations.enroll(tx.context(), account)
    tx.append(body, [Account(account)])
    return body


def test_a_decision_that_appends_no_entry_commits_its_rows_once(node: NodeService) -> None:
    sequencer = node.sequencer
    index = sequencer.next_index
    assert sequencer.run(lambda tx: _mark(tx.conn, "row-only")) is None
    assert _marks(sequencer) == ["row-only"]
    assert sequencer.next_index == index
    assert _entry_count(sequencer) == 0
    assert sequencer.decide(lambda conn, ctx: _mark(conn, "no-entry")) is None
    assert _marks(sequencer) == ["no-entry", "row-only"]
    assert _entry_count(sequencer) == 0


def test_a_decision_appends_several_entries_at_consecutive_indexes(node: NodeService) -> None:
    sequencer = node.sequencer

    def three(tx: Transaction) -> list[JsonObject]:
        _mark(tx.conn, "with-entries")
        return [_enrol_entry(tx, f"acct-{n}") for n in range(3)]

    first = sequencer.next_index
    bodies = sequencer.run(three)
    assert sequencer.next_index == first + 3
    sealed = node.ledger.flush()
    assert sealed is not None and sealed.header.log_size == first + 3
    with sequencer.read() as conn:
        stored = ledger_store.entry_bodies(conn, first, first + 3)
    assert [index for index, _, _ in stored] == [first, first + 1, first + 2]
    assert [columns_store.stored_object(body) for _, body, _ in stored] == bodies
    assert _marks(sequencer) == ["with-entries"]


def test_a_refused_decision_leaves_nothing(node: NodeService) -> None:
    sequencer = node.sequencer

    def refuse(tx: Transaction) -> None:
        raise FailedPrecondition("not now")

    def refuse_entry(conn: Connection, ctx: EntryContext) -> None:
        raise FailedPrecondition("not now")

    with pytest.raises(FailedPrecondition, match="not now"):
        sequencer.run(refuse)
    with pytest.raises(FailedPrecondition, match="not now"):
        sequencer.decide(refuse_entry)
    assert _marks(sequencer) == []
    assert sequencer.next_index == 0
    # A refusal after appending is a failure: the whole decision is rolled back.

    def append_then_refuse(tx: Transaction) -> None:
        _enrol_entry(tx, "acct-x")
        _mark(tx.conn, "half-done")
        raise FailedPrecondition("changed my mind")

    with pytest.raises(FailedPrecondition, match="changed my mind"):
        sequencer.run(append_then_refuse)
    assert _marks(sequencer) == []
    assert _entry_count(sequencer) == 0
    assert sequencer.next_index == 0
    sequencer.run(lambda tx: _enrol_entry(tx, "acct-y"))
    assert sequencer.next_index == 1
    with sequencer.read() as conn:
        assert [index for index, _, _ in ledger_store.entry_bodies(conn, 0, 5)] == [0]


def test_decide_each_refuses_per_decision(node: NodeService) -> None:
    sequencer = node.sequencer

    def ok(conn: Connection, ctx: EntryContext) -> tuple[JsonObject, list[Account], set[str]]:
        return operations.enroll(ctx, "acct-ok"), [Account("acct-ok")], set()

    def refused(conn: Connection, ctx: EntryContext) -> None:
        raise FailedPrecondition("no")

    def nothing(conn: Connection, ctx: EntryContext) -> None:
        _mark(conn, "nothing")

    results = sequencer.decide_each(lambda: [ok, refused, nothing])
    assert isinstance(results[0], dict) and results[0]["kind"] == "enroll"
    assert isinstance(results[1], FailedPrecondition)
    assert results[2] is None
    assert _entry_count(sequencer) == 1
    assert _marks(sequencer) == ["nothing"]


def _hold_writer(sequencer: Sequencer) -> tuple[threading.Thread, threading.Event]:
    """A decision that keeps the writer busy until the returned event is set."""
    running, release = threading.Event(), threading.Event()

    def busy(tx: Transaction) -> None:
        running.set()
        assert release.wait(30)
        _mark(tx.conn, "busy")

    thread = threading.Thread(target=sequencer.run, args=(busy,))
    thread.start()
    assert running.wait(30)
    return thread, release


def _in_thread(
    call: Callable[[], object], outcome: dict[str, object], name: str
) -> threading.Thread:
    def run() -> None:
        try:
            outcome[name] = call()
        except BaseException as exc:
            outcome[name] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _await_queue(sequencer: Sequencer, size: int) -> None:
    for _ in range(3000):
        if sequencer.waiting == size:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{size} decisions never queued")


def test_a_failed_batch_is_rerun_decision_by_decision(node: NodeService) -> None:
    """Queued behind a busy writer, a failing decision and two sound ones share a
    transaction; the failure rolls it back, then each runs again alone: the sound ones
    commit once (the one that ran before the failure with its state built afresh), the
    failing one reaches only its caller."""
    sequencer = node.sequencer
    busy, release = _hold_writer(sequencer)
    built: list[int] = []
    outcome: dict[str, object] = {}

    def bug(tx: Transaction) -> None:
        _enrol_entry(tx, "acct-bug")
        raise RuntimeError("a bug")

    def batch() -> list[Callable[[Connection, EntryContext], None]]:
        built.append(1)  # rebuilt for the rerun: shared state starts fresh
        return [lambda conn, ctx: _mark(conn, "each")]

    calls: list[tuple[str, Callable[[], object]]] = [
        ("each", lambda: sequencer.decide_each(batch)),  # runs, then is rolled back
        ("bug", lambda: sequencer.run(bug)),
        ("ok", lambda: sequencer.run(lambda tx: _enrol_entry(tx, "acct-ok"))),
    ]
    threads = []
    for queued, (name, call) in enumerate(calls, start=1):  # queued in this order
        threads.append(_in_thread(call, outcome, name))
        _await_queue(sequencer, queued)
    release.set()
    for thread in (busy, *threads):
        thread.join(30)
    assert isinstance(outcome["bug"], RuntimeError)
    assert outcome["each"] == [None]
    assert isinstance(outcome["ok"], dict) and outcome["ok"]["account"] == "acct-ok"
    assert len(built) == 2
    assert _marks(sequencer) == ["busy", "each"]
    with sequencer.read() as conn:
        stored = ledger_store.entry_bodies(conn, 0, 10)
    assert [index for index, _, _ in stored] == [0]
    assert columns_store.stored_object(stored[0][1])["account"] == "acct-ok"
    assert sequencer.next_index == 1


def test_refusals_in_a_batch_stay_with_their_callers(node: NodeService) -> None:
    sequencer = node.sequencer
    busy, release = _hold_writer(sequencer)
    outcome: dict[str, object] = {}

    def refuse(tx: Transaction) -> None:
        raise FailedPrecondition("refused")

    threads = [
        _in_thread(lambda: sequencer.run(refuse), outcome, "refused"),
        _in_thread(lambda: sequencer.run(lambda tx: _enrol_entry(tx, "acct-1")), outcome, "one"),
        _in_thread(lambda: sequencer.run(lambda tx: _mark(tx.conn, "rows")), outcome, "rows"),
    ]
    _await_queue(sequencer, 3)
    release.set()
    for thread in (busy, *threads):
        thread.join(30)
    assert isinstance(outcome["refused"], CoalitionError)
    assert isinstance(outcome["one"], dict)
    assert outcome["rows"] is None
    assert _marks(sequencer) == ["busy", "rows"]
    assert _entry_count(sequencer) == 1


def test_a_decision_that_calls_the_sequencer_fails_instead_of_waiting_for_itself(
    node: NodeService,
) -> None:
    """The writer is not re-entrant: a write from inside a decision would wait for its own
    batch for ever. It raises instead, the decision fails alone, nothing is kept, and the
    sequencer goes on serving."""
    sequencer = node.sequencer

    def nested(tx: Transaction) -> None:
        _mark(tx.conn, "outer")
        sequencer.run(lambda inner: _mark(inner.conn, "inner"))

    with pytest.raises(RuntimeError, match="inside the writer's transaction"):
        sequencer.run(nested)
    assert _marks(sequencer) == []
    assert sequencer.run(lambda tx: _enrol_entry(tx, "acct-after"))["account"] == "acct-after"
    assert sequencer.next_index == 1


def test_a_batch_stopped_by_a_base_exception_gives_every_caller_an_error(
    node: NodeService,
) -> None:
    """A KeyboardInterrupt (no ``Exception``) raised by one decision of a batch is not a
    failure the batch reruns: it reaches whichever caller ran the batch, and every other
    caller of the batch gets RuntimeError, never a result for a write that was rolled
    back. The next batch commits as usual."""
    sequencer = node.sequencer
    busy, release = _hold_writer(sequencer)
    outcome: dict[str, object] = {}

    def interrupt(tx: Transaction) -> None:
        _enrol_entry(tx, "acct-interrupted")
        raise KeyboardInterrupt

    calls: list[tuple[str, Callable[[], object]]] = [
        ("one", lambda: sequencer.run(lambda tx: _enrol_entry(tx, "acct-1"))),
        ("interrupt", lambda: sequencer.run(interrupt)),
        ("rows", lambda: sequencer.run(lambda tx: _mark(tx.conn, "rows"))),
    ]
    threads = []
    for queued, (name, call) in enumerate(calls, start=1):
        threads.append(_in_thread(call, outcome, name))
        _await_queue(sequencer, queued)
    release.set()
    for thread in (busy, *threads):
        thread.join(30)
    kinds = sorted(type(outcome[name]).__name__ for name, _ in calls)
    assert kinds == ["KeyboardInterrupt", "RuntimeError", "RuntimeError"]
    assert _marks(sequencer) == ["busy"]
    assert _entry_count(sequencer) == 0
    assert sequencer.run(lambda tx: _enrol_entry(tx, "acct-next"))["account"] == "acct-next"
    assert _entry_count(sequencer) == 1


def test_many_callers_each_get_their_own_outcome_through_the_hand_off(
    node: NodeService,
) -> None:
    """16 threads, 20 calls each, through the leader/follower hand-off: commits, refusals
    and failures (a failure rolls its batch back and every decision runs again alone)
    interleave in shared batches; every caller gets its own result or error, every
    committed entry is in the log once, the log is dense."""
    sequencer = node.sequencer
    outcomes: dict[str, object] = {}
    lock = threading.Lock()

    def call(name: str) -> object:
        kind = sum(map(ord, name)) % 5

        def work(tx: Transaction) -> JsonObject:
            if kind == 0:
                raise FailedPrecondition(f"refused {name}")
            body = _enrol_entry(tx, f"acct-{name}")
            if kind == 1:
                raise RuntimeError(f"failed {name}")
            return body

        try:
            return sequencer.run(work)
        except (FailedPrecondition, RuntimeError) as exc:
            return exc

    def client(thread: int) -> None:
        for n in range(20):
            name = f"{thread}-{n}"
            result = call(name)
            with lock:
                outcomes[name] = result

    threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 16 * 20
    committed = []
    for name, result in outcomes.items():
        kind = sum(map(ord, name)) % 5
        if kind == 0:
            assert isinstance(result, FailedPrecondition) and str(result) == f"refused {name}"
        elif kind == 1:
            assert isinstance(result, RuntimeError) and str(result) == f"failed {name}"
        else:
            assert isinstance(result, dict) and result["account"] == f"acct-{name}"
            committed.append(f"acct-{name}")
    assert sequencer.next_index == len(committed) == _entry_count(sequencer)
    with sequencer.read() as conn:
        stored = ledger_store.entry_bodies(conn, 0, len(committed) + 1)
    assert [index for index, _, _ in stored] == list(range(len(committed)))
    accounts = [columns_store.stored_object(body)["account"] for _, body, _ in stored]
    assert sorted(accounts) == sorted(committed)
