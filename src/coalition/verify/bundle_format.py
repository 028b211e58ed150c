"""The ``coalition/bundle/v1`` format, read: a bundle's lines parsed and framed (pure).

A bundle is UTF-8 JSON Lines, every line one RFC 8785 canonical JSON document and
``\\n``: a head line, K evidence lines, then per height 0 .. B-1 a block line followed by
exactly ``entry_count`` entry lines, and an end line with the counts and the SHA-256 of
every byte before it (docs/proofs.md §9 is normative). This module checks framing only
(and the end hash, a guard against truncation and damage); every cryptographic check is
the chain audit's. It reads lines from a ``BundleLines`` the caller provides:
opening, decompressing and seeking files is ``coalition.audit.bundle``'s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

from coalition.errors import CoalitionError, VerificationError
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json, parse_json
from coalition.ledger.keys import PUBLIC_KEY_SIZE, VerifyKey
from coalition.verify.evidence import RawEvidence
from coalition.verify.source import BlockLines, RawHeader

BUNDLE_TYPE = "coalition/bundle/v1"
EVIDENCE_TYPE = "coalition/bundle-evidence/v1"
END_TYPE = "coalition/bundle-end/v1"

_NOT_ENTRY = (b'{"cosignatures":', b'{"blocks":')
"""How a block line and an end line start (canonical key order); no entry starts so."""


class Unreadable(VerificationError):
    """What ``BundleLines`` raises when its bytes cannot be read (damaged or truncated
    compression, an I/O error); its text is the cause's."""


class BundleLines(Protocol):
    """A bundle's uncompressed bytes as lines, read forward. Both methods MUST raise
    ``Unreadable`` when the bytes cannot be read, never another error."""

    def readline(self) -> bytes:
        """The next line with its ``\\n`` (without one at the end of the data), b"" after."""

    def readlines(self, count: int) -> list[bytes]:
        """The next ``count`` lines (fewer at the end of the data)."""


@dataclass(frozen=True, slots=True)
class BundleSummary:
    """What a bundle holds: its program, B blocks, N entries, the end line's hex SHA-256,
    and the K evidence pieces."""

    program: str
    blocks: int
    entries: int
    sha256: str
    evidence: int = 0


@dataclass(frozen=True, slots=True)
class BundleHead:
    """The head line, parsed. ``public_key`` is what the exporting node announces: an
    auditor verifies with the manifest's key and at most reports a mismatch."""

    program: str
    public_key: VerifyKey | None
    key_id: str | None
    blocks: int
    log_size: int
    evidence: int
    exported_at: str
    latest: RawHeader | None


