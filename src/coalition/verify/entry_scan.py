"""The chain audit's bulk pass over a block's entries, cheap enough for a worker process.

For each entry body: its RFC 9162 leaf hash over the exact bytes, and a *conservative*
test that the bytes are an RFC 8785 canonical JSON object with a sound envelope for the
program, parsing them once with the C decoder. An entry passes only when all of these
hold, which together imply ``canonical_json(parse_json(body)) == body``, that
``parse_json`` would return the same value, and that ``check_envelope`` and the program
check would accept it:

* the bytes are ASCII (so valid UTF-8, no lone surrogates, every key in the BMP: code
  point order is RFC 8785's UTF-16 order);
* the C decoder accepts them with every object's keys strictly increasing (sorted, no
  duplicate) and no float, NaN or Infinity;
* no whitespace outside strings (JSON whitespace inside a string must be escaped, so a
  raw tab, CR or LF anywhere fails; a space must lie inside a string);
* every escape is one RFC 8785 writes (``\\" \\\\ \\b \\f \\n \\r \\t`` and lowercase
  ``\\u00xx`` for the other control characters), so every string is spelled canonically;
* no integer token is ``-0`` or longer than 15 characters (so within +-(2**53 - 1));
* type, program, id, kind and ``at`` pass (``at`` in the canonical
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` shape and a real date-time, and not after the block's
  ``sealed_at``: two canonical spellings compare as strings exactly as their instants).

An entry that fails any test is *flagged*: the auditor runs the exact checks on it (and
names the fault); a false alarm costs time, never soundness.

A scan in a worker process ships each passing entry of a common kind as the small tuple
``points.replay_fast.prepare`` makes of it (the replay's stateless checks done here, in
parallel), the others as the parsed object: ``marshal`` loads a tuple several times
faster than an object, and the replay needs nothing else.
"""

from __future__ import annotations

import json
import marshal
import re
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256

from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import CANONICAL_TIME, ENTRY_TYPE, canonical_time
from coalition.ledger.merkle import root, subtree_roots
from coalition.points.replay_fast import Prepared, prepare

_ODD_BYTES = b"\t\n\r\\ "
"""Bytes after which a closer look is needed: JSON whitespace and escapes."""
_NON_CANONICAL_ESCAPE = re.compile(rb'\\(?:[^"\\bfnrtu]|u(?!00(?:0[0-7bef]|1[0-9a-f])))')
"""An escape RFC 8785 does not write (it may also match after an escaped backslash: a
false alarm, the entry gets the exact check)."""
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


class _NotFast(Exception):
    """The body needs the exact checks."""


def _refuse(_text: str) -> JsonValue:
    raise _NotFast


def _short_int(text: str) -> int:
    if len(text) > 15 or text == "-0":
        raise _NotFast
    return int(text)


def _sorted_object(pairs: list[tuple[str, JsonValue]]) -> JsonObject:
    obj = dict(pairs)
    keys = list(obj)
    if len(keys) != len(pairs) or keys != sorted(keys):
        raise _NotFast
    return obj


_decode = json.JSONDecoder(
    object_pairs_hook=_sorted_object,
    parse_float=_refuse,
    parse_int=_short_int,
    parse_constant=_refuse,
).decode


def fast_entry(body: bytes, program: str, sealed_at: str = "") -> JsonObject | None:
    """The parsed entry when ``body`` passes every test of the module docstring, else None."""
    if not body.isascii():
        return None
    if len(body.translate(None, _ODD_BYTES)) != len(body):
        if b"\t" in body or b"\n" in body or b"\r" in body:
            return None
        if b"\\" in body and _NON_CANONICAL_ESCAPE.search(body) is not None:
            return None
        if b" " in body and b" " in _STRING.sub(b"", body):
            return None
    try:
        entry = _decode(body.decode("ascii"))
    except (_NotFast, ValueError, RecursionError):
        return None
    if type(entry) is not dict or entry.get("type") != ENTRY_TYPE:
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

    def parsed(self) -> list[JsonObject | Prepared | None]:
        if self.entries is not None:
            return list(self.entries)
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
) -> BlockScan:
    """Hash, root and test every body of one block (see the module docstring);
    ``sealed_at`` is the block's, when its header has one in the canonical spelling."""
    leaves = [sha256(b"\x00" + body).digest() for body in bodies]
    if not CANONICAL_TIME.fullmatch(sealed_at):
        sealed_at = ""
    entries = [fast_entry(body, program, sealed_at) for body in bodies]
    flagged = [n for n, entry in enumerate(entries) if entry is None]
    subtrees = subtree_roots(first, leaves) if first >= 0 else []
    if pack:
        shipped = [None if entry is None else prepare(entry) or entry for entry in entries]
        return BlockScan(leaves, root(leaves), subtrees, flagged, None, marshal.dumps(shipped))
    return BlockScan(leaves, root(leaves), subtrees, flagged, entries)
