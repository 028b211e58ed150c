"""The chain audit's bulk pass over a block's entries, cheap enough for a worker process.

For each entry body: its RFC 9162 leaf hash over the exact bytes, and a *conservative*
test that the bytes are an RFC 8785 canonical JSON object with a sound envelope for the
program. An entry passes only when all of these hold, which together imply
``canonical_json(parse_json(body)) == body``, that ``parse_json`` would return the same
value, and that ``check_envelope`` and the program check would accept it:

* ``ledger.canonical_check.canonical_object`` returns the body's object: the bytes
  decode (msgspec, no float) and encode again (orjson, keys sorted, integers within
  +-(2**53 - 1)) to exactly themselves, which that module's docstring shows is RFC 8785
  canonical form of the subset and the value ``parse_json`` gives;
* the value is an object whose type, program, id, kind and ``at`` pass (``at`` in the
  canonical ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` shape and a real date-time, and not after the
  block's ``sealed_at``: two canonical spellings compare as strings exactly as their
  instants).

An entry that fails any test is *flagged*: the auditor runs the exact checks on it (and
names the fault); a false alarm costs time, never soundness.

A scan in a worker process ships each passing entry of a common kind as the small tuple
``points.replay_fast.prepare`` makes of it (the replay's stateless checks done here, in
parallel), the others as the parsed object: ``marshal`` loads a tuple several times
faster than an object, and the replay needs nothing else.
"""

from __future__ import annotations

import marshal
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import cast

from coalition.ledger.canonical import JsonObject
from coalition.ledger.canonical_check import canonical_object
from coalition.ledger.entries import CANONICAL_TIME, ENTRY_TYPE, canonical_time
from coalition.ledger.merkle import root, subtree_roots
from coalition.points.replay_fast import Prepared, prepare
from coalition.verify.replay_shards import split


def fast_entry(body: bytes, program: str, sealed_at: str = "") -> JsonObject | None:
    """The parsed entry when ``body`` passes every test of the module docstring, else None."""
    entry = canonical_object(body)
    if entry is None or entry.get("type") != ENTRY_TYPE:
        return None
    entry_id, kind, at = entry.get("id"), entry.get("kind"), entry.get("at")
    if not (
        program
        and entry.get("program") == program
        and type(entry_id) is str
        and entry_id
        and type(kind) is str
        and kind
        and type(at) is str
        and canonical_time(at) is not None
        and (not sealed_at or at <= sealed_at)
    ):
        return None
    return entry


@dataclass(frozen=True, slots=True)
class BlockScan:
    """What the bulk pass found in one block's entries.

    ``leaves`` are the leaf hashes of the exact bytes; ``root`` their RFC 9162 root;
    ``subtrees`` their compact range at log position ``first``
    (``merkle.subtree_roots``); ``flagged`` the positions needing the exact checks;
    ``entries`` the parsed entries (None where flagged), or ``packed`` holding them
    marshalled when the scan ran in another process (cheaper to load than to parse), a
    ``Prepared`` tuple in place of each entry ``prepare`` reduced.
    """

    leaves: list[bytes]
    root: bytes
    subtrees: list[tuple[int, bytes]]
    flagged: list[int]
    entries: list[JsonObject | None] | None
    packed: bytes | None = None
    shard_ops: list[bytes] | None = None
    """Asked for with ``shards``: when every entry passed and ``prepare`` reduced each,
    the block's ops for each shard of a replay split by account (``replay_shards.split``,
    ``marshal``led), and neither ``entries`` nor ``packed`` (the shards replay it)."""

    def parsed(self) -> list[JsonObject | Prepared | None]:
        """The entries as shipped; for a block split for the shards, an empty tuple
        stands for each (every one passed: parse its bytes when it is needed)."""
        if self.entries is not None:
            return list(self.entries)
        if self.shard_ops is not None:
            return [()] * len(self.leaves)
        packed = self.packed or marshal.dumps([])
        entries: list[JsonObject | Prepared | None] = marshal.loads(packed)  # noqa: S302
        return entries


def scan_block(
    bodies: Sequence[bytes],
    program: str,
    first: int,
    *,
    pack: bool = False,
    sealed_at: str = "",
    shards: int = 0,
) -> BlockScan:
    """Hash, root and test every body of one block (see the module docstring);
    ``sealed_at`` is the block's, when its header has one in the canonical spelling.
    ``shards`` (with ``pack``): also split the block for a sharded replay when it can be
    (``BlockScan.shard_ops``)."""
    leaves = [sha256(b"\x00" + body).digest() for body in bodies]
    if not CANONICAL_TIME.fullmatch(sealed_at):
        sealed_at = ""
    entries = [fast_entry(body, program, sealed_at) for body in bodies]
    flagged = [n for n, entry in enumerate(entries) if entry is None]
    subtrees = subtree_roots(first, leaves) if first >= 0 else []
    if pack:
        shipped = [None if entry is None else prepare(entry) or entry for entry in entries]
        if shards > 0 and all(type(item) is tuple for item in shipped):
            prepared = cast(list[Prepared], shipped)
            ops = [marshal.dumps(part) for part in split(prepared, shards)]
            return BlockScan(leaves, root(leaves), subtrees, flagged, None, None, ops)
        return BlockScan(leaves, root(leaves), subtrees, flagged, None, marshal.dumps(shipped))
    return BlockScan(leaves, root(leaves), subtrees, flagged, entries)


def scan_lines(
    data: bytes, count: int, program: str, first: int, *, sealed_at: str = "", shards: int = 0
) -> BlockScan:
    """``scan_block(pack=True)`` of the ``count`` bodies ``data`` holds as lines, each
    ending in ``\\n`` (``source.BlockLines.data``): what a worker gets, one bytes object
    being far cheaper to ship than a list of them."""
    bodies = data.split(b"\n")
    if len(bodies) != count + 1 or bodies.pop():
        raise ValueError(f"expected {count} lines, each ending in a newline")
    return scan_block(bodies, program, first, pack=True, sealed_at=sealed_at, shards=shards)
