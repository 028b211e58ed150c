"""The checks of one block, written once: the whole-chain audit (``chain_audit``) and the
node's own checks of its stored blocks (``stored_chain``: at start, the scrub and
``coalition check``) run these same functions, so a tampered entry or header is named
with the same fault kind and the same words wherever it is found.

Every check reports through a ``FaultSink`` (kind, message, height, log index, entry id)
and goes on where it can, so a report lists every fault. Nothing here trusts a stored
hash: a stored leaf hash only names which entry changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from coalition.errors import CoalitionError, VerificationError
from coalition.ledger.blocks import BlockHeader, SignedHeader
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json, parse_json
from coalition.ledger.entries import check_envelope, parse_time
from coalition.ledger.keys import VerifyKey
from coalition.ledger.merkle import leaf_hash, root
from coalition.verify.source import BlockLines, RawEntry


@dataclass(frozen=True, slots=True)
class Fault:
    """One thing found wrong. ``kind`` is a stable slug (``entry-tampered``, ...);
    ``height``, ``log_index`` and ``entry_id`` say where, when known."""

    kind: str
    message: str
    height: int | None = None
    log_index: int | None = None
    entry_id: str | None = None

    def to_json(self) -> JsonObject:
        out: JsonObject = {"kind": self.kind, "message": self.message}
        for name in ("height", "log_index", "entry_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def __str__(self) -> str:
        where = []
        if self.height is not None:
            where.append(f"height {self.height}")
        if self.log_index is not None:
            where.append(f"log index {self.log_index}")
        if self.entry_id is not None:
            where.append(f"entry {self.entry_id}")
        at = f" ({', '.join(where)})" if where else ""
        return f"[{self.kind}]{at} {self.message}"


@dataclass(slots=True)
class FaultList:
    """Faults in the order found, keeping at most ``limit`` (the rest are only counted)."""

    limit: int = 1000
    items: list[Fault] = field(default_factory=list)
    omitted: int = 0

    def add(self, fault: Fault) -> None:
        if len(self.items) < self.limit:
            self.items.append(fault)
        else:
            self.omitted += 1

    def __len__(self) -> int:
        return len(self.items) + self.omitted


def faults_json(faults: FaultList) -> list[JsonValue]:
    return [f.to_json() for f in faults.items]


def render_faults(faults: FaultList) -> list[str]:
    lines = [f"  {fault}" for fault in faults.items]
    if faults.omitted:
        lines.append(f"  ... and {faults.omitted:,} more faults not listed")
    return lines


class FaultSink(Protocol):
    """Where a check reports what it found."""

    def __call__(
        self,
        kind: str,
        message: str,
        height: int | None = None,
        *,
        log_index: int | None = None,
        entry_id: str | None = None,
    ) -> None: ...


def replay_fault(
    fault: FaultSink, exc: Exception, body: JsonObject, log_index: int | None, height: int | None
) -> None:
    """An entry the replay refused (the audit's and ``coalition check``'s one wording)."""
    entry_id = entry_id_of(body)
    message = str(exc).removeprefix(f"entry {entry_id}: ")
    fault(
        "replay",
        f"entry does not fit the state: {message}",
        height,
        log_index=log_index,
        entry_id=entry_id,
    )


@dataclass(slots=True)
class Item:
    """One entry as checked: the leaf hash recomputed from its canonical body."""

    log_index: int | None
    entry_id: str | None
    leaf: bytes
    stored: bytes | None
    body: JsonObject | None


def entry_id_of(body: JsonValue) -> str | None:
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _after(at: JsonValue, sealed_at: str) -> bool:
    """Whether an entry's time is later than its block's seal (an entry cannot be written
    after the block holding it was signed; a later date would also keep a conversion from
    ever counting as pending). Unreadable times are other checks' faults."""
    try:
        return isinstance(at, str) and parse_time(at) > parse_time(sealed_at)
    except CoalitionError:
        return False


def exact_item(
    fault: FaultSink, h: BlockHeader, raw: RawEntry, index: int | None, program: str
) -> Item:
    """Parse, re-canonicalise and hash one entry; check its envelope and program."""
    try:
        parsed = parse_json(raw.body)
    except CoalitionError as exc:
        fault("entry-malformed", f"body is not valid JSON: {exc}", h.height, log_index=index)
        return Item(index, None, leaf_hash(raw.body), raw.stored_leaf_hash, None)
    entry_id = entry_id_of(parsed)
    body = parsed if isinstance(parsed, dict) else None
    data = canonical_json(parsed)
    if data != raw.body:
        fault(
            "entry-non-canonical",
            "stored body is not its RFC 8785 canonical form",
            h.height,
            log_index=index,
            entry_id=entry_id,
        )
    try:
        if body is None:
            raise VerificationError("an entry must be a JSON object")
        check_envelope(body)
        if body["program"] != program:
            raise VerificationError(f"program {body['program']!r} is not {program!r}")
    except CoalitionError as exc:
        fault("entry-envelope", str(exc), h.height, log_index=index, entry_id=entry_id)
        body = None
    if body is not None and _after(body["at"], h.sealed_at):
        fault(
            "entry-after-seal",
            f"dated {body['at']}, after its block was sealed ({h.sealed_at})",
            h.height,
            log_index=index,
            entry_id=entry_id,
        )
    return Item(index, entry_id, leaf_hash(data), raw.stored_leaf_hash, body)


