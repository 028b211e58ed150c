"""The sequencer: the one path by which entries are appended to a node's log.

A node is the single sequencer of its own log. Every write of the node (a member
operation, a bulk earn, the expiry job, a feature's decision, the rows of the outbox,
the inbox and the witness) runs as a *decision* inside the writer's transaction, through
``Sequencer.run`` or one of the helpers built on it. Reads take ``Sequencer.read``.

Several processes may serve one node on one PostgreSQL database (on SQLite, one process:
``store.db.lock_sqlite_file`` refuses a second). No process keeps the log's next index in
memory: the database does (the ``log_head`` row, ``store.ledger``).

A decision is either *serial* (the default: it may read anything) or *by account*
(``run(..., accounts=...)``: the member writes of ``node.points_service``). Why two: a
serial decision must see every write before it, so it excludes every other writer of
every process for its whole transaction; most writes touch one or two members, and
those of different members need not wait for each other, only for the log's numbering.

Contract (callers depend on it):

- **Acknowledged means durable.** ``run`` returns only after the transaction holding the
  decision committed: an entry the caller sees is *acknowledged*, and it is *durable*,
  committed together with the state it changes and its idempotency record (SQLite runs
  ``synchronous=FULL`` by default, so it survives a power cut). Every process of the node
  reads it from then on. It is not sealed yet: the sealer of whichever process holds the
  node's lease cuts it into a signed block in the background (``node.sealer``).
- **Locks, in one order** (PostgreSQL, READ COMMITTED; each held until commit, so the
  statements after it see what the previous holder committed): the program's *gate*,
  then *account* locks in key order, then the ``log_head`` row. A serial transaction
  takes the gate exclusive, then the head, before its first decision
  (``store.ledger.lock_all_writes``, ``take_head``): it runs alone among every write of
  every process. A by-account transaction takes the gate shared and the locks of every
  account its decisions name, in one statement, before its first decision
  (``store.ledger.lock_accounts``), and the head only after its last
  (``store.ledger.insert_at_head``), to number and insert its entries and commit. On SQLite,
  with one process, the writer lock below does all of it. A transaction is serial when
  any decision of its batch is.
- **Order.** Log indexes follow the order in which transactions took the head; the
  entries of one decision are consecutive, those of one transaction too. Transactions
  that share an account, or of which one is serial, commit one after the other, each
  seeing the other's writes; by-account transactions of disjoint accounts decide
  concurrently and are ordered by their numbering.
- **Dense.** The committed entries are always exactly the indexes ``0 .. next_index - 1``
  of the ``log_head`` row: a transaction moves the head by what it appended and commits
  both together, or neither; no index is skipped or given twice, whichever process wrote.
- **Debits of one balance are serialised**: every write that changes an account's lots
  holds that account's lock (by account) or the gate exclusive (serial).
- **Replay equals state.** The rows a decision changes commit with its entries, and the
  writes of one account are numbered in the order they were decided (its lock or the
  gate is held from the decision to the commit), so replaying the log in index order
  gives the stored accounts and lots (``coalition check``).
- **Group commit.** Within a process, concurrent calls queue; one caller at a time, the
  *leader*, takes every queued decision and runs them, in queue order, in one
  transaction (one head lock, one fsync for all of them), then hands the lead to the
  oldest call queued meanwhile. Each waiting caller is woken once: with its outcome, or
  to lead the next batch. A decision sees the rows written by those that ran before it
  in the same transaction; by account, their entries are inserted only when the head is
  taken at the end (their idempotency records are seen through ``tx.recorded``).
- **Inside the transaction** a decision MAY read and write any table through ``tx.conn``
  (its own rows: outbox, holds, answers ...) and append zero, one or several entries with
  ``tx.append``. It MUST NOT call the sequencer's writes (they fail with RuntimeError
  there: the call would wait for its own batch) and SHOULD do no network call: the
  writers waiting for its locks wait for it. A decision by account MUST read and write
  only the rows of the accounts it named (their member rows and lots) and rows that a
  unique index guards against a concurrent writer (its idempotency key, a lot's
  reference: the loser of such a race fails and is rerun, below); it MUST NOT read
  entries (other than through ``tx.recorded``) or any other shared state; a decision
  that does is serial.
- **Refusal.** A decision refuses by raising a ``CoalitionError`` before it appended an
  entry. The refusal reaches its own caller only and the other decisions of the batch
  commit; since the transaction goes on, a decision MUST NOT write rows while it may still
  refuse.
- **Failure.** Any other exception, or a ``CoalitionError`` raised after the decision
  appended an entry, rolls the whole batch back; every decision of the batch that did not
  refuse then runs again alone, in a serial transaction of its own (also a by-account
  decision that ran alone: so the loser of a race on a unique index decides again after
  the winner's commit), so a decision MUST be safe to run again: it reads what it needs
  through ``tx.conn`` and keeps no state from an earlier run. Alone and serial, its error
  reaches its caller and nothing it did is kept.
- **Storage failures** (``store.failures``: a full disk, a read-only or damaged
  database, an unreachable server) are never refusals: they roll the whole batch back and
  every decision of it that did not refuse gets the same ``StorageUnavailable`` or
  ``CorruptDatabase``, without a rerun. Nothing of the batch is acknowledged or kept.
- **Idempotency.** ``append`` records the caller's idempotency key with the entry, in the
  caller's scope (``node.idempotency``: the operator's, or one member's; a key of one
  scope never replays, refuses or reveals another's); the same key with the same request
  replays the recorded entry, with another request it is refused (``IdempotencyConflict``).
  Across processes one key gives one entry: the same request names the same accounts,
  so the second waits for the first's account locks and then sees its record; a request
  that names other accounts loses on the key's unique index and, rerun serial, sees the
  first's record and is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import Connection, Engine

from coalition.errors import CoalitionError, IdempotencyConflict, InvalidArgument
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import leaf_hash
from coalition.node.config import SealerConfig
from coalition.node.idempotency import OPERATOR, KeyScope
from coalition.node.leadership import Leadership
from coalition.node.ledger_keys import LedgerKeys, RotatedKeyLoader
from coalition.node.sealer import Sealer
from coalition.node.views import WriteResult
from coalition.points import model
from coalition.points.accounts import validate_reference
from coalition.points.operations import EntryContext
from coalition.points.state import Account, apply_typed
from coalition.store import flows as flows_store
from coalition.store import ledger as ledger_store
from coalition.store import members as members_store
from coalition.store.columns import to_micros
from coalition.store.failures import health_of, is_storage_failure

T = TypeVar("T")

Decision = tuple[JsonObject, list[Account], set[str]]
"""An entry a decision took: its body, the accounts it acts on (loaded with the lots it
needs) and the ids of those lots that already exist in the database."""

EntryDecision = Callable[[Connection, EntryContext], Decision | list[Decision] | None]
"""``decide(conn, ctx)``: the entry to append (or several, appended in list order, those
after the first with ids of their own), or None to append nothing."""


def new_entry_ids(count: int) -> list[str]:
    """Fresh entry ids: 12 hex digits of Unix milliseconds then 20 random ones. Unique, and
    roughly time-ordered, so index inserts append instead of landing on random pages."""
    prefix = f"{time.time_ns() // 1_000_000:012x}"
    noise = os.urandom(10 * count).hex()
    return [prefix + noise[20 * n : 20 * n + 20] for n in range(count)]


ENTRY_ID = re.compile(r"[0-9a-f]{32}")
"""An entry id (the whole string): 32 lowercase hex digits (``new_entry_ids``)."""


def check_entry_id(entry_id: str) -> None:
    """Entry ids are 32 lowercase hex digits (``new_entry_ids``); InvalidArgument otherwise."""
    if not isinstance(entry_id, str) or not ENTRY_ID.fullmatch(entry_id):
        raise InvalidArgument(f"malformed entry id {entry_id!r}: expected 32 hex digits")


_encode_request = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_FLAT_VALUES = (str, int, bool, type(None))
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*")


def request_hash(request: JsonObject) -> str:
    """What an idempotency key is bound to: SHA-256 of ``json`` with sorted keys and no
    spaces (ASCII, non-ASCII escaped). The hashes are stored beside the keys, so the
    encoding MUST never change. A flat request of strings and integers is encoded by
    orjson when that gives printable ASCII only, where both encoders write the same bytes
    (tests/unit/test_request_hash.py)."""
    if type(request) is dict and all(type(v) in _FLAT_VALUES for v in request.values()):
        try:
            data = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # an integer beyond 64 bits, a non-string key
            data = b"\x80"
        if _PRINTABLE_ASCII.fullmatch(data):
            return hashlib.sha256(data).hexdigest()
    return hashlib.sha256(_encode_request(request).encode()).hexdigest()


def idempotency_conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(f"idempotency key {key} was used for a different request")


class Transaction:
    """The writer's transaction as a decision sees it: ``conn`` for its own reads and
    writes, ``append`` for entries (at the next log indexes, in call order).

    Two ways to run (``Sequencer.run``'s ``accounts``): *serial*, the head taken first
    (``first_index`` known: each decision's entries are inserted when it returns), or
    *by account*, the head taken last (``first_index`` None: decisions' lots are written
    when each returns, their entries kept here and inserted by ``finish``, at the indexes
    the head then gives)."""

    def __init__(
        self,
        conn: Connection,
        program: str,
        first_index: int | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.conn = conn
        self.program = program
        self._clock = clock
        self._first_index = first_index
        self._next_index = 0 if first_index is None else first_index
        self._staged: list[dict[str, Any]] = []
        self._unnumbered: list[dict[str, Any]] = []
        self._recorded: dict[str, tuple[str | None, JsonObject]] = {}
        self._touched: dict[str, Account] = {}
        self._known: set[str] = set()
        self._appends = 0
        self.leaf_hashes: list[bytes] = []

    def now(self) -> datetime:
        """The node's clock."""
        return self._clock()

    def context(self) -> EntryContext:
        """A fresh entry id and the time now, for one entry."""
        return EntryContext(self.program, new_entry_ids(1)[0], self._clock())

    def contexts(self, count: int, at: datetime) -> Iterator[EntryContext]:
        """``count`` fresh entry ids, all at ``at`` (a batch decided at one time)."""
        return (EntryContext(self.program, i, at) for i in new_entry_ids(count))

    @property
    def appends(self) -> int:
        """How many entries decisions appended (or tried to) in this transaction."""
        return self._appends

    def recorded(self, key: str) -> tuple[str | None, JsonObject] | None:
        """The request hash and entry recorded under idempotency ``key``: committed, or
        appended earlier in this transaction (whose entries a transaction by account
        inserts only at its end)."""
        return self._recorded.get(key) or ledger_store.find_idempotent(self.conn, key)

    def append(
        self,
        body: JsonObject,
        touched: Sequence[Account],
        known: Iterable[str] = (),
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> None:
        """Append the entry ``body``: apply it to ``touched`` (the accounts it acts on,
        one object per account in a decision), whose changed lots are written with the
        entry; ``known`` are the ids of their lots already stored. Written when the
        decision returns: reads through ``conn`` do not see it before. A body
        ``points.operations`` built (``model.EntryBody``) is applied as the typed entry
        it carries, never parsed again; any other body is parsed first."""
        self._appends += 1
        by_id = {account.id: account for account in touched}
        apply_typed(model.typed_entry(body), by_id.__getitem__)
        data = canonical_json(body)
        to_account = body.get("to")
        self._staged.append(
            {
                "entry_id": body["id"],
                "kind": body["kind"],
                "account": body["account"],
                "to_account": to_account if isinstance(to_account, str) else None,
                "body": data.decode(),
                "leaf_hash": leaf_hash(data),
                "idem_key": idempotency_key,
                "request_hash": request_hash,
            }
        )
        if idempotency_key is not None:
            self._recorded[idempotency_key] = (request_hash, body)
        self._touched.update(by_id)
        self._known.update(known)

    def attempt(self, decide: EntryDecision) -> JsonObject | CoalitionError | None:
        """Run one decision of a batch: the (last) entry it appended, None when it chose to
        append nothing, or the ``CoalitionError`` it refused with (and the batch goes on)."""
        before = self._appends
        try:
            decision = decide(self.conn, self.context())
        except CoalitionError as exc:
            if self._appends != before:  # it appended, then failed: not a refusal
                raise
            return exc
        if decision is None:
            return None
        decisions = decision if isinstance(decision, list) else [decision]
        for body, touched, known in decisions:
            self.append(body, touched, known)
        self.flush()
        return decisions[-1][0]

    def flush(self) -> None:
        """Write the lots the staged entries changed, and the entries themselves when the
        head is held (serial); by account, they wait for ``finish``."""
        if self._staged:
            if self._first_index is None:
                self._unnumbered.extend(self._staged)
            else:
                self._insert(self._staged, self._next_index)
            self._staged = []
        if self._touched:
            members_store.save_lots(self.conn, self._touched.values(), self._known)
            self._touched = {}
            self._known = set()

    def finish(self) -> None:
        """Number and insert what is still unnumbered (taking the head now) and move the
        head past every entry of the transaction; the last step before the commit."""
        self.flush()
        if self._first_index is None:
            if self._unnumbered:
                rows, self._unnumbered = self._unnumbered, []
                self._inserted(rows, ledger_store.insert_at_head(self.conn, rows))
        elif self._next_index != self._first_index:
            ledger_store.advance_head(self.conn, self._next_index)

    def _insert(self, rows: list[dict[str, Any]], first: int) -> None:
        for offset, row in enumerate(rows):
            row["log_index"] = first + offset
        ledger_store.insert_entries(self.conn, rows)
        self._inserted(rows)

    def _inserted(self, rows: list[dict[str, Any]], first: int | None = None) -> None:
        """What follows the insert of ``rows`` (numbered from ``first`` when the insert
        numbered them): the flows, the leaf hashes, the next index."""
        if first is not None:
            for offset, row in enumerate(rows):
                row["log_index"] = first + offset
        flows_store.record_entries(self.conn, rows)  # derived: the explorer's flows
        self.leaf_hashes.extend(row["leaf_hash"] for row in rows)
        self._next_index = rows[-1]["log_index"] + 1


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(slots=True)
class _Queued(Generic[T]):
    """A decision waiting for the group commit; ``done`` once committed or refused.
    ``wake`` is released exactly once: when the decision is done, or when its caller
    is to lead the next batch."""

    work: Callable[[Transaction], T]
    accounts: frozenset[str] | None
    result: T | None = None
    error: BaseException | None = None
    refused: bool = False
    done: bool = False
    wake: threading.Lock = field(default_factory=_held_lock)


class Sequencer:
    """The writer of one program's log (see the module's contract) and its read sessions;
    owns the node's ``leadership`` (the lease) and the sealer, which it nudges after
    every commit that appended entries."""

    def __init__(
        self,
        engine: Engine,
        program: str,
        key: SigningKey,
        sealer: SealerConfig,
        clock: Callable[[], datetime] | None = None,
        *,
        rotated_keys: RotatedKeyLoader | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """``key`` is the program's first ledger key (the manifest's); ``rotated_keys``
        loads the keys later rotations put in force (``node.ledger_keys``). ``monotonic``
        (the simulator): the lease runs on it and, on SQLite, is dated by ``clock``, so no
        timing of the node reads this host's clocks."""
        self.program = program
        self._engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))
        self._writer = threading.Lock()  # held by the leader while it commits
        self._queue_lock = threading.Lock()  # guards the queue and the two fields below
        self._queue: list[_Queued[Any]] = []
        self._leading = False  # a caller leads: it, or its successor, takes the queue
        self._leader: int | None = None  # the leader's thread while it commits
        self._storage = health_of(engine)
        self.leadership = (
            Leadership(engine)
            if monotonic is None
            else Leadership(engine, monotonic=monotonic, wall_us=lambda: to_micros(self._clock()))
        )
        self.keys = LedgerKeys(program, key, rotated_keys)
        self.sealer = Sealer(engine, program, self.keys, sealer, self._clock, self.leadership)

    @property
    def engine(self) -> Engine:
        """The node's database, an escape hatch for tests and tools only (a tamper test, a
        benchmark that bulk-loads rows): node code MUST read through ``read`` and write
        through ``run``, or the log's head no longer matches the log (a tool that
        inserts entry rows itself calls ``store.ledger.set_head_to_log``)."""
        return self._engine

    def now(self) -> datetime:
        """The node's clock (the time its entries carry)."""
        return self._clock()

    @property
    def next_index(self) -> int:
        """The log index the next committed entry gets (the committed head, read now)."""
        with self._engine.connect() as conn:
            return ledger_store.read_head(conn)

    @property
    def waiting(self) -> int:
        """Decisions queued for the next group commit."""
        with self._queue_lock:
            return len(self._queue)

    def read(self) -> AbstractContextManager[Connection]:
        """A read session: sees committed state only, never blocks the writer."""
        return self._engine.connect()

    def start(self) -> None:
        """Claim the node's lease (kept renewed) and start the sealer's loop."""
        self.leadership.start()
        self.sealer.start()

    def close(self) -> None:
        """Stop the sealer (holding the lease, it seals what is pending first), let the
        lease go and release the database."""
        try:
            self.sealer.stop()
        finally:
            self.leadership.stop()
            self._engine.dispose()

    # --- writes -------------------------------------------------------------------------

    def run(
        self, work: Callable[[Transaction], T], *, accounts: Collection[str] | None = None
    ) -> T:
        """Run ``work(tx)`` as one decision in the writer's transaction and return what it
        returned once committed; raise its refusal or failure (the module's contract).
        ``accounts``: the decision is *by account* (the module's contract says what it
        may then read); None, serial.

        The hand-off (leader and followers, as LevelDB's writer queue): a call queues its
        decision; if no call leads, it leads at once, else it sleeps until it is woken,
        once, by the leader: done, or made the next leader."""
        if self._leader == threading.get_ident():
            raise RuntimeError(
                "a decision called the sequencer's writes inside the writer's transaction"
            )
        item: _Queued[T] = _Queued(work, None if accounts is None else frozenset(accounts))
        with self._queue_lock:
            self._queue.append(item)
            follow, self._leading = self._leading, True
        if follow:
            item.wake.acquire()
        if not item.done:
            self._lead(item)
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]  # T, set by the commit

    def _lead(self, mine: _Queued[Any]) -> None:
        """Commit every queued decision (``mine`` among them), wake their callers, and
        hand the lead to the oldest decision queued since, if any."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            with self._writer:
                self._leader = threading.get_ident()
                try:
                    self._commit(batch)
                finally:
                    self._leader = None
        finally:
            for item in batch:
                if not item.done:  # the commit itself was interrupted (BaseException)
                    item.result, item.done = None, True
                    item.error = RuntimeError(
                        "the writer stopped before this decision's outcome was known"
                    )
            with self._queue_lock:
                successor = self._queue[0] if self._queue else None
                self._leading = successor is not None
            if successor is not None:
                successor.wake.release()
            for item in batch:
                if item is not mine:
                    item.wake.release()

    def decide(self, decide: EntryDecision) -> JsonObject | None:
        """One decision of zero or one entry: the entry appended (None for none); its
        refusal is raised."""
        result = self.run(lambda tx: tx.attempt(decide))
        if isinstance(result, CoalitionError):
            raise result
        return result

    def decide_each(
        self, decisions: Callable[[], Sequence[EntryDecision]]
    ) -> list[JsonObject | CoalitionError | None]:
        """Many decisions in one transaction, each refused alone: per decision its entry,
        its refusal or None. ``decisions()`` builds them, again for a rerun, so state they
        share (e.g. rows read once for the batch) is fresh each time."""
        return self.run(lambda tx: [tx.attempt(decide) for decide in decisions()])

    def append(
        self,
        request: JsonObject,
        idempotency_key: str | None,
        decide: Callable[[Connection, EntryContext], Decision | list[Decision]],
        *,
        accounts: Collection[str] | None = None,
        scope: KeyScope = OPERATOR,
    ) -> WriteResult:
        """Append the entry ``decide`` takes, recorded under ``idempotency_key`` in the
        caller's ``scope`` (``node.idempotency``), or replay the entry recorded for it.
        ``decide`` may take several entries (appended consecutively, in list order; it
        gives those after the first ids of their own, ``new_entry_ids``): the key is
        recorded with the last, which is the write's result. Without a key
        nothing is recorded (system entries that are idempotent by their own ids).
        ``accounts`` as for ``run``."""
        if idempotency_key is None:
            key, stored, legacy, req_hash = None, None, None, None
        else:
            key = validate_reference(idempotency_key, "idempotency key")
            stored, legacy = scope.stored(key), scope.legacy(key)
            req_hash = request_hash(request)

        def work(tx: Transaction) -> WriteResult:
            if key is not None and stored is not None:
                found = tx.recorded(stored)
                if found is not None:
                    if found[0] != req_hash:
                        raise idempotency_conflict(key)
                    return WriteResult(found[1], replayed=True)
                before = tx.recorded(legacy) if legacy is not None else None
                if before is not None and before[0] == req_hash:
                    return WriteResult(before[1], replayed=True)
            decided = decide(tx.conn, tx.context())
            decisions = decided if isinstance(decided, list) else [decided]
            for n, (body, touched, known) in enumerate(decisions, start=1):
                last = n == len(decisions)
                tx.append(
                    body,
                    touched,
                    known,
                    idempotency_key=stored if last else None,
                    request_hash=req_hash if last else None,
                )
            return WriteResult(decisions[-1][0])

        return self.run(work, accounts=accounts)

    def _commit(self, batch: list[_Queued[Any]], *, serial: bool = False) -> None:
        """Run ``batch`` in one transaction (the caller holds the writer lock); ``serial``
        runs it so even when its decisions are by account (a rerun)."""
        try:
            with self._engine.begin() as conn:
                tx = self._begin(conn, batch, serial=serial)
                for item in batch:
                    before = tx.appends
                    try:
                        item.result = item.work(tx)
                    except CoalitionError as exc:
                        if tx.appends != before or is_storage_failure(exc):
                            raise  # it appended, then failed, or the storage failed
                        item.error, item.refused = exc, True
                        continue
                    tx.flush()
                tx.finish()
        except Exception as exc:
            if is_storage_failure(exc):
                self._fail_all(batch, exc)
                return
            # Alone and serial, a decision by account that lost a race on a unique index
            # (its idempotency key, a lot's reference) sees the winner's commit.
            if len(batch) == 1 and (serial or batch[0].accounts is None):
                batch[0].result, batch[0].error, batch[0].done = None, exc, True
                return
            for item in batch:
                if not item.refused:
                    item.result = None
                    self._commit([item], serial=True)
                item.done = True
            return
        self._storage.recovered()
        if tx.leaf_hashes:
            self.sealer.added(len(tx.leaf_hashes))
        for item in batch:
            item.done = True

    @staticmethod
    def _fail_all(batch: list[_Queued[Any]], error: Exception) -> None:
        """The storage failed under ``batch`` (its transaction rolled back): every decision
        that did not refuse gets the same error; none is rerun, since each rerun would
        only meet the same full, read-only or damaged database again."""
        for item in batch:
            if not item.refused:
                item.result, item.error = None, error
            item.done = True

    def _begin(self, conn: Connection, batch: list[_Queued[Any]], *, serial: bool) -> Transaction:
        """Take the locks ``batch`` needs and open its transaction: by account when every
        decision of it is and ``serial`` is false (their accounts locked, the head taken
        at the end), else serial (every other writer locked out, the head taken now)."""
        accounts: set[str] = set()
        for item in batch:
            if serial or item.accounts is None:
                ledger_store.lock_all_writes(conn, self.program)
                return Transaction(conn, self.program, ledger_store.take_head(conn), self._clock)
            accounts |= item.accounts
        ledger_store.lock_accounts(conn, self.program, accounts)
        return Transaction(conn, self.program, None, self._clock)
