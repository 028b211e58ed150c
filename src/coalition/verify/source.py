"""What the verifier reads a chain through: raw headers and entries, and the source
interfaces a bundle file, a database or a live node implement (in ``coalition.audit``).

A source hands out raw data only (header text, entry bytes, the source's own stored leaf
hashes as hints); the verifier parses, hashes and verifies everything itself and never
trusts a stored hash. Sources are read-only; opening and reading files, databases and
networks is theirs, never the verifier's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, overload, runtime_checkable

from coalition.ledger.blocks import BlockHeader, SignedHeader
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.ledger.keys import VerifyKey
from coalition.verify.evidence import RawEvidence


@dataclass(frozen=True, slots=True)
class RawHeader:
    """A signed header as the source holds it: canonical header JSON text and signature."""

    height: int
    header: str
    signature: str


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One entry's bytes as stored; ``log_index`` and ``stored_leaf_hash`` when known."""

    log_index: int | None
    body: bytes
    stored_leaf_hash: bytes | None = None


class BlockLines(Sequence[RawEntry]):
    """A block's entries as a stream frames them, one line each: consecutive log indexes
    from ``first``, no stored leaf hashes. ``data`` is the lines joined, each ending in
    ``\\n`` (so a body holds no raw newline, and ``data`` splits back into exactly the
    bodies); ``RawEntry`` objects are made only when asked for, so a reader of a long
    chain that needs the bytes only (``bodies``, ``data``) pays nothing per entry."""

    __slots__ = ("_bodies", "data", "first", "lines")

    def __init__(self, first: int, lines: list[bytes], data: bytes) -> None:
        self.first = first
        self.lines = lines
        self.data = data
        self._bodies: list[bytes] | None = None

    @property
    def bodies(self) -> list[bytes]:
        """Each entry's bytes, without its newline."""
        if self._bodies is None:
            self._bodies = [line[:-1] for line in self.lines]
        return self._bodies

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> RawEntry: ...

    @overload
    def __getitem__(self, index: slice) -> list[RawEntry]: ...

    def __getitem__(self, index: int | slice) -> RawEntry | list[RawEntry]:
        if isinstance(index, slice):
            return [self[n] for n in range(*index.indices(len(self)))]
        n = index + len(self) if index < 0 else index
        return RawEntry(self.first + n, self.lines[index][:-1])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BlockLines):
            return self.first == other.first and self.lines == other.lines
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, as a list

    def __repr__(self) -> str:
        return f"BlockLines(first={self.first}, entries={len(self)})"


def signed_header(raw: RawHeader) -> SignedHeader:
    """The signed header a source handed out, parsed (not verified); CoalitionError when
    its text is not a block header."""
    return SignedHeader(BlockHeader.from_json(parse_json(raw.header)), raw.signature)


class ChainSource(Protocol):
    """Read access to one program's chain. Methods raise ``CoalitionError`` on failure."""

    def public_key(self) -> VerifyKey | None:
        """The key the source itself announces (None: it announces none)."""

    def latest_header(self) -> RawHeader | None:
        """The newest header, None before the first block."""

    def headers(self, start: int, limit: int) -> list[RawHeader]:
        """Up to ``limit`` headers from height ``start``, in height order."""

    def block_entries(self, height: int, first_index: int, count: int) -> list[RawEntry]:
        """The entries of the block at ``height`` (claimed range ``first_index`` + ``count``)."""

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject | None:
        """A consistency proof document between two heights (None: not offered)."""

    def close(self) -> None: ...


@runtime_checkable
class EvidenceSource(Protocol):
    """A source that can also hand out the equivocation and fork evidence its node holds
    as a witness (raw: the verifier checks it, ``verify.evidence``)."""

    def evidence(self) -> list[RawEvidence] | None:
        """Every piece the node holds, oldest first (None: it offers none, no witness)."""


@runtime_checkable
class CosignatureSource(Protocol):
    """A source that can also hand out the witnesses' cosignatures of its program's
    headers (C2SP tlog-cosignature/v1 signature lines, unverified: the verifier checks
    each against the header's checkpoint and the witness's manifest key)."""

    def cosignatures(self, start: int, end: int) -> dict[int, list[str]] | None:
        """Cosignature lines by header height for heights ``start`` .. ``end - 1`` (a
        height without any is absent); None: the source offers none."""


@runtime_checkable
class BlockStream(Protocol):
    """A source that reads best front to back (a bundle file): every block in height
    order, each with its entries' bytes. An audit uses it instead of ``headers`` and
    ``block_entries`` when offered."""

    def blocks(self) -> Iterator[tuple[RawHeader, Sequence[RawEntry]]]:
        """Each block from height 0 up, once; a source whose data ends early or breaks
        its own framing raises ``CoalitionError`` naming where. The entries SHOULD be a
        ``BlockLines`` when the source holds them as lines (a reader then takes the
        bytes without a ``RawEntry`` per entry)."""
