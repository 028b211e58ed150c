"""RFC 9162 Merkle tree: the transparency-dev vectors, a naive reference from the RFC text,
and the storage-oriented functions against the in-memory ones."""

from __future__ import annotations

import base64
import json
from hashlib import sha256
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger import merkle
from coalition.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    NodeCoord,
    consistency_coords,
    consistency_from_nodes,
    consistency_proof,
    expand_nodes,
    inclusion_coords,
    inclusion_from_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_coords,
    root_from_nodes,
    stored_coords,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "merkle"


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _vector_files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_vectors_are_present() -> None:
    assert (VECTORS / "LICENSE").is_file()
    assert len(_vector_files("inclusion")) > 50
    assert len(_vector_files("consistency")) > 50


@pytest.mark.parametrize("path", _vector_files("inclusion"), ids=_id)
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(p) for p in v["proof"] or []]
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _vector_files("consistency"), ids=_id)
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(p) for p in v["proof"] or []]
    args = (v["size1"], v["size2"], proof, _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# --- a naive reference, written from RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 -----------


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """MTH over leaf hashes (the hashes stand for their leaves)."""
    if not d:
        return sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_hashes_are_domain_separated() -> None:
    assert sha256(b"").digest() == EMPTY_ROOT
    assert root([]) == EMPTY_ROOT
    assert leaf_hash(b"x") == sha256(b"\x00x").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 300), data=st.data())
def test_against_reference(size: int, data: st.DataObject) -> None:
    d = _leaves(size)
    r = root(d)
    assert r == ref_mth(d)
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, d)
    assert proof == ref_path(index, d)
    verify_inclusion(d[index], index, size, proof, r)
    size1 = data.draw(st.integers(1, size))
    cproof = consistency_proof(size1, d)
    assert cproof == ref_proof(size1, d)
    verify_consistency(size1, size, cproof, root(d[:size1]), r)


def test_exhaustive_small_trees() -> None:
    for size in range(1, 34):
        d = _leaves(size)
        r = root(d)
        for index in range(size):
            proof = inclusion_proof(index, d)
            assert proof == ref_path(index, d)
            verify_inclusion(d[index], index, size, proof, r)
        for size1 in range(1, size + 1):
            proof = consistency_proof(size1, d)
            assert proof == ref_proof(size1, d)
            verify_consistency(size1, size, proof, root(d[:size1]), r)


def _flip(b: bytes, bit: int) -> bytes:
    ba = bytearray(b)
    ba[bit // 8] ^= 1 << (bit % 8)
    return bytes(ba)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_any_flipped_bit_fails_inclusion(size: int) -> None:
    d = _leaves(size)
    r = root(d)
    for index in range(size):
        proof = inclusion_proof(index, d)
        for bit in range(256):
            with pytest.raises(VerificationError):
                verify_inclusion(_flip(d[index], bit), index, size, proof, r)
            with pytest.raises(VerificationError):
                verify_inclusion(d[index], index, size, proof, _flip(r, bit))
            for j in range(len(proof)):
                bad = [*proof]
                bad[j] = _flip(bad[j], bit)
                with pytest.raises(VerificationError):
                    verify_inclusion(d[index], index, size, bad, r)


@pytest.mark.parametrize("size", [2, 3, 7, 8, 12])
def test_any_flipped_bit_fails_consistency(size: int) -> None:
    d = _leaves(size)
    r2 = root(d)
    for size1 in range(1, size):
        r1 = root(d[:size1])
        proof = consistency_proof(size1, d)
        for bit in range(256):
            with pytest.raises(VerificationError):
                verify_consistency(size1, size, proof, _flip(r1, bit), r2)
            with pytest.raises(VerificationError):
                verify_consistency(size1, size, proof, r1, _flip(r2, bit))
            for j in range(len(proof)):
                bad = [*proof]
                bad[j] = _flip(bad[j], bit)
                with pytest.raises(VerificationError):
                    verify_consistency(size1, size, bad, r1, r2)


def test_wrong_shapes_fail() -> None:
    d = _leaves(10)
    r = root(d)
    proof = inclusion_proof(3, d)
    with pytest.raises(VerificationError):
        verify_inclusion(d[3], 4, 10, proof, r)
    with pytest.raises(VerificationError):
        verify_inclusion(d[3], 3, 20, proof, r)
    with pytest.raises(VerificationError):
        verify_inclusion(d[3], 3, 10, [*proof, proof[0]], r)
    with pytest.raises(VerificationError):
        verify_inclusion(d[3], 3, 10, proof[:-1], r)
    with pytest.raises(VerificationError):
        verify_inclusion(d[3], 10, 10, [], r)
    with pytest.raises(VerificationError):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)


# --- storage-oriented functions --------------------------------------------------------


def _all_perfect(d: list[bytes]) -> dict[NodeCoord, bytes]:
    nodes: dict[NodeCoord, bytes] = {}
    level = 0
    while (1 << level) <= len(d):
        for i in range(len(d) >> level):
            nodes[(level, i)] = root(d[i << level : (i + 1) << level])
        level += 1
    return nodes


