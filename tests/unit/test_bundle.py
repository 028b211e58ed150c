"""Bundles (``coalition/bundle/v1``) written from a real node's database and read back:
the round trip on SQLite and PostgreSQL, cosignatures and evidence carried, gzip, the
chain audit on a bundle, and every framing fault named by its line."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from coalition.audit import audit_chain
from coalition.audit.bundle import BundleSource, export_bundle
from coalition.audit.sources import DatabaseSource
from coalition.errors import CorruptStore, InvalidArgument, VerificationError
from coalition.ledger.blocks import BlockHeader, SignedHeader, sign_header
from coalition.ledger.canonical import canonical_json, parse_json
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import leaf_hash
from coalition.ledger.note import checkpoint_of, cosign, verify_cosignature, witness_name
from coalition.node.bundle_export import BundleExport, write_bundle
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.store.witness import (
    StoredCosignature,
    save_cosignature,
    save_evidence,
    witness_evidence,
)
from coalition.verify.bundle_format import BlockReader, Framing, Unreadable, read_prelude
from coalition.verify.source import (
    BlockStream,
    CosignatureSource,
    EvidenceSource,
    RawEntry,
    RawHeader,
)

from support.nodes import Clock, temporary_node

PROGRAM = "testair"
MEMBERS = ("alice", "bob", "carol", "dave")


@dataclass
class Chain:
    """A node with a few blocks, its database URL and key."""

    service: NodeService
    url: str
    key: SigningKey
    clock: Clock


def populate(service: NodeService, clock: Clock) -> None:
    for member in MEMBERS:
        service.points.enroll(member, idempotency_key=f"enroll-{member}")
        service.points.earn_reward(member, "signup", member, idempotency_key=f"signup-{member}")
    service.points.earn_purchase("alice", "order-1", 12_345, idempotency_key="p1")
    service.ledger.flush()  # sealed before the clock moves: the same blocks of three on every run
    clock.advance(days=31)
    service.points.redeem("alice", 200, "gift-1", idempotency_key="x1")
    service.points.transfer("alice", "bob", 100, "dinner", idempotency_key="t1")
    service.ledger.flush()


@pytest.fixture
def chain(database_url: str) -> Iterator[Chain]:
    clock, key = Clock(), SigningKey.generate()
    sealer = SealerConfig(max_entries=3, max_delay_ms=3_600_000)  # cut by count or flush only
    with temporary_node(database_url, sealer=sealer, clock=clock, key=key) as service:
        populate(service, clock)
        yield Chain(service, database_url, key, clock)


@pytest.fixture(scope="module")
def sqlite_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey]:
    """One bundle on SQLite, for the framing faults (each test copies and damages it)."""
    folder = tmp_path_factory.mktemp("bundle")
    url = f"sqlite:///{folder / 'node.db'}"
    clock, key = Clock(), SigningKey.generate()
    sealer = SealerConfig(max_entries=3, max_delay_ms=3_600_000)  # cut by count or flush only
    with temporary_node(url, sealer=sealer, clock=clock, key=key) as service:
        populate(service, clock)
        path = folder / "testair.bundle"
        export_bundle(path, url, PROGRAM, key.public_key, exported_at=clock.now)
    return path, key


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(lines: list[bytes], path: Path, *, fix_end: bool = True) -> Path:
    """Write ``lines``; ``fix_end`` recomputes the end line's hash (a damage the framing
    must catch by itself)."""
    if fix_end:
        end = json.loads(lines[-1])
        end["sha256"] = hashlib.sha256(b"".join(lines[:-1])).hexdigest()
        lines = [*lines[:-1], canonical_json(end) + b"\n"]
    path.write_bytes(b"".join(lines))
    return path


def first_entry_line(lines: list[bytes]) -> int:
    """Index of the first entry line (after the head, evidence and the first block line)."""
    return next(n for n, line in enumerate(lines) if line.startswith(b'{"cosignatures":')) + 1


def drain(source: BundleSource) -> int:
    return sum(len(entries) for _, entries in source.blocks())


# --- round trip ------------------------------------------------------------------------


def test_a_bundle_carries_every_header_and_entry_byte_for_byte(
    chain: Chain, tmp_path: Path
) -> None:
    path = tmp_path / "chain.bundle"
    summary = export_bundle(path, chain.url, PROGRAM, chain.key.public_key)
    latest = chain.service.ledger.latest_header()
    assert latest is not None
    h = latest.header
    assert (summary.program, summary.blocks, summary.entries) == (PROGRAM, h.height + 1, h.log_size)
    assert summary.sha256 == hashlib.sha256(b"".join(lines_of(path)[:-1])).hexdigest()

    with BundleSource(path) as bundle, DatabaseSource(chain.url) as db:
        assert isinstance(bundle, BlockStream | EvidenceSource | CosignatureSource)
        assert bundle.head.program == PROGRAM and bundle.head.blocks == h.height + 1
        assert bundle.public_key() == chain.key.public_key
        assert bundle.head.key_id == chain.key.public_key.key_id
        assert bundle.latest_header() == db.latest_header()
        streamed = list(bundle.blocks())
        assert [raw for raw, _ in streamed] == db.headers(0, 10_000)
        for raw, entries in streamed:
            header = BlockHeader.from_json(parse_json(raw.header))
            stored = db.block_entries(raw.height, header.first_index, header.entry_count)
            assert [(e.log_index, e.body) for e in entries] == [
                (e.log_index, e.body) for e in stored
            ]
            assert [leaf_hash(e.body) for e in entries] == [e.stored_leaf_hash for e in stored]
        # the in-order access of the page-by-page audit gives the same
        pages = bundle.headers(0, 2) + bundle.headers(2, 10_000)
        assert pages == [raw for raw, _ in streamed]
        assert bundle.headers(len(pages), 5) == []
        last = streamed[-1][0]
        assert bundle.block_entries(last.height, 0, 0) == streamed[-1][1]
        assert bundle.block_entries(0, 0, 0) == streamed[0][1]  # a cursor rewinds
        assert bundle.consistency_proof(0, last.height) is None
        assert bundle.evidence() == []
        assert bundle.cosignatures(0, 100) == {}
        assert bundle.check_framing() == summary


def test_the_snapshot_is_the_newest_header_when_the_export_starts(chain: Chain) -> None:
    export = BundleExport(chain.service.sequencer.read, PROGRAM, chain.key.public_key)
    before = chain.service.ledger.latest_header()
    assert before is not None
    chain.service.points.enroll("erin", idempotency_key="enroll-erin")
    chain.service.ledger.flush()
    out = io.BytesIO()
    for chunk in export:
        out.write(chunk)
    assert export.summary is not None
    assert export.summary.blocks == before.header.height + 1
    assert export.summary.entries == before.header.log_size
    end = json.loads(out.getvalue().splitlines()[-1])
    assert end["entries"] == before.header.log_size


def test_an_empty_chain_is_a_head_and_an_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    key = SigningKey.generate()
    with temporary_node(url, key=key, start=False):
        summary = export_bundle(tmp_path / "e.bundle", url, PROGRAM, key.public_key)
    assert (summary.blocks, summary.entries) == (0, 0)
    assert len(lines_of(tmp_path / "e.bundle")) == 2
    with BundleSource(tmp_path / "e.bundle") as bundle:
        assert bundle.latest_header() is None and list(bundle.blocks()) == []
        assert audit_chain(bundle, key.public_key).ok


def test_gzip_is_written_for_gz_names_and_read_by_its_magic_bytes(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    plain, _ = sqlite_bundle
    source = BundleSource(plain)
    compressed = tmp_path / "chain.bundle.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    renamed = tmp_path / "no-suffix.bundle"
    renamed.write_bytes(compressed.read_bytes())
    for path in (compressed, renamed):
        with BundleSource(path) as bundle:
            assert bundle.check_framing() == source.check_framing()
            assert list(bundle.blocks()) == list(source.blocks())


def test_export_to_a_gz_name_compresses(chain: Chain, tmp_path: Path) -> None:
    summary = export_bundle(tmp_path / "c.bundle.gz", chain.url, PROGRAM, chain.key.public_key)
    data = (tmp_path / "c.bundle.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b"
    lines = gzip.decompress(data).splitlines(keepends=True)
    assert hashlib.sha256(b"".join(lines[:-1])).hexdigest() == summary.sha256
    assert not list(tmp_path.glob(".*partial"))  # the temporary file was renamed


# --- cosignatures and evidence -----------------------------------------------------------


def test_cosignatures_partners_made_for_our_headers_are_carried_sorted(
    chain: Chain, tmp_path: Path
) -> None:
    partners = {name: SigningKey.generate() for name in ("skyhotel", "railco")}
    headers = chain.service.ledger.headers(0, 100)
    made: dict[int, list[str]] = {}
    with chain.service.sequencer.engine.begin() as conn:
        for signed in headers[:2]:
            h = signed.header
            for name, key in partners.items():
                line = cosign(checkpoint_of(signed), key, witness_name(name), 1_767_268_800)
                made.setdefault(h.height, []).append(line)
                save_cosignature(
                    conn,
                    StoredCosignature(PROGRAM, h.height, name, h.hash(), line, 1_767_268_800, True),
                )
        # one we made for a partner's header: not ours to carry
        save_cosignature(
            conn, StoredCosignature("skyhotel", 0, PROGRAM, "0" * 64, "— x AAAA\n", 1, False)
        )
    path = tmp_path / "cosigned.bundle"
    export_bundle(path, chain.url, PROGRAM, chain.key.public_key)
    with BundleSource(path) as bundle:
        carried = bundle.cosignatures(0, len(headers))
        assert carried == {height: sorted(lines) for height, lines in made.items()}
        assert bundle.cosignatures(1, 2) == {1: sorted(made[1])}
        for raw, _ in bundle.blocks():
            signed = SignedHeader.from_json(
                {"header": parse_json(raw.header), "signature": raw.signature}
            )
            for line in carried.get(raw.height, []):
                name = line.split(" ")[1]
                program = name.split("/")[1]
                verify_cosignature(checkpoint_of(signed), line, partners[program].public_key, name)


def test_evidence_is_carried_and_an_unparsable_piece_as_its_text(
    chain: Chain, tmp_path: Path
) -> None:
    rogue = SigningKey.generate()
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    def genesis(sealed_at: str) -> SignedHeader:
        header = BlockHeader("railco", 0, "0" * 64, 0, 0, empty, 0, empty, sealed_at)
        return sign_header(header, rogue)

    first = genesis("2026-01-01T12:00:00.000000Z")
    second = genesis("2026-01-01T12:00:01.000000Z")
    with chain.service.sequencer.engine.begin() as conn:
        save_evidence(
            conn, "equivocation", "two headers at 0", first, second, 1_767_268_800_000_000
        )
        conn.execute(
            insert(witness_evidence).values(
                program="railco",
                height=1,
                kind="fork",
                reason="damaged",
                first_hash="a" * 64,
                second_hash="b" * 64,
                first="{not json",
                second=canonical_json(second.to_json()).decode(),
                detected_at=1_767_268_801_000_000,
            )
        )
    path = tmp_path / "evidence.bundle"
    summary = export_bundle(path, chain.url, PROGRAM, chain.key.public_key)
    assert summary.evidence == 2
    with BundleSource(path) as bundle, DatabaseSource(chain.url) as db:
        assert bundle.head.evidence == 2
        assert bundle.evidence() == db.evidence()
        assert drain(bundle) == summary.entries
    evidence_line = json.loads(lines_of(path)[1])
    assert evidence_line["type"] == "coalition/bundle-evidence/v1"
    assert evidence_line["first"] == first.to_json()
    assert json.loads(lines_of(path)[2])["first"] == "{not json"


# --- the chain audit on a bundle --------------------------------------------------------


def test_the_chain_audit_passes_on_a_bundle_and_fails_on_a_changed_entry(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    path, key = sqlite_bundle
    with BundleSource(path) as bundle:
        report = audit_chain(bundle, key.public_key)
    assert report.ok, report.render()
    assert report.entries == BundleSource(path).head.log_size

    lines = lines_of(path)
    n = next(i for i, line in enumerate(lines) if b'"kind":"redeem"' in line)
    entry = json.loads(lines[n])
    entry["amount"] += 1
    lines[n] = canonical_json(entry) + b"\n"
    with BundleSource(rewrite(lines, tmp_path / "changed.bundle")) as bundle:
        report = audit_chain(bundle, key.public_key)
    assert not report.ok
    named = [f for f in report.faults.items if f.entry_id == entry["id"]]
    assert named, report.render()
    assert any(f.kind == "block-root" for f in report.faults.items), report.render()


def test_a_changed_earn_fails_the_audit_at_its_block(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    """An entry changed into another valid entry: only the signed block root says so (a
    bundle has no stored leaf hashes to name it by), at the entry's height."""
    path, key = sqlite_bundle
    lines = lines_of(path)
    n = next(i for i, line in enumerate(lines) if b'"rule":"reward"' in line)
    entry = json.loads(lines[n])
    entry["amount"] = 5000
    lines[n] = canonical_json(entry) + b"\n"
    block = next(
        json.loads(line)["header"]["height"]
        for line in reversed(lines[:n])
        if line.startswith(b'{"cosignatures":')
    )
    with BundleSource(rewrite(lines, tmp_path / "changed.bundle")) as bundle:
        report = audit_chain(bundle, key.public_key)
    assert not report.ok
    assert any(f.kind == "block-root" and f.height == block for f in report.faults.items)


