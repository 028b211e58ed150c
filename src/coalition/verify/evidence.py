"""Verify the equivocation and fork evidence the nodes hold, from the signed headers alone.

A witness that catches a partner signing two histories stores both signed headers
(``node/features/witness.py``, table ``witness_evidence``). The auditor takes nothing from the
holder but those two documents: each piece is proven only if both headers parse, are of
the accused program and verify with that program's manifest key, and show what an honest
program never signs:

- an equivocation: two different headers at one height;
- a fork: a header at height ``h + 1`` that does not continue the header at ``h``
  (``prev_hash``, ``first_index`` or ``sealed_at``), or a header inconsistent with itself
  (``log_size != first_index + entry_count``, a height-0 header that is no genesis);
- or, when the audit read the accused's own chain, an evidence header that differs from
  the chain's signed header at the same height (an equivocation too).

Proven evidence is a fault of the accused program; evidence that does not prove anything
is a ``bogus-evidence`` fault of the node holding it (accusing a partner falsely is a
fault too). A fork found only through a failing consistency proof, whose headers agree
with the accused's chain, is not provable (the proof is not stored): it is reported
against the holder, with that reason. Pure: no database, no network.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from coalition.errors import CoalitionError, VerificationError
from coalition.ledger.blocks import (
    SignedHeader,
    header_problem,
    link_problem,
)
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.ledger.rotation import HeaderKeys, header_key
from coalition.verify.cross_chain import CrossChainFault

EQUIVOCATION = "equivocation"
FORK = "fork"
BOGUS = "bogus-evidence"
KINDS = frozenset({EQUIVOCATION, FORK})

KeyOf = Callable[[str], HeaderKeys]
"""A program's header keys: its manifest key, or its key schedule as the audit of its
chain found it (``ledger.rotation``), so a header after a rotation is checked with the
key in force for it."""


@dataclass(frozen=True, slots=True)
class RawEvidence:
    """One piece of evidence as a node holds it; ``first`` and ``second`` are the signed
    header JSON texts, unparsed (the auditor parses them itself)."""

    id: int
    program: str
    height: int
    kind: str
    reason: str
    first: str
    second: str
    detected_at: str | None = None


@dataclass(frozen=True, slots=True)
class ProvenEvidence:
    """What a piece of evidence proves: ``program`` signed two incompatible headers.
    ``kind`` is what the headers show (it may differ from what the holder called it)."""

    program: str
    height: int
    kind: str
    why: str
    first: SignedHeader
    second: SignedHeader

    @property
    def pair(self) -> tuple[str, str]:
        """The two header hashes, sorted: the same proof held by two nodes is one fault."""
        a, b = self.first.header.hash(), self.second.header.hash()
        return (a, b) if a <= b else (b, a)


def _parse(text: str, which: str) -> SignedHeader:
    try:
        return SignedHeader.from_json(parse_json(text.encode()))
    except CoalitionError as exc:
        raise VerificationError(f"the {which} signed header does not parse: {exc}") from None


def _proof(first: SignedHeader, second: SignedHeader) -> tuple[str, str] | None:
    """(kind, why) if the two signed headers are incompatible, else None."""
    a, b = first.header, second.header
    same = hmac.compare_digest(a.hash(), b.hash())
    if a.height == b.height and not same:
        return EQUIVOCATION, (
            f"signed two different headers at height {a.height} "
            f"({a.hash()[:16]}... and {b.hash()[:16]}...)"
        )
    for h in (a,) if same else (a, b):
        why = header_problem(h)
        if why is not None:
            return FORK, f"signed an impossible header: {why}"
    low, high = (a, b) if a.height < b.height else (b, a)
    if high.height == low.height + 1:
        why = link_problem(low, high)
        if why is not None:
            return FORK, f"signed two headers that are not one chain: {why}"
    return None


def _against_chain(
    pieces: tuple[SignedHeader, SignedHeader], chain: Mapping[int, SignedHeader], key: HeaderKeys
) -> tuple[SignedHeader, SignedHeader] | None:
    """An evidence header and a different header the program signed at the same height
    in its own chain (as the audit read it), if there is one."""
    for signed in pieces:
        own = chain.get(signed.header.height)
        if own is None or hmac.compare_digest(own.header.hash(), signed.header.hash()):
            continue
        try:
            own.verify(header_key(key, own.header))
        except CoalitionError:
            continue  # the chain audit reports it
        return own, signed
    return None


def verify_evidence(
    evidence: RawEvidence, key_of: KeyOf, chain: Mapping[int, SignedHeader] | None = None
) -> ProvenEvidence:
    """Check one piece of evidence independently; raises VerificationError saying why it
    proves nothing. ``key_of`` is the manifest's ``public_key``, or the accused's key
    schedule (``KeyOf``).

    ``chain`` (height -> signed header) is the accused's own chain as the audit read it,
    at the evidence's heights: two headers that prove nothing together (a fork found by a
    consistency proof) still prove an equivocation if one differs from the chain's header
    at its height.
    """
    if evidence.kind not in KINDS:
        raise VerificationError(f"unknown evidence kind {evidence.kind!r}")
    first, second = _parse(evidence.first, "first"), _parse(evidence.second, "second")
    accused = evidence.program
    for which, signed in (("first", first), ("second", second)):
        if signed.header.program != accused:
            raise VerificationError(
                f"the {which} header is of program {signed.header.program!r}, not {accused!r}"
            )
    try:
        key = key_of(accused)
    except CoalitionError:
        raise VerificationError(f"{accused!r} is not a partner in the manifest") from None
    for which, signed in (("first", first), ("second", second)):
        try:
            signed.verify(header_key(key, signed.header))
        except CoalitionError:
            raise VerificationError(
                f"the {which} header is not signed by {accused}'s key in force for it"
            ) from None
    if evidence.height != second.header.height:
        raise VerificationError(
            f"it names height {evidence.height}, its second header is at {second.header.height}"
        )
    found = _proof(first, second)
    if found is not None:
        return ProvenEvidence(accused, evidence.height, *found, first, second)
    contradicted = _against_chain((first, second), chain or {}, key)
    if contradicted is not None:
        own, held = contradicted
        kind, why = (
            EQUIVOCATION,
            (
                f"signed two different headers at height {held.header.height}: "
                f"{held.header.hash()[:16]}... in the evidence, {own.header.hash()[:16]}... "
                "in its own chain"
            ),
        )
        return ProvenEvidence(accused, held.header.height, kind, why, own, held)
    if hmac.compare_digest(first.header.hash(), second.header.hash()):
        raise VerificationError("both headers are the same header")
    raise VerificationError(
        "the two headers are compatible: they alone prove no equivocation or fork "
        "(a fork found by a failing consistency proof cannot be shown without it), and "
        "neither differs from the program's own chain"
    )


@dataclass(frozen=True, slots=True)
class EvidenceFault(CrossChainFault):
    """A proven equivocation or fork (``program`` is the accused), or ``bogus-evidence``
    (``program`` is the holder, ``accused`` whom it accuses). ``holders`` are the nodes
    holding this evidence; ``evidence_ids`` their row ids, in the same order."""

    accused: str | None = None
    holders: tuple[str, ...] = ()
    evidence_ids: tuple[int, ...] = ()
    headers: tuple[str, ...] = ()
    """The two header hashes of a proven piece."""

    def to_json(self) -> JsonObject:
        out = CrossChainFault.to_json(self)
        if self.accused is not None:
            out["accused"] = self.accused
        out["holders"] = list(self.holders)
        out["evidence_ids"] = list(self.evidence_ids)
        if self.headers:
            out["headers"] = list(self.headers)
        return out

    def __str__(self) -> str:
        where = [self.program]
        if self.height is not None:
            where.append(f"height {self.height}")
        held = ", ".join(f"{h} #{i}" for h, i in zip(self.holders, self.evidence_ids, strict=True))
        where.append(f"held by {held}")
        return f"[{self.kind}] ({', '.join(where)}) {self.message}"


@dataclass(slots=True)
class EvidenceReport:
    """What ``check_evidence`` found. ``held`` is how many pieces each node holds (None:
    the node offers none: no witness table or service)."""

    held: dict[str, int | None] = field(default_factory=dict)
    proven: list[EvidenceFault] = field(default_factory=list)
    bogus: list[EvidenceFault] = field(default_factory=list)

    @property
    def faults(self) -> list[EvidenceFault]:
        return [*self.proven, *self.bogus]

    @property
    def ok(self) -> bool:
        return not self.proven and not self.bogus

    def to_json(self) -> JsonObject:
        faults = self.faults
        return {
            "type": "coalition/evidence-report/v1",
            "ok": self.ok,
            "held": dict(self.held),
            "fault_count": len(faults),
            "faults": [f.to_json() for f in faults],
        }

    def render(self) -> str:
        faults = self.faults
        verdict = "OK" if self.ok else f"FAILED ({len(faults):,} faults)"
        pieces = sum(n for n in self.held.values() if n is not None)
        lines = [f"Equivocation and fork evidence held by the nodes: {verdict}"]
        for holder, count in self.held.items():
            said = (
                "offers no evidence (no witness)" if count is None else f"holds {count:,} piece(s)"
            )
            lines.append(f"  {holder:<13} {said}")
        lines.append(f"  {len(self.proven):,} proven, {len(self.bogus):,} bogus of {pieces:,}")
        if faults:
            lines.append("Faults:")
            lines.extend(f"  {fault}" for fault in faults)
        return "\n".join(lines)


def evidence_heights(evidence: RawEvidence) -> set[int]:
    """The heights an evidence piece is about (its headers' and the one it names): where
    ``verify_evidence`` looks in the accused's chain."""
    found = {evidence.height}
    for text in (evidence.first, evidence.second):
        with suppress(VerificationError):  # bogus: verify_evidence says why
            found.add(_parse(text, "").header.height)
    return found


def check_evidence(
    held: Mapping[str, Sequence[RawEvidence] | None],
    key_of: KeyOf,
    chains: Mapping[str, Mapping[int, SignedHeader]] | None = None,
) -> EvidenceReport:
    """Verify every piece each node holds (holder program -> its evidence, None if it
    offers none); ``chains`` gives each accused program's own headers at the evidence's
    heights (``evidence_heights``). A proof held by several nodes is one fault listing
    every holder."""
    report = EvidenceReport(held={h: None if e is None else len(e) for h, e in held.items()})
    proven: dict[tuple[str, str, str], tuple[ProvenEvidence, list[tuple[str, int]]]] = {}
    for holder, pieces in held.items():
        for piece in pieces or ():
            try:
                proof = verify_evidence(piece, key_of, (chains or {}).get(piece.program))
            except VerificationError as exc:
                report.bogus.append(
                    EvidenceFault(
                        kind=BOGUS,
                        program=holder,
                        message=f"holds evidence ({piece.kind}) against {piece.program} at "
                        f"height {piece.height} that does not verify: {exc}",
                        height=piece.height,
                        accused=piece.program,
                        holders=(holder,),
                        evidence_ids=(piece.id,),
                    )
                )
                continue
            slot = proven.setdefault((proof.program, *proof.pair), (proof, []))
            slot[1].append((holder, piece.id))
    for proof, holders in proven.values():
        report.proven.append(
            EvidenceFault(
                kind=proof.kind,
                program=proof.program,
                message=f"{proof.program} {proof.why}",
                height=proof.height,
                accused=proof.program,
                holders=tuple(h for h, _ in holders),
                evidence_ids=tuple(i for _, i in holders),
                headers=proof.pair,
            )
        )
    return report