def _stored_by_compact_range(d: list[bytes], stride: int) -> dict[NodeCoord, bytes]:
    store: dict[NodeCoord, bytes] = {(0, i): h for i, h in enumerate(d)}
    cr = CompactRange(stride=stride)
    for h in d:
        for coord, value in cr.append(h):
            assert coord not in store
            store[coord] = value
    return store


def _fetch(store: dict[NodeCoord, bytes], coords: list[NodeCoord]) -> dict[NodeCoord, bytes]:
    return {c: store[c] for c in coords}  # a KeyError here means a missing stored node


@settings(max_examples=120, deadline=None)
@given(size=st.integers(1, 200), stride=st.integers(1, 5), data=st.data())
def test_stored_nodes_match_memory(size: int, stride: int, data: st.DataObject) -> None:
    d = _leaves(size)
    everything = _all_perfect(d)
    store = _stored_by_compact_range(d, stride)
    # The compact range reports exactly the perfect nodes of the kept levels.
    assert store == {c: h for c, h in everything.items() if c[0] % stride == 0}

    def served(coords: list[NodeCoord]) -> dict[NodeCoord, bytes]:
        assert all(c in everything for c in coords)  # only perfect nodes are asked for
        return expand_nodes(coords, _fetch(store, stored_coords(coords, stride)), stride)

    index = data.draw(st.integers(0, size - 1))
    coords = inclusion_coords(index, size)
    assert len(coords) <= 2 * size.bit_length()
    assert inclusion_from_nodes(index, size, served(coords)) == inclusion_proof(index, d)

    size1 = data.draw(st.integers(1, size))
    coords = consistency_coords(size1, size)
    assert len(coords) <= 2 * size.bit_length() + 1
    proof = consistency_from_nodes(size1, size, served(coords))
    assert proof == consistency_proof(size1, d)

    assert root_from_nodes(size, served(root_coords(size))) == root(d)

    # Reload a range at an intermediate size from the store, then keep appending.
    mid = data.draw(st.integers(0, size))
    frontier = CompactRange.frontier_coords(mid)
    fetched = _fetch(store, stored_coords(frontier, stride))
    reloaded = CompactRange.from_nodes(mid, fetched, stride)
    assert reloaded.root() == root(d[:mid])
    later = reloaded.extend(d[mid:])
    assert reloaded.root() == root(d)
    assert later == [(c, h) for c, h in _compact_outputs(d, stride) if c_end(c) > mid]


def c_end(coord: NodeCoord) -> int:
    level, index = coord
    return (index + 1) << level


def _compact_outputs(d: list[bytes], stride: int) -> list[tuple[NodeCoord, bytes]]:
    return CompactRange(stride=stride).extend(d)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), max_size=6), stride=st.integers(1, 5))
def test_compact_range_extend_equals_append(sizes: list[int], stride: int) -> None:
    d = _leaves(sum(sizes))
    one, batch = CompactRange(stride=stride), CompactRange(stride=stride)
    out_one: list[tuple[NodeCoord, bytes]] = []
    out_batch: list[tuple[NodeCoord, bytes]] = []
    start = 0
    for n in sizes:
        chunk = d[start : start + n]
        start += n
        for h in chunk:
            out_one += one.append(h)
        snapshot = batch.copy()
        out_batch += batch.extend(chunk)
        assert snapshot.size == start - n  # copies are independent
        assert batch.root() == one.root() == root(d[:start])
        assert batch.size == start
    assert out_one == out_batch
    assert batch.frontier == tuple(root_from_nodes_list(batch.size, d))


def root_from_nodes_list(size: int, d: list[bytes]) -> list[bytes]:
    nodes = _all_perfect(d[:size])
    return [nodes[c] for c in root_coords(size)]


def test_large_tree_coords_are_logarithmic() -> None:
    size = 1_000_003
    for index in (0, 1, 524_287, 999_999, size - 1):
        coords = inclusion_coords(index, size)
        assert len(coords) <= 2 * size.bit_length()
        assert len(stored_coords(coords, 4)) <= len(coords) * 8
    assert len(consistency_coords(123_457, size)) <= 2 * size.bit_length() + 1


def test_bad_arguments() -> None:
    with pytest.raises(InvalidArgument):
        inclusion_coords(5, 5)
    assert consistency_coords(0, 5) == []
    assert consistency_from_nodes(0, 5, {}) == []
    with pytest.raises(InvalidArgument):
        consistency_coords(6, 5)
    assert consistency_coords(5, 5) == []
    with pytest.raises(InvalidArgument):
        stored_coords([(1, 0)], 0)
    with pytest.raises(InvalidArgument):
        inclusion_from_nodes(0, 2, {})
    with pytest.raises(InvalidArgument):
        CompactRange(size=3, frontier=[b"x" * 32])
    with pytest.raises(InvalidArgument):
        CompactRange().append(b"short")
    assert merkle.root_from_nodes(0, {}) == EMPTY_ROOT
