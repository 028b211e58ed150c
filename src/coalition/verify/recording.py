"""A ChainSource wrapper that keeps, as the chain audit reads a chain once, what the
coalition checks need afterwards: the coalition entries at their log positions, every
signed header (its checkpoint is what witnesses cosign) and where each block starts.

``recording(source)`` wraps any source; when the source streams blocks (a bundle,
``BlockStream``) the wrapper streams too, so the chain audit keeps its fast path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from coalition.errors import CoalitionError
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.ledger.keys import VerifyKey
from coalition.points import kinds
from coalition.verify.located import BlockIndex
from coalition.verify.source import (
    BlockLines,
    BlockStream,
    ChainSource,
    RawEntry,
    RawHeader,
    signed_header,
)

COALITION_KINDS = re.compile(
    b'"kind":"(?:'
    + b"|".join(re.escape(name.encode()) for name in sorted(kinds.COALITION_KINDS))
    + b')"'
)
"""Byte markers of the entries the cross-chain and settlement checks read
(``points.kinds.COALITION_KINDS``, each name with its closing quote): canonical JSON
sorts keys, so ``"kind":"..."`` appears exactly so."""
OTHER: JsonObject = {}
"""Stands in for an entry the coalition checks do not read (keeps log positions)."""


def _parse(raw: RawHeader) -> SignedHeader | None:
    try:
        return signed_header(raw)
    except CoalitionError:
        return None  # chain_audit reports it


class RecordingSource:
    """A ChainSource that records what it hands out (see the module docstring).

    ``entries`` are the coalition entries in log order (others are ``OTHER``);
    ``headers_seen`` every header that parsed, by height (first seen wins);
    ``block_index`` maps log indexes to heights; ``headers_at`` the headers at ``heights``
    (those evidence is about)."""

    def __init__(self, source: ChainSource, heights: frozenset[int] = frozenset()) -> None:
        self.source = source
        self.entries: list[JsonObject] = []
        self.heights = heights
        self.headers_seen: dict[int, SignedHeader] = {}
        self.block_index = BlockIndex()

    @property
    def headers_at(self) -> dict[int, SignedHeader]:
        return {h: s for h, s in self.headers_seen.items() if h in self.heights}

    def public_key(self) -> VerifyKey | None:
        return self.source.public_key()

    def latest_header(self) -> RawHeader | None:
        return self.source.latest_header()

    def _record_header(self, raw: RawHeader) -> SignedHeader | None:
        signed = _parse(raw)
        if signed is not None and signed.header.height not in self.headers_seen:
            h = signed.header
            self.headers_seen[h.height] = signed
            self.block_index.add(h.height, h.first_index, h.entry_count)
        return signed

    def headers(self, start: int, limit: int) -> list[RawHeader]:
        raws = self.source.headers(start, limit)
        for raw in raws:
            self._record_header(raw)
        return raws

    def _record_entries(
        self, first_index: int | None, count: int, raws: Sequence[RawEntry]
    ) -> None:
        if (
            isinstance(raws, BlockLines)
            and raws.first == len(self.entries)
            and COALITION_KINDS.search(raws.data) is None
        ):
            self.entries.extend([OTHER] * len(raws))  # no coalition entry: one search
            return
        positional = first_index is not None and len(raws) == count
        for n, raw in enumerate(raws):
            index = raw.log_index
            if index is None:
                index = first_index + n if positional and first_index is not None else None
            if index is None:
                index = len(self.entries)
            if index >= len(self.entries):
                self.entries.extend([OTHER] * (index + 1 - len(self.entries)))
            body: JsonObject = OTHER
            if COALITION_KINDS.search(raw.body):
                try:
                    parsed = parse_json(raw.body)
                except CoalitionError:
                    parsed = None  # chain_audit reports it
                if isinstance(parsed, dict):
                    body = parsed
            self.entries[index] = body

    def block_entries(self, height: int, first_index: int, count: int) -> list[RawEntry]:
        raws = self.source.block_entries(height, first_index, count)
        self._record_entries(first_index, count, raws)
        return raws

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject | None:
        return self.source.consistency_proof(first_height, second_height)

    def close(self) -> None:
        self.source.close()


class RecordingStream(RecordingSource):
    """A RecordingSource over a BlockStream: ``blocks()`` passes each block through,
    recording its header and entries exactly as ``headers``/``block_entries`` do."""

    def blocks(self) -> Iterator[tuple[RawHeader, Sequence[RawEntry]]]:
        source = self.source
        assert isinstance(source, BlockStream)
        for raw, entries in source.blocks():
            signed = self._record_header(raw)
            if signed is None:
                self._record_entries(None, len(entries), entries)
            else:
                h = signed.header
                self._record_entries(h.first_index, h.entry_count, entries)
            yield raw, entries


def recording(source: ChainSource, heights: frozenset[int] = frozenset()) -> RecordingSource:
    """The recorder for ``source``: a stream when the source streams blocks."""
    if isinstance(source, BlockStream):
        return RecordingStream(source, heights)
    return RecordingSource(source, heights)