def _int(value: JsonValue) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Framing:
    """Raises VerificationError naming the bundle (its file name) and the line."""

    def __init__(self, name: str) -> None:
        self.name = name

    def error(self, lineno: int, message: str) -> VerificationError:
        return VerificationError(f"bundle {self.name}: line {lineno}: {message}")

    def parse(self, line: bytes, lineno: int, what: str) -> JsonObject:
        """A non-entry line as a canonical JSON object."""
        if not line:
            raise self.error(lineno, f"the file ends where {what} was expected (truncated)")
        if not line.endswith(b"\n"):
            raise self.error(lineno, f"{what} has no final newline (truncated)")
        try:
            value = parse_json(line[:-1])
        except CoalitionError as exc:
            raise self.error(lineno, f"{what} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise self.error(lineno, f"{what} is not a JSON object")
        if canonical_json(value) != line[:-1]:
            raise self.error(lineno, f"{what} is not in RFC 8785 canonical form")
        return value


def header_at_position(doc: JsonValue, height: int) -> RawHeader | None:
    """A signed header object as the RawHeader at position ``height`` of the bundle (its own
    height field is checked later, by the audit); None when it has no header
    object or signature string."""
    if not isinstance(doc, dict):
        return None
    header, signature = doc.get("header"), doc.get("signature")
    if not isinstance(header, dict) or not isinstance(signature, str):
        return None
    return RawHeader(height, canonical_json(header).decode(), signature)


def parse_head(frame: Framing, doc: JsonObject) -> BundleHead:
    if doc.get("type") != BUNDLE_TYPE:
        raise frame.error(1, f"not a {BUNDLE_TYPE} head (type {doc.get('type')!r})")
    program, exported_at = doc.get("program"), doc.get("exported_at")
    blocks, log_size, evidence = (_int(doc.get(k)) for k in ("blocks", "log_size", "evidence"))
    if not isinstance(program, str) or not isinstance(exported_at, str):
        raise frame.error(1, "the head needs program and exported_at strings")
    if blocks is None or log_size is None or evidence is None:
        raise frame.error(1, "the head needs blocks, log_size and evidence counts")
    key, key_id = _head_key(frame, doc.get("public_key"), doc.get("key_id"))
    latest_doc = doc.get("latest")
    latest = None if latest_doc is None else header_at_position(latest_doc, blocks - 1)
    if (latest is None) != (blocks == 0):
        raise frame.error(1, "the head's latest header must be a signed header iff blocks > 0")
    return BundleHead(program, key, key_id, blocks, log_size, evidence, exported_at, latest)


def _head_key(
    frame: Framing, encoded: JsonValue, key_id: JsonValue
) -> tuple[VerifyKey | None, str | None]:
    if encoded is None and key_id is None:
        return None, None
    if not isinstance(encoded, str) or not isinstance(key_id, str):
        raise frame.error(1, "the head's public_key and key_id must be strings")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise frame.error(1, "the head's public_key is not base64") from None
    if len(raw) != PUBLIC_KEY_SIZE:
        raise frame.error(1, f"the head's public_key is {len(raw)} bytes, not 32")
    key = VerifyKey.from_raw(raw)
    if key.key_id != key_id:
        raise frame.error(1, "the head's key_id is not the SHA-256 of its public_key")
    return key, key_id


def parse_evidence(frame: Framing, doc: JsonObject, lineno: int) -> RawEvidence:
    if doc.get("type") != EVIDENCE_TYPE:
        raise frame.error(lineno, f"expected an evidence line, found type {doc.get('type')!r}")
    ident, height = _int(doc.get("id")), _int(doc.get("height"))
    program, kind, reason = doc.get("program"), doc.get("kind"), doc.get("reason")
    detected = doc.get("detected_at")
    texts = []
    for which in ("first", "second"):
        value = doc.get(which)
        if isinstance(value, dict):
            texts.append(canonical_json(value).decode())
        elif isinstance(value, str):
            texts.append(value)
        else:
            raise frame.error(lineno, f"the evidence's {which} is not a signed header or a string")
    if (
        ident is None
        or height is None
        or not isinstance(program, str)
        or not isinstance(kind, str)
        or not isinstance(reason, str)
        or not (detected is None or isinstance(detected, str))
    ):
        raise frame.error(lineno, "an evidence line needs id, program, height, kind and reason")
    return RawEvidence(ident, program, height, kind, reason, texts[0], texts[1], detected)


@dataclass(slots=True)
class Prelude:
    """What precedes the blocks: the head, the evidence, and the hash of their bytes."""

    head: BundleHead
    evidence: list[RawEvidence]
    digest: hashlib._Hash = field(repr=False)


def read_prelude(frame: Framing, first: bytes, lines: BundleLines) -> Prelude:
    """Parse the head line ``first`` and the evidence lines that follow it in ``lines``;
    VerificationError naming the line of the first fault."""
    if not first:
        raise frame.error(1, "the file is empty; expected the head line")
    head = parse_head(frame, frame.parse(first, 1, "the head line"))
    digest = hashlib.sha256(first)
    evidence: list[RawEvidence] = []
    for lineno in range(2, 2 + head.evidence):
        line = _read(frame, lineno, lines.readline)
        doc = frame.parse(line, lineno, "an evidence line")
        evidence.append(parse_evidence(frame, doc, lineno))
        digest.update(line)
    return Prelude(head, evidence, digest)


def _read(frame: Framing, lineno: int, read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except Unreadable as exc:
        raise frame.error(lineno, f"the file cannot be read: {exc}") from None


class BlockReader:
    """One forward pass over the block lines of a bundle, checking framing: ``next()``
    gives each block's (header, entries) in height order, then None once the end line checked out
    (``summary`` is set then). ``lines`` MUST be positioned just after the prelude;
    ``entries`` False skips building the entries (a pass for headers only); ``framed``,
    when given, is told each block's height and cosignature lines as soon as the block
    is framed (before the check that the last block is the head's latest)."""

    def __init__(
        self,
        frame: Framing,
        prelude: Prelude,
        lines: BundleLines,
        *,
        entries: bool,
        framed: Callable[[int, list[str]], None] | None = None,
    ) -> None:
        self._frame = frame
        self._framed = framed
        self._head = prelude.head
        self._lines = lines
        self._keep = entries
        self._digest = prelude.digest.copy()
        self._lineno = 1 + prelude.head.evidence
        self._entries_seen = 0
        self.height = 0
        """The height of the next block this pass reads."""
        self.summary: BundleSummary | None = None

    def next(self) -> tuple[RawHeader, BlockLines] | None:
        head, frame = self._head, self._frame
        self._lineno += 1
        lineno = self._lineno
        line = _read(frame, lineno, self._lines.readline)
        if self.height == head.blocks:
            self._end(line, lineno)
            return None
        doc = frame.parse(line, lineno, f"the block line of height {self.height}")
        self._digest.update(line)
        raw, first, count, cosignatures = self._block_line(doc, lineno)
        lines = _read_lines(frame, lineno + 1, self._lines, count)
        if len(lines) < count or (count and not lines[-1].endswith(b"\n")):
            cut = bool(lines) and not lines[-1].endswith(b"\n")  # the last line is cut short
            at = lineno + len(lines) + (0 if cut else 1)
            raise frame.error(at, f"the file ends inside block {self.height}'s entries (truncated)")
        if any(map(bytes.startswith, lines, repeat(_NOT_ENTRY))):
            n = next(n for n, entry in enumerate(lines) if entry.startswith(_NOT_ENTRY))
            raise frame.error(
                lineno + 1 + n,
                f"a block or end line where entry {n} of block {self.height} was expected "
                f"(the header says {count} entries)",
            )
        data = b"".join(lines)
        self._digest.update(data)
        self._lineno += count
        self._entries_seen += count
        if self._framed is not None:
            self._framed(self.height, cosignatures)
        self.height += 1
        if self.height == head.blocks and raw != head.latest:
            raise frame.error(lineno, "the last block is not the head's latest header")
        if not self._keep:
            return raw, BlockLines(first, [], b"")
        return raw, BlockLines(first, lines, data)

    def _block_line(self, doc: JsonObject, lineno: int) -> tuple[RawHeader, int, int, list[str]]:
        frame, height = self._frame, self.height
        raw = header_at_position(doc, height)
        cosignatures = doc.get("cosignatures")
        if raw is None or set(doc) != {"header", "signature", "cosignatures"}:
            raise frame.error(
                lineno,
                f"expected the block line of height {height} (header, signature, "
                "cosignatures); an extra entry line, or a line out of place",
            )
        if not isinstance(cosignatures, list) or not all(isinstance(c, str) for c in cosignatures):
            raise frame.error(lineno, "the block line's cosignatures are not a list of strings")
        header = doc["header"]
        assert isinstance(header, dict)
        if header.get("height") != height:
            raise frame.error(
                lineno, f"a block line of height {header.get('height')!r} where {height} belongs"
            )
        first, count = _int(header.get("first_index")), _int(header.get("entry_count"))
        if first is None or count is None:
            raise frame.error(lineno, "the block's header has no first_index and entry_count")
        return raw, first, count, [c for c in cosignatures if isinstance(c, str)]

    def _end(self, line: bytes, lineno: int) -> None:
        head, frame = self._head, self._frame
        doc = frame.parse(line, lineno, "the end line")
        if doc.get("type") != END_TYPE:
            raise frame.error(
                lineno,
                f"expected the end line after {head.blocks} blocks; an extra entry or block "
                "line, or a line out of place",
            )
        if doc.get("blocks") != head.blocks:
            raise frame.error(
                lineno, f"the end line counts {doc.get('blocks')!r} blocks, the head {head.blocks}"
            )
        if doc.get("entries") != self._entries_seen or doc.get("entries") != head.log_size:
            raise frame.error(
                lineno,
                f"the end line counts {doc.get('entries')!r} entries, the head "
                f"{head.log_size}, the file {self._entries_seen}",
            )
        sha = self._digest.hexdigest()
        if doc.get("sha256") != sha:
            raise frame.error(
                lineno, "the end line's sha256 is not the hash of the bytes before it (damaged)"
            )
        if _read(frame, lineno + 1, self._lines.readline):
            raise frame.error(lineno + 1, "data after the end line")
        self.summary = BundleSummary(
            head.program, head.blocks, self._entries_seen, sha, head.evidence
        )


def _read_lines(frame: Framing, lineno: int, lines: BundleLines, count: int) -> list[bytes]:
    try:
        return lines.readlines(count)
    except Unreadable as exc:
        raise frame.error(lineno, f"the file cannot be read: {exc}") from None
