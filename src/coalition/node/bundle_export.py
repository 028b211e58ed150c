"""The node's chain as a portable bundle (``coalition/bundle/v1``, docs/proofs.md §9):
the writer behind ``GET /v1/ledger/bundle`` and ``coalition bundle``.

``BundleExport`` fixes a snapshot (the newest header when it is made) and streams the
bundle's bytes from read sessions of the node's database; memory stays bounded by a
chunk of entries. The format itself (line types, framing, the end hash) is
``coalition.verify.bundle_format``'s, which the auditor reads with.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import BinaryIO

from sqlalchemy import Connection, inspect

from coalition.errors import CoalitionError, CorruptStore, InvalidArgument
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json, parse_json
from coalition.ledger.entries import format_time
from coalition.ledger.keys import VerifyKey
from coalition.store import columns as columns_store
from coalition.store import ledger as ledger_store
from coalition.store.columns import from_micros
from coalition.store.witness import (
    cosignature_lines,
    evidence_rows,
    witness_cosignatures,
    witness_evidence,
)
from coalition.verify.bundle_format import BUNDLE_TYPE, END_TYPE, EVIDENCE_TYPE, BundleSummary
from coalition.verify.evidence import RawEvidence

ReadSession = Callable[[], AbstractContextManager[Connection]]
"""Opens a read session on the node's database (``Sequencer.read``, ``Engine.connect``)."""

ENTRY_CHUNK = 20_000
"""Log indexes the writer selects at once: its memory bound."""
BLOCK_PAGE = 1000
"""Headers (and their cosignatures) the writer selects at once."""
WRITE_CHUNK = 1 << 20
"""Bytes the writer gathers before handing a chunk on (to a file or an HTTP stream)."""


def stored_evidence(conn: Connection) -> list[RawEvidence]:
    """The node's ``witness_evidence`` rows as stored (headers as text, unparsed), oldest
    first."""
    return [
        RawEvidence(
            id=row.id,
            program=row.program,
            height=row.height,
            kind=row.kind,
            reason=row.reason,
            first=row.first,
            second=row.second,
            detected_at=format_time(from_micros(row.detected_at)),
        )
        for row in evidence_rows(conn)
    ]


def _line(obj: JsonObject) -> bytes:
    return canonical_json(obj) + b"\n"


def _signed_object(header_text: str, signature: str) -> JsonObject:
    header = columns_store.stored_object(header_text, "header")
    return {"header": header, "signature": signature}


def _carried(text: str) -> JsonValue:
    """A stored signed header text as a JSON object, or as the string itself when it does
    not parse (the auditor then blames its holder)."""
    try:
        value = parse_json(text)
    except CoalitionError:
        return text
    return value if isinstance(value, dict) else text


def _evidence_lines(conn: Connection) -> list[bytes]:
    return [
        _line(
            {
                "type": EVIDENCE_TYPE,
                "id": piece.id,
                "program": piece.program,
                "height": piece.height,
                "kind": piece.kind,
                "reason": piece.reason,
                "first": _carried(piece.first),
                "second": _carried(piece.second),
                "detected_at": piece.detected_at,
            }
        )
        for piece in stored_evidence(conn)
    ]


