"""What the verifier reads a chain through: raw headers and entries, and the source
interfaces a bundle file, a database or a live node implement (in ``coalition.audit``).

A source hands out raw data only (header text, entry bytes, the source's own stored leaf
hashes as hints); the verifier parses, hashes and verifies everything itself and never
trusts a stored hash. Sources are read-only; opening and reading files, databases and
networks is theirs, never the verifier's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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

    def blocks(self) -> Iterator[tuple[RawHeader, list[RawEntry]]]:
        """Each block from height 0 up, once; a source whose data ends early or breaks
        its own framing raises ``CoalitionError`` naming where."""