def check_gaps(fault: FaultSink, h: BlockHeader, raws: Sequence[RawEntry]) -> bool:
    """Name missing (deleted) entries; True when the block's entries are incomplete."""
    first = h.first_index
    if isinstance(raws, BlockLines) and raws.first == first and len(raws) == h.entry_count:
        return False
    indexes = [raw.log_index for raw in raws]
    if len(raws) == h.entry_count and indexes == list(range(first, first + len(raws))):
        return False
    if all(i is not None for i in indexes) and raws:
        present = set(indexes)
        missing = [
            i for i in range(h.first_index, h.first_index + h.entry_count) if i not in present
        ]
        for i in missing:
            fault(
                "entry-missing",
                f"log index {i} is missing from the block's entries",
                h.height,
                log_index=i,
            )
        if missing:
            return True
    if len(raws) != h.entry_count:
        fault(
            "entry-count",
            f"the header says {h.entry_count} entries, the source has {len(raws)}",
            h.height,
        )
        return True
    return False


@dataclass(slots=True)
class Position:
    """Where a walk of the chain stands before the next header: what that header MUST
    continue. None fields are unknown (after a gap or a header that did not parse)."""

    next_height: int = 0
    prev_hash: str | None = None
    prev_log_size: int | None = 0
    prev_time: datetime | None = None
    prev_forged: bool = False
    """Whether the last header checked carries a bad signature (its fields mean nothing,
    so links to it are not judged)."""


def check_header(
    fault: FaultSink,
    signed: SignedHeader,
    key: VerifyKey,
    program: str,
    at: Position,
    *,
    after_rotation: bool = False,
) -> None:
    """Check a header's program, signature (by ``key``, the key in force for it:
    ``after_rotation`` when that is not the program's first key), height, link, range and
    time against ``at``; updates ``at.prev_time`` and ``at.prev_forged`` (the caller moves
    the rest on)."""
    h = signed.header
    if h.program != program:
        fault("header-program", f"program {h.program!r} is not {program!r}", h.height)
    try:
        signed.verify(key)
        sig_bad = False
    except CoalitionError as exc:
        epoch = " (the key in force after rotation)" if after_rotation else ""
        fault("header-signature", f"signature does not verify{epoch}: {exc}", h.height)
        sig_bad = True
    if h.height != at.next_height:
        fault("header-height", f"expected height {at.next_height}", h.height)
    if at.prev_hash is not None and not at.prev_forged and h.prev_hash != at.prev_hash:
        fault("header-link", "prev_hash is not the hash of the previous header", h.height)
    if at.prev_log_size is not None and h.first_index != at.prev_log_size:
        fault(
            "header-range",
            f"first_index {h.first_index} is not the previous log size {at.prev_log_size}",
            h.height,
        )
    if h.log_size != h.first_index + h.entry_count:
        fault("header-range", "log_size is not first_index + entry_count", h.height)
    sealed = parse_time(h.sealed_at)
    if at.prev_time is not None and sealed < at.prev_time:
        fault("header-time", "sealed_at is earlier than the previous block's", h.height)
    at.prev_time = sealed
    at.prev_forged = sig_bad


def check_roots(
    fault: FaultSink, h: BlockHeader, items: list[Item], gaps: bool, forged: bool
) -> list[bytes] | None:
    """Check the block root and name changed entries; return the block's authentic
    leaf hashes (those the signed root commits to), None when they are unknown.
    ``forged``: the header's signature is bad (its root means nothing)."""
    leaves = [item.leaf for item in items]
    changed = [item for item in items if item.stored is not None and item.stored != item.leaf]
    if root(leaves).hex() == h.block_root:
        for item in changed:
            fault(
                "stored-leaf-hash",
                "the stored leaf hash is not the hash of the entry's body",
                h.height,
                log_index=item.log_index,
                entry_id=item.entry_id,
            )
        return leaves
    stored = [item.stored for item in items if item.stored is not None]
    authentic = None
    if not gaps and len(stored) == len(items) and root(stored).hex() == h.block_root:
        authentic = stored
    for item in changed:
        fault(
            "entry-tampered",
            "the entry's body does not hash to the leaf its signed block commits to"
            if authentic is not None
            else "the entry's body does not match its stored leaf hash",
            h.height,
            log_index=item.log_index,
            entry_id=item.entry_id,
        )
    if gaps or authentic is not None:
        return authentic  # a gap is reported already, and leaves no authentic list
    if forged and not changed:
        return leaves  # a forged header's root means nothing; entries show no change
    if changed:
        why = ""
    elif len(stored) == len(items):
        why = "; every entry matches its stored hash: both were changed, or the header lies"
    else:
        why = "; the source has no stored hashes to name the entry"
    fault("block-root", "block_root is not the root of the block's entries" + why, h.height)
    return None
