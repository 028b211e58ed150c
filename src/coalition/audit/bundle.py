"""Portable chain bundles (``coalition/bundle/v1``): one program's chain as a file an
auditor verifies offline.

A bundle is UTF-8 JSON Lines, every line one RFC 8785 canonical JSON document and
``\\n``; gzip-compressed when its first bytes are the gzip magic ``1f 8b``. In order: a
head line (program, key, the snapshot's block count B and log size N, the newest signed
header), K evidence lines (equivocation and fork evidence the node holds as a witness),
then per height 0 .. B-1 a block line (signed header and the witnesses' cosignatures)
followed by exactly ``entry_count`` entry lines (each entry's canonical bytes as stored),
and an end line with the counts and the SHA-256 of every byte before it. docs/proofs.md
§9 is the normative description.

``export_bundle`` writes one file from a node's database (the writer itself is
``coalition.node.bundle_export``, which the node's bundle route streams); ``BundleSource``
opens one as an audit source, its lines framed by
``coalition.verify.bundle_format`` (framing and the end hash only; every cryptographic
check is the auditor's). Both stream: memory is bounded by a chunk of entries, never
the whole log.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from coalition.audit.sources import existing_database
from coalition.errors import CoalitionError, InvalidArgument
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import VerifyKey
from coalition.node.bundle_export import write_bundle
from coalition.verify.bundle_format import (
    BlockReader,
    BundleSummary,
    Framing,
    Unreadable,
    read_prelude,
)
from coalition.verify.evidence import RawEvidence
from coalition.verify.source import BlockLines, RawEntry, RawHeader

_READ_BUFFER = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_READ_ERRORS = (OSError, EOFError, zlib.error)
"""What reading a damaged or truncated (gzip) file raises."""


def export_bundle(
    path: Path,
    database_url: str,
    program: str,
    public_key: VerifyKey,
    *,
    exported_at: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> BundleSummary:
    """Write a bundle file (gzip when ``path`` ends in ``.gz``) from a database URL. It is
    written beside ``path`` and renamed at the end, so a half-written bundle never has
    the final name."""
    engine = existing_database(database_url)
    try:
        with AtomicFile(path) as out:
            return write_bundle(
                out, engine.connect, program, public_key, exported_at=exported_at, progress=progress
            )
    finally:
        engine.dispose()


class AtomicFile:
    """``with AtomicFile(path) as out``: a temporary file beside ``path`` (gzip-compressed
    when ``path`` ends in ``.gz``), renamed to ``path`` on success, removed on failure.
    ``check``, when given, runs on the finished temporary file before the rename (its
    exception keeps the file from getting the final name)."""

    def __init__(self, path: Path, check: Callable[[Path], None] | None = None) -> None:
        self._path = path
        self._check = check
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        self._raw: BinaryIO | None = None
        self._out: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        try:
            raw = self._raw = open(self._tmp, "wb")
        except OSError as exc:
            raise InvalidArgument(f"cannot write {self._path}: {exc.strerror}") from None
        out: BinaryIO = raw
        if self._path.name.endswith(".gz"):
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
            out = gz  # type: ignore[assignment]
        self._out = out
        return out

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._raw is not None and self._out is not None
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.close()
            if kind is None:
                if self._check is not None:
                    self._check(self._tmp)
                os.replace(self._tmp, self._path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()


# --- reading ---------------------------------------------------------------------------


def _open(path: Path) -> BinaryIO:
    """The bundle's uncompressed bytes, buffered; InvalidArgument when unreadable."""
    try:
        raw = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115  (caller closes)
        if raw.peek(2)[:2] != _GZIP_MAGIC:  # type: ignore[attr-defined]
            return raw
        raw.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    except OSError as exc:
        raise InvalidArgument(f"cannot read the bundle {path}: {exc.strerror or exc}") from None


