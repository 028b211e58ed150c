"""The pure walk of a node's stored blocks (``verify.stored_chain``): the tree nodes a
block completes, which the walk reads to compare, are exactly those the sealer stores
(the walk itself on real databases: ``tests/integration/test_integrity.py``)."""

from __future__ import annotations

from hashlib import sha256

import pytest

from coalition.ledger.merkle import CompactRange
from coalition.verify.stored_chain import completed_coords


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_completed_coords_are_the_nodes_the_sealer_stores(stride: int) -> None:
    leaves = [sha256(bytes([n % 256, n // 256])).digest() for n in range(300)]
    for first in range(0, 280, 7):
        for count in (0, 1, 2, 5, 16, 17):
            tree = CompactRange(stride=stride)
            tree.extend(leaves[:first])
            stored = [coord for coord, _ in tree.extend(leaves[first : first + count])]
            assert sorted(completed_coords(first, count, stride)) == sorted(stored), (
                first,
                count,
            )
