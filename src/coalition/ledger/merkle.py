"""The RFC 9162 Merkle tree (the Certificate Transparency v2 tree), §2.1.

* §2.1.1 hashing: ``leaf_hash`` = SHA-256(0x00 || data), ``node_hash`` = SHA-256(0x01 ||
  left || right), the empty tree hashes to SHA-256("").
* §2.1.3 inclusion proofs and §2.1.4 consistency proofs: in-memory generation, and
  verification that derives the proof's shape from (index, size) alone, as §2.1.3.2 and
  §2.1.4.2 prescribe; a proof never chooses its own directions.

For storage, a node is named by ``NodeCoord`` = (level, index), covering leaves
``[index * 2**level, (index + 1) * 2**level)``; only such perfect subtrees are ever stored.
Proofs are served in two phases so a store can fetch everything in one batch:
``*_coords`` lists the perfect nodes needed, ``*_from_nodes`` assembles the proof from
them; a non-perfect right-edge subtree in a proof is composed from its perfect parts.
A store that keeps only levels that are multiples of ``stride`` (plus the leaves) uses
``stored_coords`` then ``expand_nodes`` in between. ``CompactRange`` is the right frontier
of the tree: it appends leaves, gives the root and reports the new perfect nodes to store.

Verification raises ``VerificationError``; malformed arguments raise ``InvalidArgument``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from hashlib import sha256

from coalition.errors import InvalidArgument, VerificationError

NodeCoord = tuple[int, int]
"""(level, index): the perfect subtree over leaves [index * 2**level, (index+1) * 2**level)."""

HASH_SIZE = 32
EMPTY_ROOT = sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1 leaf hash: SHA-256(0x00 || data)."""
    return sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node hash: SHA-256(0x01 || left || right)."""
    return sha256(_NODE + left + right).digest()


# --- in memory -------------------------------------------------------------------------


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree whose leaves hash to ``leaf_hashes`` (EMPTY_ROOT when empty)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [
            sha256(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _memory_nodes(
    coords: Iterable[NodeCoord], leaf_hashes: Sequence[bytes]
) -> dict[NodeCoord, bytes]:
    out: dict[NodeCoord, bytes] = {}
    for level, index in coords:
        lo = index << level
        hi = lo + (1 << level)
        if hi > len(leaf_hashes):
            raise InvalidArgument(f"node {(level, index)} lies beyond the tree")
        out[(level, index)] = root(leaf_hashes[lo:hi])
    return out


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[n]) for the tree over ``leaf_hashes``."""
    size = len(leaf_hashes)
    coords = inclusion_coords(index, size)
    return inclusion_from_nodes(index, size, _memory_nodes(coords, leaf_hashes))


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(size1, D[n]) for the tree over ``leaf_hashes``; empty when
    ``size1`` is 0 (RFC 9162 leaves that case undefined) or ``len(leaf_hashes)``."""
    size2 = len(leaf_hashes)
    coords = consistency_coords(size1, size2)
    return consistency_from_nodes(size1, size2, _memory_nodes(coords, leaf_hashes))


# --- verification ----------------------------------------------------------------------


def _check_int(name: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise InvalidArgument(f"{name} must be a non-negative integer")


def _check_hash_sizes(what: str, proof: Sequence[bytes]) -> None:
    for p in proof:
        if len(p) != HASH_SIZE:
            raise VerificationError(f"{what} proof: a proof hash is {len(p)} bytes, not 32")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check an RFC 9162 §2.1.3.2 inclusion proof; raises VerificationError if it fails."""
    _check_int("index", index)
    _check_int("size", size)
    if index >= size:
        raise VerificationError(f"inclusion proof: leaf index {index} >= tree size {size}")
    if len(leaf) != HASH_SIZE:
        raise VerificationError(f"inclusion proof: leaf hash is {len(leaf)} bytes, not 32")
    _check_hash_sizes("inclusion", proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof: too many proof hashes")
        if fn & 1 or fn == sn:
            r = sha256(_NODE + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(_NODE + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof: too few proof hashes")
    if not hmac.compare_digest(r, root_hash):
        raise VerificationError("inclusion proof: computed root does not match the tree root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check an RFC 9162 §2.1.4.2 consistency proof; raises VerificationError if it fails.

    A proof from size 0 is refused as meaningless (the empty tree is consistent with any
    tree, so a caller asking means a bug); equal sizes need an empty proof and equal roots.
    """
    _check_int("size1", size1)
    _check_int("size2", size2)
    if size1 > size2:
        raise VerificationError(f"consistency proof: size1 {size1} > size2 {size2}")
    if size1 == 0:
        raise VerificationError("consistency proof: a proof from the empty tree is meaningless")
    if size1 == size2:
        if proof:
            raise VerificationError("consistency proof: equal sizes need an empty proof")
        if not hmac.compare_digest(root1, root2):
            raise VerificationError("consistency proof: equal sizes but different roots")
        return
    if not proof:
        raise VerificationError("consistency proof: empty proof for different sizes")
    _check_hash_sizes("consistency", proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof: too many proof hashes")
        if fn & 1 or fn == sn:
            fr = sha256(_NODE + c + fr).digest()
            sr = sha256(_NODE + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha256(_NODE + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof: too few proof hashes")
    if not hmac.compare_digest(fr, root1):
        raise VerificationError("consistency proof: computed old root does not match root1")
    if not hmac.compare_digest(sr, root2):
        raise VerificationError("consistency proof: computed new root does not match root2")


# --- proofs from stored perfect nodes --------------------------------------------------


def _path_parts(
    level: int, start: int, size: int
) -> tuple[list[NodeCoord], list[NodeCoord], list[NodeCoord]]:
    """The audit path of perfect node (level, start >> level) in a tree of ``size``.

    Returns (siblings bottom-up, perfect parts of the right-edge sibling left to right,
    left perfect subtrees bottom-up); the proof is siblings, then the hash of the right
    parts folded from the right (if any), then the left subtrees.
    """
    d = (start ^ size).bit_length() - 1  # level of size's perfect block holding ``start``
    siblings = [(e, (start >> e) ^ 1) for e in range(level, d)]
    right = [(e, (size >> e) - 1) for e in range(d - 1, -1, -1) if size >> e & 1]
    left = [(e, (size >> e) - 1) for e in range(d + 1, size.bit_length()) if size >> e & 1]
    return siblings, right, left


def _get(nodes: Mapping[NodeCoord, bytes], coord: NodeCoord) -> bytes:
    try:
        return nodes[coord]
    except KeyError:
        raise InvalidArgument(f"node {coord} is missing from the nodes given") from None


def _fold_right(nodes: Mapping[NodeCoord, bytes], coords: Sequence[NodeCoord]) -> bytes:
    """MTH of adjacent perfect subtrees given left to right, strictly decreasing in size."""
    r = _get(nodes, coords[-1])
    for c in reversed(coords[:-1]):
        r = node_hash(_get(nodes, c), r)
    return r


def _assemble(
    nodes: Mapping[NodeCoord, bytes],
    siblings: list[NodeCoord],
    right: list[NodeCoord],
    left: list[NodeCoord],
) -> list[bytes]:
    out = [_get(nodes, c) for c in siblings]
    if right:
        out.append(_fold_right(nodes, right))
    out.extend(_get(nodes, c) for c in left)
    return out


def _check_index(index: int, size: int) -> None:
    _check_int("index", index)
    _check_int("size", size)
    if index >= size:
        raise InvalidArgument(f"leaf index {index} is not below the tree size {size}")


def inclusion_coords(index: int, size: int) -> list[NodeCoord]:
    """The perfect nodes needed for the inclusion proof of leaf ``index`` at ``size``."""
    _check_index(index, size)
    siblings, right, left = _path_parts(0, index, size)
    return siblings + right + left


def inclusion_from_nodes(index: int, size: int, nodes: Mapping[NodeCoord, bytes]) -> list[bytes]:
    """The inclusion proof, from the nodes listed by ``inclusion_coords(index, size)``."""
    _check_index(index, size)
    return _assemble(nodes, *_path_parts(0, index, size))


def _consistency_parts(
    size1: int, size2: int
) -> tuple[list[NodeCoord], list[NodeCoord], list[NodeCoord]] | None:
    _check_int("size1", size1)
    _check_int("size2", size2)
    if size1 > size2:
        raise InvalidArgument(f"size1 {size1} is larger than size2 {size2}")
    if size1 == 0 or size1 == size2:
        return None
    # The largest perfect subtree ending at size1, then its audit path in the tree of size2;
    # the subtree itself is left out when it is the whole old tree (the verifier has root1).
    level = (size1 & -size1).bit_length() - 1
    start = size1 - (1 << level)
    siblings, right, left = _path_parts(level, start, size2)
    if start:
        siblings.insert(0, (level, start >> level))
    return siblings, right, left


def consistency_coords(size1: int, size2: int) -> list[NodeCoord]:
    """The perfect nodes needed for the consistency proof from ``size1`` to ``size2``.

    Empty when ``size1`` is 0 or equal to ``size2``: those proofs are empty.
    """
    parts = _consistency_parts(size1, size2)
    if parts is None:
        return []
    siblings, right, left = parts
    return siblings + right + left


def consistency_from_nodes(size1: int, size2: int, nodes: Mapping[NodeCoord, bytes]) -> list[bytes]:
    """The consistency proof, from the nodes listed by ``consistency_coords``."""
    parts = _consistency_parts(size1, size2)
    if parts is None:
        return []
    return _assemble(nodes, *parts)


def root_coords(size: int) -> list[NodeCoord]:
    """The perfect subtrees whose composition is the root at ``size``, left to right."""
    _check_int("size", size)
    return [(e, (size >> e) - 1) for e in range(size.bit_length() - 1, -1, -1) if size >> e & 1]


def root_from_nodes(size: int, nodes: Mapping[NodeCoord, bytes]) -> bytes:
    """The root at ``size``, from the nodes listed by ``root_coords(size)``."""
    coords = root_coords(size)
    return _fold_right(nodes, coords) if coords else EMPTY_ROOT


def _check_stride(stride: int) -> None:
    if type(stride) is not int or stride < 1:
        raise InvalidArgument("stride must be a positive integer")


def stored_coords(coords: Iterable[NodeCoord], stride: int) -> list[NodeCoord]:
    """The stored nodes needed to compute ``coords`` when only levels 0, stride, 2*stride,
    ... are kept: node (L, i) needs its 2**(L % stride) descendants at level L - L % stride.
    Level-0 coordinates are the leaf hashes. No duplicates; first-seen order.
    """
    _check_stride(stride)
    out: dict[NodeCoord, None] = {}
    for level, index in coords:
        r = level % stride
        base = level - r
        first = index << r
        for j in range(first, first + (1 << r)):
            out[(base, j)] = None
    return list(out)


def expand_nodes(
    coords: Iterable[NodeCoord], stored: Mapping[NodeCoord, bytes], stride: int
) -> dict[NodeCoord, bytes]:
    """Compute the perfect nodes ``coords`` from the stored nodes of ``stored_coords``.

    A coordinate present in ``stored`` is taken as is.
    """
    _check_stride(stride)
    out: dict[NodeCoord, bytes] = {}
    for coord in coords:
        if coord in stored:
            out[coord] = stored[coord]
            continue
        level, index = coord
        r = level % stride
        base = level - r
        first = index << r
        row = [_get(stored, (base, j)) for j in range(first, first + (1 << r))]
        while len(row) > 1:
            row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
        out[coord] = row[0]
    return out


# --- the compact range -----------------------------------------------------------------


class CompactRange:
    """The right frontier of a tree: the roots of the perfect subtrees of ``root_coords``.

    Appending reports every newly completed perfect node at a level > 0 that is a multiple
    of ``stride`` (None: report nothing), which is exactly what a store keeping those levels
    must persist. Not thread-safe; ``copy()`` before speculative appends.
    """

    __slots__ = ("_frontier", "_size", "_stride")

    def __init__(
        self, size: int = 0, frontier: Sequence[bytes] = (), stride: int | None = 4
    ) -> None:
        _check_int("size", size)
        if stride is not None:
            _check_stride(stride)
        if len(frontier) != size.bit_count():
            raise InvalidArgument(
                f"a compact range of size {size} has {size.bit_count()} frontier hashes, "
                f"not {len(frontier)}"
            )
        if any(len(h) != HASH_SIZE for h in frontier):
            raise InvalidArgument("frontier hashes must be 32 bytes")
        self._size = size
        self._frontier = list(frontier)
        self._stride = stride

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """Hashes of the nodes at ``frontier_coords(size)``, left to right."""
        return tuple(self._frontier)

    @staticmethod
    def frontier_coords(size: int) -> list[NodeCoord]:
        """The perfect nodes to load for a range of ``size`` (same as ``root_coords``)."""
        return root_coords(size)

    @classmethod
    def from_nodes(
        cls, size: int, nodes: Mapping[NodeCoord, bytes], stride: int | None = 4
    ) -> CompactRange:
        """Reload a range from the frontier nodes, or from the stored nodes that
        ``stored_coords(frontier_coords(size), stride)`` lists."""
        coords = root_coords(size)
        expanded = expand_nodes(coords, nodes, stride or 1)
        return cls(size, [expanded[c] for c in coords], stride)

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._frontier, self._stride)

    def root(self) -> bytes:
        """The tree root (MTH) at the current size."""
        f = self._frontier
        if not f:
            return EMPTY_ROOT
        r = f[-1]
        for h in reversed(f[:-1]):
            r = sha256(_NODE + h + r).digest()
        return r

    def append(self, leaf: bytes) -> list[tuple[NodeCoord, bytes]]:
        """Append one leaf hash; returns the new perfect nodes to store."""
        return self.extend((leaf,))

    def extend(self, leaf_hashes: Iterable[bytes]) -> list[tuple[NodeCoord, bytes]]:
        """Append leaf hashes in order; returns the new perfect nodes to store.

        A hash that is not 32 bytes raises InvalidArgument with the leaves before it
        appended: ``copy()`` first when the batch must be all or nothing.
        """
        frontier = self._frontier
        size = self._size
        stride = self._stride
        out: list[tuple[NodeCoord, bytes]] = []
        push, pop = frontier.append, frontier.pop
        node = _NODE
        for h in leaf_hashes:
            if len(h) != HASH_SIZE:
                self._size = size
                raise InvalidArgument("leaf hashes must be 32 bytes")
            s = size
            size += 1
            level = 0
            while s & 1:
                h = sha256(node + pop() + h).digest()
                s >>= 1
                level += 1
                if stride is not None and level % stride == 0:
                    out.append(((level, (size >> level) - 1), h))
            push(h)
        self._size = size
        return out

    def extend_subtrees(self, subtrees: Iterable[tuple[int, bytes]]) -> None:
        """Append whole perfect subtrees, each (level, root hash) covering the next
        ``2**level`` leaves, as ``subtree_roots`` gives them; reports no nodes to store.

        InvalidArgument when a subtree does not start at a multiple of its width (the
        leaves appended before it stay appended).
        """
        frontier = self._frontier
        size = self._size
        pop = frontier.pop
        node = _NODE
        for level, h in subtrees:
            if level < 0 or size & ((1 << level) - 1) or len(h) != HASH_SIZE:
                self._size = size
                raise InvalidArgument(f"a subtree of level {level} cannot start at {size}")
            s = size >> level
            size += 1 << level
            while s & 1:
                h = sha256(node + pop() + h).digest()
                s >>= 1
            frontier.append(h)
        self._size = size


def subtree_roots(first: int, leaf_hashes: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """The compact range of leaves ``[first, first + n)`` of a larger tree: the largest
    aligned perfect subtrees covering it, left to right, as (level, root hash).

    Feeding them to ``CompactRange.extend_subtrees`` on a range of size ``first`` gives
    the same range as ``extend(leaf_hashes)``: a block's share of the log can be hashed
    apart (another process) and merged in O(log n).
    """
    _check_int("first", first)
    out: list[tuple[int, bytes]] = []
    at, end, done = first, first + len(leaf_hashes), 0
    while at < end:
        level = (at & -at).bit_length() - 1 if at else (end - at).bit_length() - 1
        while (1 << level) > end - at:
            level -= 1
        width = 1 << level
        out.append((level, root(leaf_hashes[done : done + width])))
        at += width
        done += width
    return out