# --- framing ----------------------------------------------------------------------------


def framing_error(path: Path) -> str:
    with pytest.raises(VerificationError) as caught:
        BundleSource(path).check_framing()
    with pytest.raises(VerificationError) as streamed:
        drain(BundleSource(path))
    assert str(caught.value) == str(streamed.value)
    return str(caught.value)


def test_a_truncated_bundle_names_the_missing_end(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    lines = lines_of(sqlite_bundle[0])
    message = framing_error(rewrite(lines[:-1], tmp_path / "t.bundle", fix_end=False))
    assert f"line {len(lines)}:" in message and "truncated" in message
    with BundleSource(tmp_path / "t.bundle") as bundle:  # the paging audit's access
        blocks = bundle.head.blocks
        assert len(bundle.headers(0, blocks)) == blocks
        for _ in range(2):  # a pass that failed fails again, never looks finished
            with pytest.raises(VerificationError, match="truncated"):
                bundle.headers(blocks, 10)
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(b"".join(lines)[:-40])
    assert "truncated" in framing_error(cut)
    half = tmp_path / "half.bundle"
    half.write_bytes(b"".join(lines[:5]) + lines[5][:10])
    assert "line 6:" in framing_error(half)


def test_a_bundle_cut_inside_a_block_names_the_line_cut_or_missing(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    lines = lines_of(sqlite_bundle[0])
    n = first_entry_line(lines)
    assert json.loads(lines[n - 1])["header"]["entry_count"] >= 2  # entry 0 is not the last
    partial = tmp_path / "partial.bundle"
    partial.write_bytes(b"".join(lines[:n]) + lines[n][:10])
    message = framing_error(partial)
    assert f"line {n + 1}:" in message and "inside block 0's entries" in message
    clean = tmp_path / "clean.bundle"
    clean.write_bytes(b"".join(lines[: n + 1]))
    message = framing_error(clean)
    assert f"line {n + 2}:" in message and "inside block 0's entries" in message


def test_an_extra_entry_line_is_named(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    lines = lines_of(sqlite_bundle[0])
    n = first_entry_line(lines)
    lines.insert(n, lines[n])
    message = framing_error(rewrite(lines, tmp_path / "x.bundle"))
    block = json.loads(lines[n - 1])
    after = n + block["header"]["entry_count"] + 1  # the line the next block line should be
    assert f"line {after}:" in message and "extra entry line" in message


def test_a_missing_entry_line_puts_a_block_line_where_an_entry_belongs(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    lines = lines_of(sqlite_bundle[0])
    n = first_entry_line(lines)
    count = json.loads(lines[n - 1])["header"]["entry_count"]
    del lines[n]
    message = framing_error(rewrite(lines, tmp_path / "m.bundle"))
    assert f"line {n + count}:" in message and "block or end line where entry" in message


def test_a_block_line_out_of_place_is_named(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    lines = lines_of(sqlite_bundle[0])
    blocks = [n for n, line in enumerate(lines) if line.startswith(b'{"cosignatures":')]
    a, b = blocks[1], blocks[2]  # swap blocks 1 and 2 with their entries
    swapped = lines[:a] + lines[b : blocks[3]] + lines[a:b] + lines[blocks[3] :]
    message = framing_error(rewrite(swapped, tmp_path / "s.bundle"))
    assert f"line {a + 1}:" in message and "height 2 where 1 belongs" in message


def test_a_changed_end_hash_or_count_is_named(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    lines = lines_of(sqlite_bundle[0])
    end = json.loads(lines[-1])
    for field, value, said in (
        ("sha256", "0" * 64, "sha256"),
        ("entries", end["entries"] + 1, "entries"),
        ("blocks", end["blocks"] - 1, "blocks"),
    ):
        changed = [*lines[:-1], canonical_json({**end, field: value}) + b"\n"]
        message = framing_error(rewrite(changed, tmp_path / "e.bundle", fix_end=False))
        assert f"line {len(lines)}:" in message and said in message
    # a changed byte anywhere before the end line: the hash says so
    damaged = list(lines)
    damaged[3] = damaged[3].replace(b'"at":"2026', b'"at":"2027')
    assert "damaged" in framing_error(rewrite(damaged, tmp_path / "d.bundle", fix_end=False))
    extra = tmp_path / "after.bundle"
    extra.write_bytes(b"".join(lines) + b"{}\n")
    assert f"line {len(lines) + 1}: data after the end line" in framing_error(extra)


def test_a_head_that_does_not_parse_or_disagrees_is_refused(
    sqlite_bundle: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    lines = lines_of(sqlite_bundle[0])
    head = json.loads(lines[0])
    bad = tmp_path / "h.bundle"
    for changed, said in (
        ({**head, "type": "other"}, "head"),
        ({**head, "key_id": "0" * 64}, "key_id"),
        ({**head, "blocks": head["blocks"] + 1}, "line"),
    ):
        rewrite([canonical_json(changed) + b"\n", *lines[1:]], bad)
        with pytest.raises(VerificationError, match=said):
            BundleSource(bad).check_framing()
    bad.write_bytes(b'{"type": "coalition/bundle/v1"}\n')
    with pytest.raises(VerificationError, match="line 1: the head line is not in RFC 8785"):
        BundleSource(bad)
    bad.write_bytes(b"")
    with pytest.raises(VerificationError, match="empty"):
        BundleSource(bad)


def test_a_missing_file_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read the bundle"):
        BundleSource(tmp_path / "nowhere.bundle")
    with pytest.raises(InvalidArgument, match="no database file"):
        export_bundle(
            tmp_path / "x.bundle",
            f"sqlite:///{tmp_path}/none.db",
            PROGRAM,
            SigningKey.generate().public_key,
        )
    assert not (tmp_path / "x.bundle").exists()


def test_a_database_that_cannot_be_framed_is_refused_without_a_file(
    chain: Chain, tmp_path: Path
) -> None:
    with chain.service.sequencer.engine.begin() as conn:
        conn.execute(text("DELETE FROM entries WHERE log_index = 4"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CorruptStore, match="log index 4"):
        export_bundle(out / "x.bundle", chain.url, PROGRAM, chain.key.public_key)
    assert list(out.iterdir()) == []  # no bundle, no temporary file
    with pytest.raises(InvalidArgument, match="not 'other'"):
        write_bundle(io.BytesIO(), chain.service.sequencer.read, "other", chain.key.public_key)


# --- the format reader alone (coalition.verify.bundle_format: lines in memory) ---------


class _MemoryLines:
    """``BundleLines`` over bytes in memory; fails with ``Unreadable`` after ``good``
    lines when asked to (what a damaged gzip stream does to the file reader)."""

    def __init__(self, data: bytes, good: int | None = None) -> None:
        self._lines = io.BytesIO(data).readlines()
        self._at = 0
        self._good = good

    def _take(self, count: int) -> list[bytes]:
        if self._good is not None and self._at + count > self._good:
            raise Unreadable("Error -3 while decompressing data")
        found = self._lines[self._at : self._at + count]
        self._at += len(found)
        return found

    def readline(self) -> bytes:
        found = self._take(1)
        return found[0] if found else b""

    def readlines(self, count: int) -> list[bytes]:
        return self._take(count)


def _all_blocks(reader: BlockReader) -> list[tuple[RawHeader, list[RawEntry]]]:
    found = []
    while (block := reader.next()) is not None:
        found.append(block)
    return found


def test_the_format_reader_frames_lines_from_memory(
    sqlite_bundle: tuple[Path, SigningKey],
) -> None:
    """The verifier reads a bundle from any ``BundleLines`` (no file): the same blocks and
    summary as ``BundleSource``, and a read failure named by its line."""
    data = sqlite_bundle[0].read_bytes()
    frame = Framing("memory.bundle")
    lines = _MemoryLines(data)
    prelude = read_prelude(frame, lines.readline(), lines)
    framed: list[int] = []
    reader = BlockReader(frame, prelude, lines, entries=True, framed=lambda h, _: framed.append(h))
    blocks = _all_blocks(reader)
    with BundleSource(sqlite_bundle[0]) as source:
        assert blocks == list(source.blocks())
        assert reader.summary == source.summary
    assert framed == list(range(prelude.head.blocks))

    broken = _MemoryLines(data, good=4)
    reader = BlockReader(
        frame, read_prelude(frame, broken.readline(), broken), broken, entries=False
    )
    with pytest.raises(VerificationError, match=r"memory\.bundle: line \d+: the file cannot"):
        _all_blocks(reader)
