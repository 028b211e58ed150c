"""The witness's tables: partners' verified headers, cosignatures and fault evidence.

``witness_headers`` holds, per partner program, the chain of signed headers this node
verified (signature, link, consistency), dense from height 0, so the follower resumes at
its highest row after a restart. ``witness_cosignatures`` holds both the cosignatures
partners sent for our own headers and the ones we made for theirs (``witness`` names the
cosigner). ``witness_gossip`` keeps signed headers partners forwarded, so a header we
verify later is compared with them. ``witness_evidence`` keeps both signed headers of an
equivocation or a fork, forever. Times are integer microseconds since the Unix epoch.

Storage contract: every function runs on the caller's ``Connection``. A program's headers
are unique by height, and one cosigner cosigns a header once (``save_cosignature``
returns False for a repeat); gossip is kept once per distinct header, until the header at
its height is verified. Evidence is unique per program and pair of headers and is never
changed or deleted. ``witness_key_rotations`` keeps the ``key-rotation`` entries found in
the blocks of the verified headers (one per program and epoch, written in the transaction
that stores the header of their block), so the follower knows the key in force for a
partner's next header after a restart without reading its chain again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Row,
    Text,
    UniqueConstraint,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlmodel import Field, SQLModel

from coalition.errors import CorruptStore, InvalidArgument
from coalition.ledger.blocks import BlockHeader, SignedHeader
from coalition.ledger.canonical import canonical_json
from coalition.store.columns import RowId, stored_object
from coalition.store.prepared import Statement, run


class WitnessHeaderRow(SQLModel, table=True):
    """A partner's header this node verified and cosigned."""

    __tablename__ = "witness_headers"

    program: str = Field(primary_key=True, max_length=64)
    height: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    header_hash: str = Field(max_length=64)
    header: str = Field(sa_column=Column(Text, nullable=False))
    signature: str = Field(max_length=128)
    verified_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class WitnessCosignatureRow(SQLModel, table=True):
    """One cosigner's C2SP cosignature/v1 line over one program's header at a height."""

    __tablename__ = "witness_cosignatures"

    program: str = Field(primary_key=True, max_length=64)
    height: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    witness: str = Field(primary_key=True, max_length=64)
    header_hash: str = Field(max_length=64)
    cosignature: str = Field(sa_column=Column(Text, nullable=False))
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))
    delivered: bool = True
    """For the cosignatures we made: whether the program's node acknowledged it."""


class WitnessGossipRow(SQLModel, table=True):
    """A signed header a partner forwarded (kind ``header-gossip``)."""

    __tablename__ = "witness_gossip"

    program: str = Field(primary_key=True, max_length=64)
    height: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    header_hash: str = Field(primary_key=True, max_length=64)
    header: str = Field(sa_column=Column(Text, nullable=False))
    signature: str = Field(max_length=128)
    sender: str = Field(max_length=64)
    received_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class WitnessEvidenceRow(SQLModel, table=True):
    """Proof that a program misbehaved: two signed headers that cannot both be honest.

    ``kind`` is ``equivocation`` (two different signed headers at one height) or ``fork``
    (a signed header that does not extend the last one verified: bad link or
    consistency proof). ``first`` and ``second`` are signed header JSON documents.
    """

    __tablename__ = "witness_evidence"
    __table_args__ = (
        UniqueConstraint("program", "first_hash", "second_hash", name="uq_witness_evidence"),
    )

    id: int | None = Field(default=None, sa_column=Column(RowId, primary_key=True))
    program: str = Field(max_length=64, index=True)
    height: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str = Field(max_length=16)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    first_hash: str = Field(max_length=64)
    second_hash: str = Field(max_length=64)
    first: str = Field(sa_column=Column(Text, nullable=False))
    second: str = Field(sa_column=Column(Text, nullable=False))
    detected_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class WitnessKeyRotationRow(SQLModel, table=True):
    """A partner's ``key-rotation`` entry (canonical JSON) at ``log_index``, found in the
    block of a header this node verified (``node.features.witness``)."""

    __tablename__ = "witness_key_rotations"

    program: str = Field(primary_key=True, max_length=64)
    epoch: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    log_index: int = Field(sa_column=Column(BigInteger, nullable=False))
    entry: str = Field(sa_column=Column(Text, nullable=False))


witness_headers = WitnessHeaderRow.__table__  # type: ignore[attr-defined]
witness_cosignatures = WitnessCosignatureRow.__table__  # type: ignore[attr-defined]
witness_gossip = WitnessGossipRow.__table__  # type: ignore[attr-defined]
witness_evidence = WitnessEvidenceRow.__table__  # type: ignore[attr-defined]
witness_key_rotations = WitnessKeyRotationRow.__table__  # type: ignore[attr-defined]


# --- reads and writes, on a caller's connection --------------------------------------------


def _signed(header: str, signature: str) -> SignedHeader:
    try:
        return SignedHeader(BlockHeader.from_json(stored_object(header, "header")), signature)
    except InvalidArgument as exc:
        raise CorruptStore(f"a stored witnessed header does not parse: {exc}") from None


