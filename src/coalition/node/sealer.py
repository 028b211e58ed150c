"""The sealer: cuts pending entries into signed, hash-chained blocks.

A block is sealed when ``max_entries`` entries are pending or the oldest pending entry
has waited ``max_delay_ms``. The log root is kept incrementally in a compact range, and
only the perfect subtree nodes at stored levels are written, so sealing costs O(entries)
hashes and about one node row per 2**stride entries, never a rebuild of the tree.

Several processes of one node share the database; each runs a sealer, and only the one
holding the node's lease (``node.leadership``) seals. Contract:

- **Pending entries come from the database**: the committed entries at and after the
  sealed size (they are a dense prefix of the log, ``store.ledger.take_head``), whoever
  wrote them. Local commits nudge the loop (``added``); other processes' commits are
  found by polling every ``min(max_delay_ms / 4, 100 ms)``.
- **Fenced sealing.** Blocks are written (up to ``SEAL_BLOCKS`` together) in a transaction
  that first locks the lease row and checks holder, token and expiry
  (``Leadership.fence``), then checks that the newest stored block is the one this
  sealer built on. If either fails the transaction
  writes nothing, the sealer reloads its state (last header, compact range from the
  stored nodes) and does not seal: a block is never sealed twice, skipped or forked,
  even by a holder woken from a pause after losing its lease.
- **Every process sees the whole log.** A sealer that does not hold the lease follows
  the stored blocks by the same poll, so ``last``, ``log_size`` and
  ``wait_for_header`` are current in every process.
- Entries are durable (committed) before they are pending; a block is durable before
  ``wait_for_header`` reports it.
- **A failing storage never stops the loop**: while the disk is full (or the database
  read-only, unreachable) the loop backs off (``STORAGE_BACKOFF_MAX_S``) and tries again,
  and seals the pending entries once the storage works.
- **Each block is signed by the key in force** for its first index
  (``ledger.rotation``), the schedule read from the stored rotations before each seal
  (``node.ledger_keys``); a block whose key this process cannot load is not sealed (nor
  anything after it), and sealing resumes once the key file is there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection, Engine

from coalition.errors import CoalitionError, LedgerDamaged
from coalition.ledger.blocks import SignedHeader, make_header, sign_header
from coalition.ledger.canonical import canonical_json
from coalition.ledger.entries import format_time
from coalition.ledger.merkle import CompactRange, NodeCoord, root_coords, stored_coords
from coalition.node.config import SealerConfig
from coalition.node.leadership import Leadership
from coalition.node.ledger_keys import LedgerKeys
from coalition.store import ledger as ledger_store
from coalition.store.failures import health_of, is_storage_failure
from coalition.store.ledger import TREE_STRIDE, signed_header_from_row

log = logging.getLogger(__name__)

POLL_CAP_S = 0.1
"""The longest a sealer waits before looking at the database again."""
SEAL_BLOCKS = 16
"""Blocks the loop and ``flush`` seal in one transaction when that many are full: during a
bulk ingest the sealer then commits (and fsyncs) once per 16 blocks, not once per block,
and holds SQLite's one write lock, which the writer waits for, 16 times less often."""
STORAGE_BACKOFF_MAX_S = 2.0
"""The longest the loop waits between rounds while the storage fails (a full disk)."""
FOLLOW_TIMEOUT_S = 10.0
"""How long ``flush`` and ``stop`` in a process without the lease wait for the holder to
seal (the lease lapses in 3 s, so a dead holder's work is taken over well within it)."""


DAMAGED_RETRY_S = 1.0
"""How often a sealer that found its stored frontier damaged looks again (a restored
database lets it go on)."""


class _Stale(Exception):
    """The sealing transaction found the lease or the chain not as this sealer left it."""

    def __init__(self, reason: str, *, lease_lost: bool) -> None:
        super().__init__(reason)
        self.lease_lost = lease_lost