class _FileLines:
    """A bundle file's lines (``BundleLines``), read errors raised as ``Unreadable``."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def readline(self) -> bytes:
        try:
            return self.file.readline()
        except _READ_ERRORS as exc:
            raise Unreadable(str(exc)) from None

    def readlines(self, count: int) -> list[bytes]:
        try:
            return list(islice(self.file, count))
        except _READ_ERRORS as exc:
            raise Unreadable(str(exc)) from None


class BundleSource:
    """A bundle file as an audit source: ``ChainSource``, ``EvidenceSource``,
    ``CosignatureSource`` and ``BlockStream`` (``coalition.audit.sources``).

    The constructor reads the head and evidence lines (InvalidArgument when the file is
    missing or unreadable, VerificationError when they are malformed). ``blocks()``
    streams the file front to back, checking its framing as it goes; ``headers`` and
    ``block_entries`` serve in-order access from two forward cursors, so an audit that
    pages through headers reads the file twice at most, never once per page.
    Cosignatures are remembered from any pass over the blocks (a few lines per block).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._frame = Framing(self.path.name)
        with _open(self.path) as f:
            try:
                first = f.readline()
            except _READ_ERRORS as exc:
                raise InvalidArgument(f"cannot read the bundle {self.path}: {exc}") from None
            self._prelude = read_prelude(self._frame, first, _FileLines(f))
            self._offset = f.tell()
        self.head = self._prelude.head
        self._header_cursor: _Cursor | None = None
        self._entry_cursor: _Cursor | None = None
        self._cosignatures: dict[int, list[str]] = {}
        self._cosigned_through = 0
        """Heights below this had their cosignatures recorded by a pass."""
        self.summary: BundleSummary | None = None
        """Set once a pass has read and checked the end line."""

    def _framed(self, height: int, cosignatures: list[str]) -> None:
        """Remember a block's cosignature lines the first time a pass frames it."""
        if height >= self._cosigned_through:
            if cosignatures:
                self._cosignatures[height] = cosignatures
            self._cosigned_through = height + 1

    # --- ChainSource -------------------------------------------------------------------

    def public_key(self) -> VerifyKey | None:
        return self.head.public_key

    def latest_header(self) -> RawHeader | None:
        return self.head.latest

    def headers(self, start: int, limit: int) -> list[RawHeader]:
        cursor = self._header_cursor
        if cursor is None or cursor.height > start:
            if cursor is not None:
                cursor.close()
            cursor = self._header_cursor = _Cursor(self, entries=False)
        found: list[RawHeader] = []
        if start >= self.head.blocks:
            cursor.finish()
            return found
        while len(found) < limit:
            block = cursor.next()
            if block is None:
                break
            if block[0].height >= start:
                found.append(block[0])
        return found

    def block_entries(self, height: int, first_index: int, count: int) -> list[RawEntry]:
        cursor = self._entry_cursor
        if cursor is None or cursor.height > height:
            if cursor is not None:
                cursor.close()
            cursor = self._entry_cursor = _Cursor(self, entries=True)
        while (block := cursor.next()) is not None:
            if block[0].height == height:
                return list(block[1])
        return []

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject | None:
        """None: a bundle carries every entry, so the auditor recomputes every root."""
        return None

    # --- EvidenceSource, CosignatureSource, BlockStream -----------------------------------

    def evidence(self) -> list[RawEvidence] | None:
        return list(self._prelude.evidence)

    def cosignatures(self, start: int, end: int) -> dict[int, list[str]] | None:
        """The cosignature lines the block lines at ``start`` .. ``end - 1`` carry (read
        by an earlier pass, else by a pass over the file now)."""
        if min(end, self.head.blocks) > self._cosigned_through:
            _Cursor(self, entries=False).finish()
        return {
            h: list(lines) for h, lines in self._cosignatures.items() if start <= h < end and lines
        }

    def blocks(self) -> Iterator[tuple[RawHeader, BlockLines]]:
        cursor = _Cursor(self, entries=True)
        try:
            while (block := cursor.next()) is not None:
                yield block
        finally:
            cursor.close()

    def check_framing(self) -> BundleSummary:
        """Read the whole file checking its framing and end hash (no signatures: that is
        the audit); VerificationError naming the line of the first fault."""
        _Cursor(self, entries=False).finish()
        assert self.summary is not None
        return self.summary

    def close(self) -> None:
        for cursor in (self._header_cursor, self._entry_cursor):
            if cursor is not None:
                cursor.close()
        self._header_cursor = self._entry_cursor = None

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Cursor:
    """One forward pass over a bundle's blocks, on its own open file (a
    ``bundle_format.BlockReader``); ``next()`` gives the next (header, entries) (entries
    empty unless ``entries``), None after the end line. A framing fault stops the pass
    and is raised again if asked for more."""

    def __init__(self, source: BundleSource, *, entries: bool) -> None:
        self._source = source
        self._file: BinaryIO | None = _open(source.path)
        self._file.seek(source._offset)
        self._reader = BlockReader(
            source._frame,
            source._prelude,
            _FileLines(self._file),
            entries=entries,
            framed=source._framed,
        )
        self._failed: CoalitionError | None = None

    @property
    def height(self) -> int:
        """The height of the next block this cursor reads."""
        return self._reader.height

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> None:
        """Read to the end line and check it."""
        while self.next() is not None:
            pass

    def next(self) -> tuple[RawHeader, BlockLines] | None:
        if self._failed is not None:
            raise self._failed
        if self._file is None:
            return None
        try:
            block = self._reader.next()
        except CoalitionError as exc:
            self._failed = exc
            self.close()
            raise
        except BaseException:
            self.close()
            raise
        if block is None:
            self._source.summary = self._reader.summary
            self.close()
        return block