def header_at(conn: Connection, program: str, height: int) -> SignedHeader | None:
    """The verified header of ``program`` at ``height``, if stored."""
    row = conn.execute(
        select(witness_headers.c.header, witness_headers.c.signature).where(
            witness_headers.c.program == program, witness_headers.c.height == height
        )
    ).first()
    return None if row is None else _signed(row.header, row.signature)


def last_header(conn: Connection, program: str) -> SignedHeader | None:
    """The highest verified header of ``program``, if any."""
    row = conn.execute(
        select(witness_headers.c.header, witness_headers.c.signature)
        .where(witness_headers.c.program == program)
        .order_by(witness_headers.c.height.desc())
        .limit(1)
    ).first()
    return None if row is None else _signed(row.header, row.signature)


def insert_header(conn: Connection, signed: SignedHeader, verified_at: int) -> None:
    h = signed.header
    conn.execute(
        insert(witness_headers).values(
            program=h.program,
            height=h.height,
            header_hash=h.hash(),
            header=canonical_json(h.to_json()).decode(),
            signature=signed.signature,
            verified_at=verified_at,
        )
    )


def gossip_at(conn: Connection, program: str, height: int) -> list[SignedHeader]:
    """Every distinct signed header partners forwarded for ``program`` at ``height``."""
    rows = conn.execute(
        select(witness_gossip.c.header, witness_gossip.c.signature).where(
            witness_gossip.c.program == program, witness_gossip.c.height == height
        )
    ).all()
    return [_signed(row.header, row.signature) for row in rows]


def insert_gossip(conn: Connection, signed: SignedHeader, sender: str, received_at: int) -> None:
    """Keep a forwarded header (once per distinct header)."""
    h = signed.header
    exists = conn.execute(
        select(witness_gossip.c.height).where(
            witness_gossip.c.program == h.program,
            witness_gossip.c.height == h.height,
            witness_gossip.c.header_hash == h.hash(),
        )
    ).first()
    if exists is None:
        conn.execute(
            insert(witness_gossip).values(
                program=h.program,
                height=h.height,
                header_hash=h.hash(),
                header=canonical_json(h.to_json()).decode(),
                signature=signed.signature,
                sender=sender,
                received_at=received_at,
            )
        )


def drop_gossip(conn: Connection, program: str, height: int) -> None:
    """Forget forwarded headers at a height once the header there is verified."""
    conn.execute(
        delete(witness_gossip).where(
            witness_gossip.c.program == program, witness_gossip.c.height == height
        )
    )


@dataclass(frozen=True, slots=True)
class StoredCosignature:
    program: str
    height: int
    witness: str
    header_hash: str
    cosignature: str
    timestamp: int
    delivered: bool


def cosignatures(conn: Connection, program: str, height: int) -> list[StoredCosignature]:
    """The cosignatures stored for ``program``'s header at ``height``, by witness name."""
    rows = conn.execute(
        select(witness_cosignatures)
        .where(witness_cosignatures.c.program == program, witness_cosignatures.c.height == height)
        .order_by(witness_cosignatures.c.witness)
    ).all()
    return [StoredCosignature(**row._mapping) for row in rows]


def cosignatures_between(
    conn: Connection, program: str, start: int, end: int
) -> dict[int, list[StoredCosignature]]:
    """``cosignatures`` of ``program``'s headers at heights ``start`` .. ``end - 1``, by
    height (a height without any is absent): one range scan of the primary key."""
    c = witness_cosignatures.c
    query = (
        select(witness_cosignatures)
        .where(c.program == program, c.height >= start, c.height < end)
        .order_by(c.height, c.witness)
    )
    found: dict[int, list[StoredCosignature]] = {}
    for row in conn.execute(query):
        found.setdefault(row.height, []).append(StoredCosignature(**row._mapping))
    return found


def cosignature_lines(conn: Connection, program: str, start: int, end: int) -> dict[int, list[str]]:
    """The cosignature lines stored for ``program``'s headers at heights ``start`` ..
    ``end - 1``, sorted, by height (a height without any is absent)."""
    c = witness_cosignatures.c
    query = select(c.height, c.cosignature).where(
        c.program == program, c.height >= start, c.height < end
    )
    found: dict[int, list[str]] = {}
    for height, line in conn.execute(query):
        found.setdefault(height, []).append(line)
    return {height: sorted(lines) for height, lines in sorted(found.items())}


def undelivered(conn: Connection, program: str, witness: str) -> list[StoredCosignature]:
    """Cosignatures ``witness`` made for ``program`` that its node has not acknowledged."""
    rows = conn.execute(
        select(witness_cosignatures)
        .where(
            witness_cosignatures.c.program == program,
            witness_cosignatures.c.witness == witness,
            witness_cosignatures.c.delivered == False,  # noqa: E712  (SQL, not Python)
        )
        .order_by(witness_cosignatures.c.height)
    ).all()
    return [StoredCosignature(**row._mapping) for row in rows]


