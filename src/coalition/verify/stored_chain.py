"""A node's stored blocks checked against its own key: headers, entries and tree nodes.

What a node runs on its own database before it serves (the newest blocks), in the
background while it serves (the scrub, the whole log) and what ``coalition check`` runs:
for each block, the one set of block checks the auditor runs too
(``verify.block_checks``: the header's signature, height, link and range, every entry
hashed from its canonical body against its stored leaf hash and the signed block root),
and, what an auditor never sees, the node's stored Merkle tree: every tree node the block
completes at a stored level (RFC 9162 §2.1.1, kept every ``stride`` levels) MUST be the
hash of the authentic leaves below it, and the log root after the block, recomputed from
the stored frontier before it and the block's leaves, MUST be the signed one.

A walk may start at any block (``StoredChainCheck.start_after``): the stored frontier at
its first index is checked against the log root the previous header signs, so a window of
the newest blocks is verified without reading the log before it. Pure: the caller reads
the rows (``StoredBlock``) and hands them in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coalition.errors import CoalitionError
from coalition.ledger.blocks import GENESIS_PREV, BlockHeader, SignedHeader
from coalition.ledger.entries import parse_time
from coalition.ledger.merkle import CompactRange, NodeCoord, root_coords, stored_coords
from coalition.ledger.rotation import HeaderKeys, KeySchedule, header_key
from coalition.verify.block_checks import (
    Fault,
    FaultList,
    Item,
    Position,
    check_gaps,
    check_header,
    check_roots,
    entry_id_of,
    exact_item,
)
from coalition.verify.entry_scan import scan_block
from coalition.verify.source import RawEntry, RawHeader, signed_header


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """One block as the node stores it: the header row, the entry rows of its range (with
    their stored leaf hashes) and the stored tree nodes at ``completed_coords`` of it."""

    header: RawHeader
    entries: Sequence[RawEntry]
    nodes: Mapping[NodeCoord, bytes]


def completed_coords(first: int, count: int, stride: int) -> list[NodeCoord]:
    """The perfect tree nodes at stored levels (``stride``, ``2 * stride``, ...) that
    appending leaves ``first .. first + count - 1`` completes: what the sealer stored with
    the block (``CompactRange.extend``)."""
    end = first + count
    out: list[NodeCoord] = []
    level = stride
    while (1 << level) <= end:
        lo, hi = first >> level, (end >> level) - 1
        out.extend((level, index) for index in range(lo, hi + 1))
        level += stride
    return out


def frontier_coords(size: int, stride: int) -> list[NodeCoord]:
    """The stored nodes (leaf hashes at level 0 included) the log's frontier at ``size``
    is computed from."""
    return stored_coords(root_coords(size), stride)


@dataclass(frozen=True, slots=True)
class DamagedBlock:
    """A block a walk found a fault in: the heights and log indexes not to serve."""

    height: int
    first_index: int
    entry_count: int


class StoredChainCheck:
    """Checks consecutive stored blocks, collecting faults in ``faults`` and the blocks
    they were found in in ``damaged``. Call ``start_after`` once (None: from height 0),
    then ``check`` each block in height order."""

    def __init__(self, keys: HeaderKeys, program: str, stride: int, faults: FaultList) -> None:
        self._keys = keys
        self._program = program
        self._stride = stride
        self.faults = faults
        self.damaged: list[DamagedBlock] = []
        self.blocks = 0
        self.entries = 0
        self._at = Position(prev_hash=GENESIS_PREV)
        self._tree: CompactRange | None = CompactRange(stride=stride)

    def fault(
        self,
        kind: str,
        message: str,
        height: int | None = None,
        *,
        log_index: int | None = None,
        entry_id: str | None = None,
    ) -> None:
        self.faults.add(Fault(kind, message, height, log_index, entry_id))

    def start_after(self, prev: RawHeader | None, frontier: Mapping[NodeCoord, bytes]) -> None:
        """Start the walk after ``prev`` (None: at height 0), whose stored ``frontier``
        nodes (at ``frontier_coords(prev's log size)``) MUST give the log root ``prev``
        signs. ``prev`` is checked as far as it alone can be: it parses, its height is
        its row's and the key signed it."""
        if prev is None:
            return
        try:
            signed = signed_header(prev)
        except CoalitionError as exc:
            self.fault("header-malformed", f"header does not parse: {exc}", prev.height)
            self._unknown(prev.height + 1)
            return
        h = signed.header
        if h.height != prev.height:
            message = f"stored at height {prev.height} but says height {h.height}"
            self.fault("header-height", message, prev.height)
        try:
            signed.verify(header_key(self._keys, signed.header))
        except CoalitionError as exc:
            self.fault("header-signature", f"signature does not verify: {exc}", h.height)
            self._unknown(prev.height + 1)
            return
        self._at = Position(h.height + 1, h.hash(), h.log_size, parse_time(h.sealed_at))
        self._tree = self._frontier(h, frontier)

    def _frontier(self, h: BlockHeader, nodes: Mapping[NodeCoord, bytes]) -> CompactRange | None:
        try:
            tree = CompactRange.from_nodes(h.log_size, nodes, self._stride)
        except CoalitionError as exc:
            self.fault("tree-node", f"the stored tree at log size {h.log_size}: {exc}", h.height)
            return None
        if tree.root().hex() != h.log_root:
            coords = ", ".join(f"({level}, {index})" for level, index in nodes if level > 0)
            self.fault(
                "tree-node",
                f"the stored tree nodes and leaf hashes at log size {h.log_size} do not give "
                f"the log root signed at height {h.height}: one of them was changed (tree "
                f"nodes {coords or 'none'}, and the leaf hashes below them)",
                h.height,
            )
            return None
        return tree

    def _unknown(self, next_height: int) -> None:
        self._at = Position(next_height, None, None, None)
        self._tree = None

    def check(self, block: StoredBlock) -> None:
        """Check one block (the next height after the last one checked)."""
        before = len(self.faults)
        raw = block.header
        try:
            signed: SignedHeader = signed_header(raw)
        except CoalitionError as exc:
            self.fault("header-malformed", f"header does not parse: {exc}", raw.height)
            self._unknown(raw.height + 1)
            self.damaged.append(DamagedBlock(raw.height, 0, 0))
            return
        h = signed.header
        if h.height != raw.height:
            self.fault(
                "header-height",
                f"stored at height {raw.height} but says height {h.height}",
                raw.height,
            )
        key = header_key(self._keys, signed.header)
        after_rotation = isinstance(self._keys, KeySchedule) and key != self._keys.first
        check_header(
            self.fault, signed, key, self._program, self._at, after_rotation=after_rotation
        )
        gaps = check_gaps(self.fault, h, block.entries)
        items = self._items(h, block)
        authentic = check_roots(self.fault, h, items, gaps, self._at.prev_forged)
        self._tree_checks(h, authentic, block.nodes)
        self._at.next_height = h.height + 1
        self._at.prev_hash = h.hash()
        self._at.prev_log_size = h.log_size
        self.blocks += 1
        self.entries += len(block.entries)
        if len(self.faults) > before:
            self.damaged.append(DamagedBlock(h.height, h.first_index, h.entry_count))

    def _items(self, h: BlockHeader, block: StoredBlock) -> list[Item]:
        """Each entry hashed; the exact checks (which name faults) only on the entries the
        audit's bulk pass flags (``entry_scan``: the same rule, so the same faults)."""
        raws = block.entries
        scan = scan_block([raw.body for raw in raws], self._program, -1, sealed_at=h.sealed_at)
        flagged = set(scan.flagged)
        parsed = scan.entries or [None] * len(raws)
        items: list[Item] = []
        for n, raw in enumerate(raws):
            index = raw.log_index
            if index is None and len(raws) == h.entry_count:
                index = h.first_index + n
            if n in flagged:
                items.append(exact_item(self.fault, h, raw, index, self._program))
            else:
                entry = parsed[n]
                items.append(
                    Item(index, entry_id_of(entry), scan.leaves[n], raw.stored_leaf_hash, entry)
                )
        return items

    def _tree_checks(
        self, h: BlockHeader, authentic: list[bytes] | None, nodes: Mapping[NodeCoord, bytes]
    ) -> None:
        """The stored nodes the block completes, and the log root after it."""
        tree = self._tree
        if tree is None or authentic is None or tree.size != h.first_index:
            self._tree = None  # leaves unknown from here: later roots cannot be recomputed
            return
        for (level, index), digest in tree.extend(authentic):
            stored = nodes.get((level, index))
            if stored is None:
                self.fault(
                    "tree-node", f"the stored tree node ({level}, {index}) is missing", h.height
                )
            elif stored != digest:
                self.fault(
                    "tree-node",
                    f"the stored tree node ({level}, {index}) is not the hash of the "
                    "entries below it",
                    h.height,
                )
        if tree.root().hex() != h.log_root and not self._at.prev_forged:
            self.fault("log-root", "log_root is not the root of the log so far", h.height)