class BundleExport:
    """One snapshot of a node's chain as bundle bytes.

    The constructor fixes the snapshot: the newest header at that moment gives B and N;
    blocks sealed later are not included. Iterate once to get the bundle in chunks of
    about ``WRITE_CHUNK`` bytes; ``summary`` is set when the iteration ends. A database
    that cannot be framed (a block or entry row missing, an entry with a raw newline)
    raises CorruptStore naming the height or log index.
    """

    def __init__(
        self,
        read: ReadSession,
        program: str,
        public_key: VerifyKey,
        *,
        exported_at: datetime | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._read = read
        self._program = program
        self._progress = progress
        self.summary: BundleSummary | None = None
        with read() as conn:
            tables = inspect(conn)
            latest = ledger_store.last_block(conn)
            self._cosigned = tables.has_table(witness_cosignatures.name)
            evidence = _evidence_lines(conn) if tables.has_table(witness_evidence.name) else []
        self.blocks = 0 if latest is None else latest[0] + 1
        latest_doc: JsonObject | None = None
        self.log_size = 0
        if latest is not None:
            latest_doc = _signed_object(latest[1], latest[2])
            header = latest_doc["header"]
            assert isinstance(header, dict)
            if header.get("program") != program:
                raise InvalidArgument(
                    f"the database holds the chain of {header.get('program')!r}, not {program!r}"
                )
            log_size = header.get("log_size")
            if not isinstance(log_size, int):
                raise CorruptStore(f"the stored header at height {latest[0]} has no log_size")
            self.log_size = log_size
        self._evidence = evidence
        self.head: JsonObject = {
            "type": BUNDLE_TYPE,
            "program": program,
            "public_key": base64.b64encode(public_key.raw).decode("ascii"),
            "key_id": public_key.key_id,
            "blocks": self.blocks,
            "log_size": self.log_size,
            "evidence": len(evidence),
            "exported_at": format_time(exported_at or datetime.now(UTC)),
            "latest": latest_doc,
        }

    def __iter__(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        pending: list[bytes] = [_line(self.head), *self._evidence]
        size = sum(map(len, pending))
        with self._read() as conn:
            for part in self._block_parts(conn):
                pending.append(part)
                size += len(part)
                if size >= WRITE_CHUNK:
                    chunk = b"".join(pending)
                    digest.update(chunk)
                    yield chunk
                    pending, size = [], 0
        chunk = b"".join(pending)
        digest.update(chunk)
        sha = digest.hexdigest()
        end: JsonObject = {
            "type": END_TYPE,
            "blocks": self.blocks,
            "entries": self.log_size,
            "sha256": sha,
        }
        yield chunk + _line(end)
        self.summary = BundleSummary(
            self._program, self.blocks, self.log_size, sha, len(self._evidence)
        )

    def _block_parts(self, conn: Connection) -> Iterator[bytes]:
        """Each block line, then its entry lines joined, for heights 0 .. B-1."""
        entries = _EntryWindow(conn, self.log_size)
        for start in range(0, self.blocks, BLOCK_PAGE):
            end = min(start + BLOCK_PAGE, self.blocks)
            rows = ledger_store.block_rows(conn, start, end - start)
            cosigned = cosignature_lines(conn, self._program, start, end) if self._cosigned else {}
            for expected, (height, header_text, signature) in enumerate(rows, start):
                if height != expected:
                    raise CorruptStore(f"the database has no block at height {expected}")
                doc = _signed_object(header_text, signature)
                header = doc["header"]
                assert isinstance(header, dict)
                first, count = header.get("first_index"), header.get("entry_count")
                if not isinstance(first, int) or not isinstance(count, int) or count < 0:
                    raise CorruptStore(f"the stored header at height {height} has no entry range")
                doc["cosignatures"] = list(cosigned.get(height, []))
                yield _line(doc)
                if count:
                    yield entries.lines(first, count)
                if self._progress is not None:
                    self._progress(count)
            if len(rows) < end - start:
                raise CorruptStore(f"the database has no block at height {start + len(rows)}")


class _EntryWindow:
    """Entry lines by log index, selected ``ENTRY_CHUNK`` indexes at a time (forward)."""

    def __init__(self, conn: Connection, log_size: int) -> None:
        self._conn = conn
        self._log_size = log_size
        self._lo = self._hi = 0
        self._lines: list[bytes] = []

    def lines(self, first: int, count: int) -> bytes:
        """The canonical lines of entries ``first`` .. ``first + count - 1``, joined."""
        end = first + count
        if end > self._log_size:
            raise CorruptStore(
                f"a block claims log indexes up to {end - 1}, beyond the log size {self._log_size}"
            )
        if first < self._lo or end > self._hi:
            self._load(first, max(end, first + ENTRY_CHUNK))
        return b"".join(self._lines[first - self._lo : end - self._lo])

    def _load(self, lo: int, hi: int) -> None:
        hi = min(hi, self._log_size)
        rows = ledger_store.entry_bodies(self._conn, lo, hi)
        lines = []
        for expected, (index, body, _) in enumerate(rows, lo):
            if index != expected or "\n" in body:
                raise CorruptStore(
                    f"the database has no entry at log index {expected}"
                    if index != expected
                    else f"the stored entry at log index {index} contains a raw newline"
                )
            lines.append(body.encode() + b"\n")
        if len(lines) < hi - lo:
            raise CorruptStore(f"the database has no entry at log index {lo + len(lines)}")
        self._lo, self._hi, self._lines = lo, hi, lines


def write_bundle(
    out: BinaryIO,
    read: ReadSession,
    program: str,
    public_key: VerifyKey,
    *,
    exported_at: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> BundleSummary:
    """Write ``program``'s chain from a node's database (``read`` opens read sessions on
    it) to ``out`` (uncompressed bytes;
    wrap ``out`` in gzip to compress). ``progress`` gets each block's entry count."""
    export = BundleExport(read, program, public_key, exported_at=exported_at, progress=progress)
    for chunk in export:
        out.write(chunk)
    assert export.summary is not None
    return export.summary