_COSIGNED = Statement(
    "SELECT 1 FROM witness_cosignatures"
    " WHERE program = :program AND height = :height AND witness = :witness"
)
_INSERT_COSIGNATURE = Statement(
    "INSERT INTO witness_cosignatures"
    " (program, height, witness, header_hash, cosignature, timestamp, delivered)"
    " VALUES (:program, :height, :witness, :header_hash, :cosignature, :timestamp, :delivered)"
)


def save_cosignature(conn: Connection, cosig: StoredCosignature) -> bool:
    """Store a cosignature unless ``witness`` already cosigned that header; True if new.
    (Prepared statements: a node stores one per block and partner, on the write path.)"""
    row = asdict(cosig)
    if run(conn, _COSIGNED, row):
        return False
    run(conn, _INSERT_COSIGNATURE, row)
    return True


def mark_delivered(conn: Connection, program: str, height: int, witness: str) -> None:
    conn.execute(
        update(witness_cosignatures)
        .where(
            witness_cosignatures.c.program == program,
            witness_cosignatures.c.height == height,
            witness_cosignatures.c.witness == witness,
        )
        .values(delivered=True)
    )


@dataclass(frozen=True, slots=True)
class StoredEvidence:
    id: int
    program: str
    height: int
    kind: str
    reason: str
    first: SignedHeader
    second: SignedHeader
    detected_at: int


def save_evidence(
    conn: Connection,
    kind: str,
    reason: str,
    first: SignedHeader,
    second: SignedHeader,
    detected_at: int,
) -> bool:
    """Store evidence against ``second``'s program (once per pair of headers); True if new."""
    program, a, b = second.header.program, first.header.hash(), second.header.hash()
    exists = conn.execute(
        select(witness_evidence.c.id).where(
            witness_evidence.c.program == program,
            or_(
                and_(witness_evidence.c.first_hash == a, witness_evidence.c.second_hash == b),
                and_(witness_evidence.c.first_hash == b, witness_evidence.c.second_hash == a),
            ),
        )
    ).first()
    if exists is not None:
        return False
    conn.execute(
        insert(witness_evidence).values(
            program=program,
            height=second.header.height,
            kind=kind,
            reason=reason,
            first_hash=a,
            second_hash=b,
            first=canonical_json(first.to_json()).decode(),
            second=canonical_json(second.to_json()).decode(),
            detected_at=detected_at,
        )
    )
    return True


def evidence_rows(
    conn: Connection,
    program: str | None = None,
    limit: int | None = None,
    after: int | None = None,
) -> Sequence[Row[Any]]:
    """The ``witness_evidence`` rows as stored (headers as text; of one program when
    given), oldest first: for readers that must carry a header that does not parse.
    With ``limit``, at most that many, those with an id above ``after``: a range scan of
    the key, the page's cost however much evidence is stored."""
    query = select(witness_evidence).order_by(witness_evidence.c.id)
    if program is not None:
        query = query.where(witness_evidence.c.program == program)
    if after is not None:
        query = query.where(witness_evidence.c.id > after)
    if limit is not None:
        query = query.limit(limit)
    return conn.execute(query).all()


def evidence(
    conn: Connection,
    program: str | None = None,
    limit: int | None = None,
    after: int | None = None,
) -> list[StoredEvidence]:
    """Stored evidence (of one program when given), oldest first; ``limit`` and ``after``
    as ``evidence_rows``."""
    return [
        StoredEvidence(
            id=row.id,
            program=row.program,
            height=row.height,
            kind=row.kind,
            reason=row.reason,
            first=_signed_doc(row.first),
            second=_signed_doc(row.second),
            detected_at=row.detected_at,
        )
        for row in evidence_rows(conn, program, limit, after)
    ]


def _signed_doc(text: str) -> SignedHeader:
    try:
        return SignedHeader.from_json(stored_object(text, "signed header"))
    except InvalidArgument as exc:
        raise CorruptStore(f"stored evidence does not parse: {exc}") from None


def programs_with_evidence(conn: Connection) -> set[str]:
    return set(conn.execute(select(witness_evidence.c.program).distinct()).scalars())


def key_rotations(conn: Connection, program: str) -> list[tuple[int, bytes]]:
    """(log index, entry bytes) of every stored rotation of ``program``, by epoch."""
    query = (
        select(witness_key_rotations.c.log_index, witness_key_rotations.c.entry)
        .where(witness_key_rotations.c.program == program)
        .order_by(witness_key_rotations.c.epoch)
    )
    return [(row.log_index, row.entry.encode()) for row in conn.execute(query)]


def insert_key_rotation(
    conn: Connection, program: str, epoch: int, log_index: int, entry: bytes
) -> None:
    conn.execute(
        insert(witness_key_rotations).values(
            program=program, epoch=epoch, log_index=log_index, entry=entry.decode()
        )
    )
