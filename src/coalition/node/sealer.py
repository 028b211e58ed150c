"""The sealer: cuts pending entries into signed, hash-chained blocks.

A block is sealed when ``max_entries`` entries are pending or the oldest pending entry
has waited ``max_delay_ms``. The log root is kept incrementally in a compact range, and
only the perfect subtree nodes at stored levels are written, so sealing costs O(entries)
hashes and about one node row per 2**stride entries, never a rebuild of the tree.
Entries are durable (committed) before they are pending; a block is durable before
``wait_for_header`` reports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from coalition.ledger.blocks import SignedHeader, make_header, sign_header
from coalition.ledger.canonical import canonical_json
from coalition.ledger.entries import format_time
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import CompactRange, root_coords, stored_coords
from coalition.node.config import SealerConfig
from coalition.store import ledger as ledger_store
from coalition.store.ledger import TREE_STRIDE, signed_header_from_row

log = logging.getLogger(__name__)


class Sealer:
    """Owns the log's tail: pending leaf hashes, the compact range and the last header."""

    def __init__(
        self,
        engine: Engine,
        program: str,
        key: SigningKey,
        config: SealerConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self._engine = engine
        self._program = program
        self._key = key
        self._config = config
        self._clock = clock
        self._cond = threading.Condition()
        self._seal_lock = threading.Lock()
        self._stop = False
        self._thread: threading.Thread | None = None
        with engine.connect() as conn:
            last = ledger_store.last_block(conn)
            self.last: SignedHeader | None = (
                None if last is None else signed_header_from_row(last[1], last[2])
            )
            size = 0 if self.last is None else self.last.header.log_size
            needed = stored_coords(root_coords(size), TREE_STRIDE)
            self.node_cache = ledger_store.NodeCache()
            nodes = ledger_store.read_nodes(conn, needed, self.node_cache)
            self._range = CompactRange.from_nodes(size, nodes, TREE_STRIDE)
            self._pending = ledger_store.leaf_hashes_from(conn, size)
        self._oldest = time.monotonic() if self._pending else None

    @property
    def log_size(self) -> int:
        """Entries sealed so far."""
        return self._range.size

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def added(self, leaf_hashes: list[bytes]) -> None:
        """Report entries just committed, in log order (the writer calls this)."""
        with self._cond:
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.extend(leaf_hashes)
            if len(self._pending) >= self._config.max_entries:
                self._cond.notify_all()

    def seal(self) -> SignedHeader | None:
        """Seal up to ``max_entries`` pending entries into one block now; None if none."""
        with self._seal_lock:
            with self._cond:
                batch = self._pending[: self._config.max_entries]
            if not batch:
                return None
            tree = self._range.copy()
            first_index = tree.size
            nodes = tree.extend(batch)
            header = make_header(
                self._program,
                None if self.last is None else self.last.header,
                first_index,
                batch,
                tree.size,
                tree.root(),
                format_time(self._clock()),
            )
            signed = sign_header(header, self._key)
            with self._engine.begin() as conn:
                ledger_store.insert_block(
                    conn,
                    header.height,
                    canonical_json(header.to_json()).decode(),
                    signed.signature,
                    header.log_size,
                    nodes,
                )
            self.node_cache.put(nodes)
            with self._cond:
                del self._pending[: len(batch)]
                self._oldest = time.monotonic() if self._pending else None
                self._range = tree
                self.last = signed
                self._cond.notify_all()
            return signed

    def flush(self) -> SignedHeader | None:
        """Seal everything pending now; returns the newest header."""
        while self.seal() is not None:
            pass
        return self.last

    def wait_for_header(self, after_height: int, timeout: float) -> SignedHeader | None:
        """Block until a header above ``after_height`` is sealed; the next one, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.last is None or self.last.header.height <= after_height:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop:
                    return None
                self._cond.wait(remaining)
        if self.last.header.height == after_height + 1:
            return self.last
        with self._engine.connect() as conn:
            rows = ledger_store.block_rows(conn, after_height + 1, 1)
        return signed_header_from_row(rows[0][1], rows[0][2])

    def start(self) -> None:
        """Run the sealing loop in a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="sealer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and seal what is pending, so nothing acknowledged stays unsealed."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _due(self) -> bool:
        if not self._pending or self._oldest is None:
            return False
        waited_ms = (time.monotonic() - self._oldest) * 1000
        return len(self._pending) >= self._config.max_entries or (
            waited_ms >= self._config.max_delay_ms
        )

    def _run(self) -> None:
        delay = self._config.max_delay_ms / 1000
        while True:
            with self._cond:
                while not self._stop and not self._due():
                    self._cond.wait(delay / 4 if self._pending else delay)
                if self._stop:
                    return
            try:
                self.seal()
            except Exception:
                log.exception("sealing failed; will retry")
                time.sleep(delay)