class Sealer:
    """Owns this process's view of the log's tail: the last header, the compact range,
    and (while it holds the lease) the pending leaf hashes."""

    def __init__(
        self,
        engine: Engine,
        program: str,
        keys: LedgerKeys,
        config: SealerConfig,
        clock: Callable[[], datetime],
        leadership: Leadership,
    ) -> None:
        self._engine = engine
        self._storage = health_of(engine)
        self._program = program
        self.keys = keys
        self._config = config
        self._clock = clock
        self.leadership = leadership
        self._cond = threading.Condition()
        self._seal_lock = threading.Lock()  # guards the state below while it changes
        self._stop = False
        self._thread: threading.Thread | None = None
        self._unseen = 0  # entries committed here since the last look at the database
        self._poll_s = min(config.max_delay_ms / 4000, POLL_CAP_S)
        self.node_cache = ledger_store.NodeCache()
        self.last: SignedHeader | None = None
        self._range = CompactRange.from_nodes(0, {}, TREE_STRIDE)
        self._pending: list[bytes] = []
        self._oldest: float | None = None
        self._key_trouble: str | None = None
        """The last reason logged for sealing nothing for want of a key (``_key_problem``)."""
        self.sealed_at_stop = False
        """Whether ``stop`` saw every entry committed before it sealed (by this process
        or by the lease holder) within ``FOLLOW_TIMEOUT_S``."""
        with engine.connect() as conn:
            self._reload(conn)
            self._read_pending(conn)
        self._took_lease = True
        leadership.on_change(self._lease_changed)

    @property
    def log_size(self) -> int:
        """Entries sealed so far (as this process last saw the stored blocks)."""
        return self._range.size

    @property
    def pending(self) -> int:
        """Committed entries not yet sealed, as this process last read them."""
        with self._cond:
            return len(self._pending)

    # --- this process's view of the stored chain --------------------------------------

    def _reload(self, conn: Connection) -> None:
        """Rebuild the view from the stored chain: the newest block, the compact range
        from the stored nodes; pending is read again from the new size. The caller holds
        ``_seal_lock`` (or is ``__init__``). LedgerDamaged, and the view unchanged, when
        the stored frontier does not give the newest header's log root: a block sealed on
        it would sign a wrong root."""
        row = ledger_store.last_block(conn)
        last = None if row is None else signed_header_from_row(row[1], row[2])
        size = 0 if last is None else last.header.log_size
        needed = stored_coords(root_coords(size), TREE_STRIDE)
        nodes = ledger_store.read_nodes(conn, needed, self.node_cache)
        tree = CompactRange.from_nodes(size, nodes, TREE_STRIDE)
        if last is not None and tree.root().hex() != last.header.log_root:
            raise LedgerDamaged(
                f"the stored tree nodes at log size {size} do not give the log root signed at "
                f"height {last.header.height}: a stored tree node or leaf hash was changed, so "
                "nothing is sealed on them ('coalition check --config NODE.toml' names it)"
            )
        with self._cond:
            self.last = last
            self._range = tree
            self._pending = []
            self._oldest = None
            self._cond.notify_all()

    def _height(self) -> int | None:
        return None if self.last is None else self.last.header.height

    def _follow(self, conn: Connection) -> None:
        """Reload if blocks were stored since this process last looked (another process
        sealed them)."""
        if ledger_store.last_height(conn) != self._height():
            self._reload(conn)

    def _read_pending(self, conn: Connection) -> None:
        """Append the committed entries after those already pending."""
        start = self._range.size + len(self._pending)
        fresh = ledger_store.leaf_hashes_from(conn, start)
        with self._cond:
            self._unseen = 0
            if fresh:
                if not self._pending:
                    self._oldest = time.monotonic()
                self._pending.extend(fresh)

    def refresh(self) -> None:
        """Look at the database now, one query: without the lease, follow the stored
        blocks; holding it, read the pending entries (only the holder seals, so its view
        of the blocks is current; it follows once when it takes the lease, and ``seal``
        checks again inside its fenced transaction)."""
        with self._seal_lock, self._engine.connect() as conn:
            if not self.leadership.held():
                self._follow(conn)
                return
            if self._took_lease:
                self._took_lease = False
                self._follow(conn)
            self._read_pending(conn)

    # --- sealing ----------------------------------------------------------------------

    def added(self, count: int) -> None:
        """Report ``count`` entries this process just committed (the writer calls this):
        a nudge, the entries themselves are read from the database."""
        with self._cond:
            self._unseen += count
            if len(self._pending) + self._unseen >= self._config.max_entries:
                self._cond.notify_all()

    def _lease_changed(self, held: bool) -> None:
        with self._cond:
            self._took_lease = self._took_lease or held
            self._cond.notify_all()

    def seal(self, blocks: int = 1) -> SignedHeader | None:
        """Seal pending entries now, fenced (see the contract), into up to ``blocks``
        blocks of ``max_entries`` written in one transaction (one commit for all of them);
        a block of fewer entries only alone. The newest header; None when nothing is
        pending or this process may not seal."""
        with self._seal_lock:
            with self._engine.connect() as conn:
                self._follow(conn)
                self._read_pending(conn)
            try:
                with self._engine.connect() as conn:
                    self.keys.refresh(conn)
            except CoalitionError as exc:
                self._key_problem(f"cannot read the ledger key schedule, nothing sealed: {exc}")
                return None
            for _attempt in range(2):
                try:
                    return self._seal_fenced(blocks)
                except _Stale as stale:
                    log.info("sealer state reloaded, nothing sealed: %s", stale)
                    with self._engine.connect() as conn:
                        self._reload(conn)
                        self._read_pending(conn)
                    if stale.lease_lost:
                        return None
            return None

    def _cut(self, blocks: int) -> list[list[bytes]]:
        """The pending leaf hashes of the next blocks: up to ``blocks`` full ones, or the
        one partial block when fewer than ``max_entries`` are pending. So the blocks are
        the ones sealing one at a time would cut."""
        size = self._config.max_entries
        with self._cond:
            pending = self._pending[: size * max(blocks, 1)]
        cuts = [pending[start : start + size] for start in range(0, len(pending), size)]
        if len(cuts) > 1 and len(cuts[-1]) < size:
            cuts.pop()
        return cuts

    def _seal_fenced(self, blocks: int) -> SignedHeader | None:
        cuts = self._cut(blocks)
        if not cuts:
            return None
        tree = self._range.copy()
        prev = None if self.last is None else self.last.header
        sealed_at = format_time(self._clock())
        made: list[tuple[SignedHeader, list[tuple[NodeCoord, bytes]]]] = []
        schedule = self.keys.schedule
        for batch in cuts:
            first_index = tree.size
            try:  # the key in force for this block (ledger.rotation's boundary)
                key = self.keys.signing_key(schedule.key_at(first_index))
            except CoalitionError as exc:
                self._key_problem(f"block at log index {first_index} not sealed: {exc}")
                break
            nodes = tree.extend(batch)
            header = make_header(
                self._program, prev, first_index, batch, tree.size, tree.root(), sealed_at
            )
            made.append((sign_header(header, key), nodes))
            prev = header
        if not made:
            return None
        self._key_trouble = None
        with self._engine.begin() as conn:
            if not self.leadership.fence(conn):
                raise _Stale("this process does not hold the lease", lease_lost=True)
            if ledger_store.last_height(conn) != self._height():
                raise _Stale(
                    "another sealer stored blocks since this one last looked", lease_lost=False
                )
            for signed, nodes in made:
                header = signed.header
                ledger_store.insert_block(
                    conn,
                    header.height,
                    canonical_json(header.to_json()).decode(),
                    signed.signature,
                    header.log_size,
                    nodes,
                )
        for _, nodes in made:
            self.node_cache.put(nodes)
        signed = made[-1][0]
        with self._cond:
            del self._pending[: sum(h.header.entry_count for h, _ in made)]
            self._oldest = time.monotonic() if self._pending else None
            self._range = tree
            self.last = signed
            self._cond.notify_all()
        return signed

    def _key_problem(self, message: str) -> None:
        """Log why nothing is sealed: once per distinct reason (the loop retries every
        poll), until a block is sealed again."""
        if message != self._key_trouble:
            self._key_trouble = message
            log.error("sealer: %s", message)

    def flush(self) -> SignedHeader | None:
        """Seal everything committed so far; the newest header (see ``_seal_committed``)."""
        self._seal_committed(FOLLOW_TIMEOUT_S)
        return self.last

    def _seal_committed(self, timeout: float) -> bool:
        """Make sure every entry committed before the call is sealed: seal it while this
        process holds (or can take) the lease, else wait for the holder, trying the lease
        at every poll, so the last process of a node to stop seals what the others left.
        Whether everything was sealed within ``timeout`` seconds."""
        with self._engine.connect() as conn:
            target = ledger_store.read_head(conn)
        deadline = time.monotonic() + timeout
        while True:
            if self.leadership.held() or self.leadership.try_acquire():
                while self.seal(SEAL_BLOCKS) is not None:
                    pass
            else:
                self.refresh()
            if self.log_size >= target:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self._poll_s)

    def wait_for_header(self, after_height: int, timeout: float) -> SignedHeader | None:
        """Block until a header above ``after_height`` is sealed; the next one, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.last is None or self.last.header.height <= after_height:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop:
                    return None
                self._cond.wait(remaining)
            last = self.last
        if last.header.height == after_height + 1:
            return last
        with self._engine.connect() as conn:
            rows = ledger_store.block_rows(conn, after_height + 1, 1)
        return signed_header_from_row(rows[0][1], rows[0][2])

    # --- the loop ---------------------------------------------------------------------

    def start(self) -> None:
        """Run the sealing (or following) loop in a daemon thread until ``stop``."""
        with self._cond:
            self._stop = False
        self._thread = threading.Thread(target=self._run, name="sealer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and seal what is committed (``_seal_committed``), so nothing
        acknowledged stays unsealed when every process of the node stops at once."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.sealed_at_stop = self._seal_committed(FOLLOW_TIMEOUT_S)
        except CoalitionError as exc:
            if not is_storage_failure(exc):
                raise
            log.error("entries stay unsealed at stop (sealed at the next start): %s", exc)
            self.sealed_at_stop = False

    def _due(self) -> bool:
        if not self._pending or self._oldest is None:
            return False
        waited_ms = (time.monotonic() - self._oldest) * 1000
        return len(self._pending) >= self._config.max_entries or (
            waited_ms >= self._config.max_delay_ms
        )

    def _back_off(self, exc: Exception, backoff: float) -> float:
        """Wait after a failed round (``stop`` ends the wait) and return the next wait: a
        storage failure doubles it up to ``STORAGE_BACKOFF_MAX_S`` and logs one line (the
        entries stay committed and pending; they are sealed once the storage works),
        anything else is logged with its traceback and retried at the poll interval."""
        if is_storage_failure(exc):
            backoff = min(max(2 * backoff, self._poll_s, 0.05), STORAGE_BACKOFF_MAX_S)
            log.warning("sealing waits for the storage (retry in %.1f s): %s", backoff, exc)
            wait = backoff
        else:
            log.exception("sealing failed; will retry")
            wait = max(self._poll_s, 0.05)
        with self._cond:
            if not self._stop:
                self._cond.wait(wait)
        return backoff

    def _run(self) -> None:
        damage: str | None = None  # logged once, not at every poll
        backoff = 0.0
        while True:
            with self._cond:
                if self._stop:
                    return
                self._cond.wait(self._poll_s)
                if self._stop:
                    return
            try:
                self.refresh()
                if self.leadership.held():
                    while self._due() and self.seal(SEAL_BLOCKS) is not None:
                        self._storage.recovered()
                damage = None
                backoff = 0.0
            except LedgerDamaged as exc:
                if str(exc) != damage:
                    log.error("not sealing: %s", exc)
                    damage = str(exc)
                time.sleep(DAMAGED_RETRY_S)
            except Exception as exc:
                backoff = self._back_off(exc, backoff)
