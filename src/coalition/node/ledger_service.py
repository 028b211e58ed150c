"""The verifiable ledger of a node, read: signed headers, blocks, entries and proofs.

Everything here reads committed state through the sequencer's read sessions; nothing
writes. What is sealed is read from the database too (the newest stored block), never from
this process's sealer: with several processes of one node another one may be the sealer,
and a read-only process on a hot standby seals nothing, so only the database knows the
newest header. (The stored tree nodes the proofs read are immutable once written, so the
sealer's node cache stays a safe cache.) Proofs are RFC 9162 documents
(``coalition.ledger.proofs``) that verify offline with the program's public key.

Nothing is served that this node could not verify itself (``node.integrity``): every
header it returns MUST verify with its own key (a header page MUST also link), a block's
entries MUST hash to its signed root, and every proof document passes the verifier an
auditor runs (``verify_inclusion_document``, ``verify_consistency_document``) before it
is returned; what fails is LedgerDamaged (503 / DATA_LOSS), logged and counted, never a
success with bad data. Blocks the scrub found damaged are refused the same way.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection

from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VerificationError,
)
from coalition.ledger.blocks import BlockHeader, SignedHeader, link_problem
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import VerifyKey
from coalition.ledger.merkle import (
    NodeCoord,
    consistency_coords,
    consistency_from_nodes,
    expand_nodes,
    inclusion_coords,
    inclusion_from_nodes,
    leaf_hash,
    root,
    stored_coords,
)
from coalition.ledger.proofs import (
    consistency_document,
    inclusion_document,
    verify_consistency_document,
    verify_inclusion_document,
)
from coalition.ledger.rotation import KeySchedule
from coalition.node.bundle_export import BundleExport
from coalition.node.integrity import IntegrityState
from coalition.node.ledger_keys import stored_schedule
from coalition.node.sequencer import Sequencer, check_entry_id
from coalition.node.views import EntryView
from coalition.points.flows import level_for
from coalition.store import columns as columns_store
from coalition.store import flows as flows_store
from coalition.store import ledger as ledger_store
from coalition.store.ledger import TREE_STRIDE, signed_header_from_row

HEADER_POLL_S = 0.2
"""How often a header wait reads the database for a header another process stored."""
VERIFIED_HEADERS = 4096
"""Headers whose signature this process verified, remembered so that serving one again
costs no Ed25519 verification (a header row never changes, so a changed row is a new
key and is verified afresh)."""


MAX_HEADERS = 10_000
"""Most signed headers one ``headers`` call returns."""


class LedgerService:
    """Reads of one program's log: what partners, auditors and the explorer fetch."""

    def __init__(
        self, sequencer: Sequencer, public_key: VerifyKey, integrity: IntegrityState
    ) -> None:
        self._sequencer = sequencer
        self._public_key = public_key
        self._sealer = sequencer.sealer
        self._integrity = integrity
        self._verified: OrderedDict[tuple[BlockHeader, str], None] = OrderedDict()
        self._verified_lock = threading.Lock()
        self._schedule = KeySchedule(sequencer.program, public_key)
        """The keys in force as last read from the stored rotations (``_keys``)."""

    def _keys(self, check: Callable[[KeySchedule], None]) -> None:
        """Run ``check`` with the key schedule; when it fails, read the stored rotations
        again and retry once (a header sealed after a rotation this process has not read
        yet). Rotations only ever add keys, so a stale schedule can only refuse."""
        try:
            check(self._schedule)
            return
        except CoalitionError:
            with self._sequencer.read() as conn:
                schedule = stored_schedule(conn, self._sequencer.program, self._public_key)
            self._schedule = schedule
        check(schedule)

    # --- what is served is verified first ------------------------------------------------

    def _served(self, signed: SignedHeader) -> SignedHeader:
        """``signed`` once it verifies with this node's key; LedgerDamaged otherwise."""
        key = (signed.header, signed.signature)
        with self._verified_lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return signed
        try:
            self._keys(lambda keys: signed.verify(keys.key_for(signed.header)))
        except CoalitionError as exc:
            what = f"the stored header at height {signed.header.height}"
            raise self._integrity.self_check_failed(what, exc) from None
        with self._verified_lock:
            self._verified[key] = None
            if len(self._verified) > VERIFIED_HEADERS:
                self._verified.popitem(last=False)
        return signed

    def _served_page(self, headers: list[SignedHeader]) -> list[SignedHeader]:
        """Each header verified, and each linked to the one before it in the page."""
        for prev, signed in itertools.pairwise(headers):
            problem = link_problem(prev.header, signed.header)
            if problem is not None and signed.header.height == prev.header.height + 1:
                what = f"the stored header at height {signed.header.height}"
                raise self._integrity.self_check_failed(what, VerificationError(problem))
        return [self._served(signed) for signed in headers]

    def log_size(self) -> int:
        """The sealed log size as stored (for logs and health; nothing is proved by it)."""
        with self._sequencer.read() as conn:
            return ledger_store.sealed_size(conn)

    @property
    def program(self) -> str:
        """Whose log this is."""
        return self._sequencer.program

    @property
    def public_key(self) -> VerifyKey:
        """The program's first ledger key (the manifest's, epoch 0): the headers verify
        with it until the first rotation, then with the key in force
        (``key_rotations``, ``ledger.rotation``)."""
        return self._public_key

    def key_rotations(self) -> list[tuple[int, JsonObject]]:
        """Every ``key-rotation`` entry of the log, with its log index, in log order:
        with the first key, what a verifier needs to know the key of every header."""
        with self._sequencer.read() as conn:
            rows = ledger_store.key_rotations_after(conn, -1)
        return [(index, columns_store.stored_object(body.decode())) for index, body in rows]

    def latest_header(self) -> SignedHeader | None:
        """The newest signed header in the database (whichever process sealed it)."""
        with self._sequencer.read() as conn:
            latest = self._latest(conn)
        return None if latest is None else self._served(latest)

    @staticmethod
    def _latest(conn: Connection) -> SignedHeader | None:
        row = ledger_store.last_block(conn)
        return None if row is None else signed_header_from_row(row[1], row[2])

    def headers(self, start: int, limit: int = 1000) -> list[SignedHeader]:
        if not isinstance(start, int) or start < 0:
            raise InvalidArgument(f"start must be a height >= 0, got {start!r}")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_HEADERS:
            raise InvalidArgument(f"limit must be 1..{MAX_HEADERS}, got {limit!r}")
        with self._sequencer.read() as conn:
            rows = ledger_store.block_rows(conn, start, limit)
        return self._served_page([signed_header_from_row(header, sig) for _, header, sig in rows])

    def _header_at(self, conn: Connection, height: int) -> SignedHeader:
        if not isinstance(height, int) or height < 0:
            raise InvalidArgument(f"height must be >= 0, got {height!r}")
        rows = ledger_store.block_rows(conn, height, 1)
        if not rows or rows[0][0] != height:
            raise NotFound(f"no block at height {height}")
        return signed_header_from_row(rows[0][1], rows[0][2])

    def block(self, height: int) -> tuple[SignedHeader, list[JsonObject]]:
        """A block's header and entries, once the entries hash to its signed root."""
        with self._sequencer.read() as conn:
            signed = self._header_at(conn, height)
            first = signed.header.first_index
            rows = ledger_store.entry_bodies(conn, first, first + signed.header.entry_count)
        self._integrity.refuse_damaged(height=height)
        self._served(signed)
        leaves = [leaf_hash(body.encode()) for _, body, _ in rows]
        if root(leaves).hex() != signed.header.block_root:
            raise self._integrity.self_check_failed(
                f"block {height}",
                VerificationError("its stored entries do not hash to its signed block root"),
            )
        return signed, [columns_store.stored_object(body) for _, body, _ in rows]

    def entry(self, entry_id: str) -> EntryView:
        check_entry_id(entry_id)
        with self._sequencer.read() as conn:
            found = ledger_store.entry_by_id(conn, entry_id)
            sealed = ledger_store.sealed_size(conn)
        if found is None:
            raise NotFound(f"no entry {entry_id}")
        index, body = found
        return EntryView(body, index if index < sealed else None)

    def _nodes(self, conn: Connection, coords: list[NodeCoord]) -> dict[NodeCoord, bytes]:
        stored = ledger_store.read_nodes(
            conn, stored_coords(coords, TREE_STRIDE), self._sealer.node_cache
        )
        return expand_nodes(coords, stored, TREE_STRIDE)

    def inclusion_proof(self, entry_id: str, tree_size: int | None = None) -> JsonObject:
        """The inclusion proof document of an entry in the log at a sealed size (default:
        the newest); FailedPrecondition while the entry is not sealed yet."""
        check_entry_id(entry_id)
        with self._sequencer.read() as conn:
            found = ledger_store.entry_by_id(conn, entry_id)
            if found is None:
                raise NotFound(f"no entry {entry_id}")
            leaf_index, entry = found
            signed = self._signed_at_size(conn, tree_size)
            size = signed.header.log_size
            if leaf_index >= size:
                raise FailedPrecondition(
                    f"entry {entry_id} is not in the log at size {size} yet (not sealed)"
                )
            nodes = self._nodes(conn, inclusion_coords(leaf_index, size))
        self._integrity.refuse_damaged(log_index=leaf_index)
        path = inclusion_from_nodes(leaf_index, size, nodes)
        doc = inclusion_document(entry, leaf_index, path, signed)
        try:
            self._keys(lambda keys: verify_inclusion_document(doc, keys))
        except CoalitionError as exc:
            what = f"the inclusion proof of entry {entry_id} at tree size {size}"
            raise self._integrity.self_check_failed(what, exc) from None
        return doc

    def _signed_at_size(self, conn: Connection, tree_size: int | None) -> SignedHeader:
        if tree_size is None:
            latest = self._latest(conn)
            if latest is None:
                raise FailedPrecondition("no block has been sealed yet")
            return latest
        if not isinstance(tree_size, int) or tree_size < 1:
            raise InvalidArgument(f"tree_size must be a positive integer, got {tree_size!r}")
        row = ledger_store.block_with_log_size(conn, tree_size)
        if row is None:
            raise NotFound(f"no signed header has log size {tree_size}")
        return signed_header_from_row(row[1], row[2])

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject:
        """The consistency proof document between two sealed headers (first <= second)."""
        with self._sequencer.read() as conn:
            first = self._header_at(conn, first_height)
            second = self._header_at(conn, second_height)
            if first_height > second_height:
                raise InvalidArgument("the first height must not be above the second")
            size1, size2 = first.header.log_size, second.header.log_size
            nodes = self._nodes(conn, consistency_coords(size1, size2))
        for height in (first_height, second_height):
            self._integrity.refuse_damaged(height=height)
        path = consistency_from_nodes(size1, size2, nodes)
        doc = consistency_document(first, second, path)
        try:
            self._keys(lambda keys: verify_consistency_document(doc, keys))
        except CoalitionError as exc:
            what = f"the consistency proof from height {first_height} to {second_height}"
            raise self._integrity.self_check_failed(what, exc) from None
        return doc

    def flow_page(
        self, bucket_s: int, limit: int, before: datetime | None = None
    ) -> tuple[list[flows_store.FlowTotal], int | None]:
        """The flows of the newest ``limit`` (1..1000) non-empty buckets of ``bucket_s``
        seconds (a multiple of 60) starting before ``before``, from the running totals
        (``store.flows``), and the next older page's cursor (seconds; None: no older one)."""
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be 1..1000, got {limit!r}")
        try:
            level_for(bucket_s)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        cursor = None if before is None else int(before.timestamp())
        with self._sequencer.read() as conn:
            return flows_store.flow_page(conn, bucket_s, limit, cursor)

    def wait_for_header(self, after_height: int, timeout: float) -> SignedHeader | None:
        """The header at ``after_height + 1`` once it is stored, waiting up to ``timeout``
        s; None after the timeout, or earlier only when this node is stopping.

        This process's sealer wakes the wait at once; a header another process sealed
        (or a standby replayed) is found by reading the database every
        ``HEADER_POLL_S``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._sequencer.read() as conn:
                rows = ledger_store.block_rows(conn, after_height + 1, 1)
            if rows:
                return self._served(signed_header_from_row(rows[0][1], rows[0][2]))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, HEADER_POLL_S)
            started = time.monotonic()
            local = self._sealer.wait_for_header(after_height, wait)
            if local is not None:
                return self._served(local)
            if time.monotonic() - started < wait / 2:
                return None  # the sealer returns early only when the node is stopping

    def flush(self) -> SignedHeader | None:
        return self._sealer.flush()

    def bundle(self, *, exported_at: datetime | None = None) -> BundleExport:
        """A snapshot of the whole chain as a bundle (docs/proofs.md §9), to iterate once;
        blocks sealed after this call are not in it."""
        return BundleExport(
            self._sequencer.read, self._sequencer.program, self._public_key, exported_at=exported_at
        )
