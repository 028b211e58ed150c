"""A coalition audit fault with its place: program, block height, log index, entry id.

The single-chain audit reports ``chain_audit.Fault`` (its program is the report's);
every other check of the coalition audit reports ``LocatedFault`` directly
(``cross_chain.CrossChainFault`` is this class; ``evidence.EvidenceFault`` extends it), so
the coalition report lists every fault with its place on its chain.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from coalition.ledger.canonical import JsonObject

_PLACES = ("height", "log_index", "entry_id", "witness", "statement", "conversion")


@dataclass(frozen=True, slots=True)
class LocatedFault:
    """One fault: a stable ``kind`` slug, the ``program`` whose chain (or node) is at
    fault, and where on it when that applies."""

    kind: str
    program: str
    message: str
    height: int | None = None
    log_index: int | None = None
    entry_id: str | None = None
    witness: str | None = None
    statement: str | None = None
    conversion: str | None = None

    def to_json(self) -> JsonObject:
        out: JsonObject = {"kind": self.kind, "program": self.program, "message": self.message}
        for name in _PLACES:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def __str__(self) -> str:
        where = [self.program]
        labels = {"log_index": "log index", "entry_id": "entry"}
        for name in _PLACES:
            value = getattr(self, name)
            if value is not None:
                where.append(f"{labels.get(name, name)} {value}")
        return f"[{self.kind}] ({', '.join(where)}) {self.message}"


class BlockIndex:
    """Which block holds a log index, from the headers an audit read (first indexes in
    height order): maps the cross-chain faults' log indexes to block heights."""

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._heights: list[int] = []
        self._end = 0

    def add(self, height: int, first_index: int, entry_count: int) -> None:
        """Record one block; blocks must come in increasing ``first_index`` order (a
        block out of order is ignored: the chain audit reports it)."""
        if self._firsts and first_index < self._firsts[-1]:
            return
        self._firsts.append(first_index)
        self._heights.append(height)
        self._end = max(self._end, first_index + entry_count)

    def height_of(self, log_index: int | None) -> int | None:
        """The height of the block holding ``log_index`` (None: unknown)."""
        if log_index is None or log_index >= self._end:
            return None
        at = bisect_right(self._firsts, log_index) - 1
        return None if at < 0 else self._heights[at]
