"""Streaming verification of a program's signed header chain and its RFC 9162 log.

``ChainVerifier`` takes blocks in order (header plus the block's leaf hashes) and checks
each against everything before it, keeping only O(log n) state (a compact range, RFC 9162
§2.1 tree), so an audit of millions of entries runs in constant memory. Each header is
checked against the key in force for it (``ledger.rotation.KeySchedule``): the caller
hands over the key rotations it found among a block's entries with the block.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from datetime import datetime

from coalition.errors import CoalitionError, VerificationError
from coalition.ledger.blocks import GENESIS_PREV, BlockHeader, SignedHeader
from coalition.ledger.entries import parse_time
from coalition.ledger.keys import VerifyKey
from coalition.ledger.merkle import CompactRange, root
from coalition.ledger.rotation import KeyRotation, KeySchedule


class ChainVerifier:
    """Verifies one program's blocks fed in order, from height 0.

    ``feed`` raises VerificationError naming the height and the failed check, and leaves
    the verifier as it was, so the caller may report and stop (a failed block is never
    accepted, and nothing after it can be checked).
    """

    def __init__(self, key: VerifyKey, program: str) -> None:
        """``key`` is the program's first key (the manifest's, epoch 0)."""
        self.schedule = KeySchedule(program, key)
        self._program = program
        self._range = CompactRange(stride=None)
        self._last: BlockHeader | None = None
        self._last_hash = GENESIS_PREV
        self._last_time: datetime | None = None

    @property
    def size(self) -> int:
        """Number of log entries verified so far."""
        return self._range.size

    @property
    def last(self) -> BlockHeader | None:
        """The last header accepted, None before the first."""
        return self._last

    def root(self) -> bytes:
        """The log root after the last accepted block."""
        return self._range.root()

    def feed(
        self,
        signed: SignedHeader,
        block_leaf_hashes: Sequence[bytes],
        rotations: Sequence[tuple[int, KeyRotation]] = (),
    ) -> None:
        """Check the next block and accept it, or raise VerificationError.

        ``rotations`` are the block's ``key-rotation`` entries with their log indexes
        (``ledger.rotation.rotations_in`` of its entries): the header is checked with
        the key in force before them, and they are in force from the next block on. A
        caller that omits a block's rotation sees the next header fail its signature."""
        h = signed.header
        expected = 0 if self._last is None else self._last.height + 1
        where = f"block at height {h.height}"
        if h.height != expected:
            where += f" (expected height {expected})"

        def fail(what: str) -> VerificationError:
            return VerificationError(f"{where}: {what}")

        if h.program != self._program:
            raise fail(f"program {h.program!r} is not {self._program!r}")
        try:
            signed.verify(self.schedule.key)
        except CoalitionError as exc:
            raise fail(f"bad signature ({exc})") from None
        if h.height != expected:
            raise fail("height is not the previous height + 1")
        if not hmac.compare_digest(h.prev_hash, self._last_hash):
            raise fail("prev_hash is not the hash of the previous header")
        if h.first_index != self._range.size:
            raise fail(f"first_index {h.first_index} is not the log size {self._range.size}")
        if h.entry_count != len(block_leaf_hashes):
            raise fail(
                f"entry_count {h.entry_count} but the block has {len(block_leaf_hashes)} entries"
            )
        if h.log_size != h.first_index + h.entry_count:
            raise fail(f"log_size {h.log_size} is not first_index + entry_count")
        sealed = parse_time(h.sealed_at)
        if self._last_time is not None and sealed < self._last_time:
            raise fail("sealed_at is earlier than the previous block's")
        if not hmac.compare_digest(root(block_leaf_hashes).hex(), h.block_root):
            raise fail("block_root is not the root of the block's entries")
        log = self._range.copy()
        try:
            log.extend(block_leaf_hashes)
        except CoalitionError as exc:
            raise fail(str(exc)) from None
        if not hmac.compare_digest(log.root().hex(), h.log_root):
            raise fail("log_root is not the root of the log so far")
        schedule = self.schedule.copy()
        for index, rotation in rotations:
            if not h.first_index <= index < h.log_size:
                raise fail(f"a key rotation at log index {index} is not in the block")
            try:
                schedule.apply(rotation, index)
            except CoalitionError as exc:
                raise fail(str(exc)) from None
        self.schedule = schedule
        self._range = log
        self._last = h
        self._last_hash = h.hash()
        self._last_time = sealed
