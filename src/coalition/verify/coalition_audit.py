"""The whole coalition audit: every chain, and everything no single chain can show.

``audit_all`` reads each program's chain once from its source (``audit_chain``, with the
header the auditor pinned last time as ``trusted``), recording the coalition entries and
the headers as it goes (``recording``), then checks across the chains: conversions,
holds and agreements (``cross_chain``), the equivocation and fork evidence the nodes
hold (``evidence``), the witness quorum of every header (``witness_quorum``) and the
settlement statements and their netting (``settlement_audit``). ``PartnersAudit.faults``
lists every fault found with its program, block height, log index and entry id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

from coalition.errors import CoalitionError
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.keys import VerifyKey
from coalition.ledger.rotation import HeaderKeys
from coalition.verify.chain_audit import AuditReport, audit_chain
from coalition.verify.cross_chain import CoalitionReport, audit_coalition, with_heights
from coalition.verify.evidence import EvidenceReport, RawEvidence, check_evidence, evidence_heights
from coalition.verify.located import LocatedFault
from coalition.verify.recording import RecordingSource, recording
from coalition.verify.settlement_audit import SettlementReport, audit_settlement
from coalition.verify.source import (
    ChainSource,
    CosignatureSource,
    EvidenceSource,
    signed_header,
)
from coalition.verify.witness_quorum import QuorumReport, WitnessPolicy, check_quorum
from coalition.verify.workers import AuditWorkers

REWRITE_KINDS = frozenset({"trusted-mismatch", "trusted-missing"})
"""The chain audit's faults about a pinned header that, for a header pinned by the
auditor's state file, mean the program rewrote (or cut) its history since."""
RENDER_LIMIT = 200

Phases = Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]
"""How a caller shows progress: ``with phases(label, total) as advance: advance(n)``
for each phase of the audit (a chain's entries, a program's cosignatures; ``total``
None when unknown). The CLI wires a progress bar; the verifier itself prints nothing."""


@contextmanager
def silent(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Phases that show nothing (the default)."""
    yield lambda n: None


@dataclass(slots=True)
class PartnersAudit:
    """``audit_all``'s result: each chain's audit, the cross-chain reconciliation, the
    evidence the nodes hold, each program's witnessing and the settlement. Sound only
    if ``ok``; ``faults`` lists every fault with its place."""

    chains: dict[str, AuditReport]
    cross_chain: CoalitionReport
    evidence: EvidenceReport
    witnesses: dict[str, QuorumReport] = field(default_factory=dict)
    settlement: SettlementReport = field(default_factory=SettlementReport)
    notes: list[str] = field(default_factory=list)
    """Things worth knowing that are not faults (a source announcing another key)."""

    @property
    def faults(self) -> list[LocatedFault]:
        found: list[LocatedFault] = []
        for program, report in self.chains.items():
            found += [
                LocatedFault(f.kind, program, f.message, f.height, f.log_index, f.entry_id)
                for f in report.faults.items
            ]
        found += self.cross_chain.faults
        found += self.evidence.faults
        for quorum in self.witnesses.values():
            found += quorum.faults
        found += self.settlement.faults
        return found

    @property
    def ok(self) -> bool:
        chains_ok = all(report.ok for report in self.chains.values())
        witnessed = all(q.ok for q in self.witnesses.values())
        others = self.cross_chain.ok and self.evidence.ok and self.settlement.ok
        return chains_ok and witnessed and others

    def sound_programs(self) -> list[str]:
        """Programs whose chain audited sound and that no fault names."""
        named = {f.program for f in self.faults}
        return [p for p, r in self.chains.items() if r.ok and p not in named]

    def render(self) -> str:
        parts = [report.render() for report in self.chains.values()]
        parts += [self.cross_chain.render(), self.evidence.render()]
        parts += [quorum.render() for quorum in self.witnesses.values()]
        parts.append(self.settlement.render())
        parts += [f"Note: {note}" for note in self.notes]
        faults = self.faults
        verdict = "OK" if self.ok else f"FAILED ({len(faults):,} faults)"
        parts.append(f"Coalition audit of {', '.join(self.chains) or 'no programs'}: {verdict}")
        parts += [f"  {fault}" for fault in faults[:RENDER_LIMIT]]
        if len(faults) > RENDER_LIMIT:
            parts.append(f"  ... and {len(faults) - RENDER_LIMIT:,} more faults (see --json)")
        return "\n".join(parts)

    def to_json(self) -> JsonObject:
        faults = self.faults
        witnesses: dict[str, JsonValue] = {p: q.to_json() for p, q in self.witnesses.items()}
        notes: list[JsonValue] = list(self.notes)
        return {
            "type": "coalition/coalition-audit/v1",
            "ok": self.ok,
            "chains": {program: report.to_json() for program, report in self.chains.items()},
            "cross_chain": self.cross_chain.to_json(),
            "evidence": self.evidence.to_json(),
            "witnesses": witnesses,
            "settlement": self.settlement.to_json(),
            "notes": notes,
            "fault_count": len(faults),
            "faults": [f.to_json() for f in faults],
        }


def _held_evidence(sources: Mapping[str, ChainSource]) -> dict[str, list[RawEvidence] | None]:
    """The evidence each node holds, from the sources that offer it (None: no offer)."""
    return {
        holder: source.evidence() if isinstance(source, EvidenceSource) else None
        for holder, source in sources.items()
    }


def total_entries(source: ChainSource) -> int | None:
    """The newest header's log size (a progress bar's total), None when unknown."""
    latest = source.latest_header()
    if latest is None:
        return None
    try:
        return signed_header(latest).header.log_size
    except CoalitionError:
        return None


def _name_rewrites(report: AuditReport, program: str) -> None:
    """Rename the chain audit's pinned-header faults to ``history-rewritten``."""
    items = report.faults.items
    for n, fault in enumerate(items):
        if fault.kind in REWRITE_KINDS:
            message = f"{program} changed its history since the last audit: {fault.message}"
            items[n] = replace(fault, kind="history-rewritten", message=message)


def _key_note(program: str, source: ChainSource, key: VerifyKey) -> str | None:
    try:
        announced = source.public_key()
    except CoalitionError:
        return None
    if announced is None or announced.raw == key.raw:
        return None
    return (
        f"{program}'s source announces key {announced.key_id[:16]}..., the manifest's is "
        f"{key.key_id[:16]}...: verified with the manifest's"
    )


def _audit_one(
    program: str,
    source: ChainSource,
    key: VerifyKey,
    heights: frozenset[int],
    trusted: SignedHeader | None,
    phases: Phases,
    parallel: AuditWorkers | None = None,
) -> tuple[AuditReport, RecordingSource]:
    recorder = recording(source, heights)
    with phases(f"audit {program}", total_entries(source)) as advance:
        report = audit_chain(
            recorder, key, program=program, trusted=trusted, progress=advance, parallel=parallel
        )
    if trusted is not None:
        _name_rewrites(report, program)
    return report, recorder


def _witnessing(
    program: str,
    source: ChainSource,
    recorder: RecordingSource,
    key_of: Callable[[str], VerifyKey],
    policy: WitnessPolicy,
    phases: Phases,
) -> QuorumReport:
    headers = recorder.headers_seen
    end = max(headers, default=-1) + 1
    lines = source.cosignatures(0, end) if isinstance(source, CosignatureSource) else None
    with phases(f"cosignatures {program}", len(headers)) as advance:
        return check_quorum(program, headers, lines, key_of, policy, advance)


def audit_all(
    sources: Mapping[str, ChainSource],
    key_of: Callable[[str], VerifyKey],
    *,
    pending_before: datetime | None = None,
    trusted: Mapping[str, SignedHeader] | None = None,
    witnessing: WitnessPolicy | None = None,
    progress: Phases = silent,
    parallel: AuditWorkers | None = None,
) -> PartnersAudit:
    """Audit each program's chain from its source and everything across them.

    ``trusted`` pins, per program, a header its chain must still hold unchanged (the
    auditor state file's): a difference is a ``history-rewritten`` fault. ``witnessing``
    (None: not checked) is the manifest's quorum and the cut-off before which a header
    must be witnessed. ``progress`` is told each phase (see ``Phases``). ``parallel``:
    worker processes for each chain's audit (``audit_chain``). The sources are read once
    (cosignatures apart; a chain the split replay cannot decide, twice); the caller
    closes them.
    """
    held = _held_evidence(sources)
    heights: dict[str, set[int]] = {}
    for pieces in held.values():
        for piece in pieces or ():
            heights.setdefault(piece.program, set()).update(evidence_heights(piece))
    reports: dict[str, AuditReport] = {}
    recorders: dict[str, RecordingSource] = {}
    notes: list[str] = []
    for program, source in sources.items():
        key = key_of(program)
        note = _key_note(program, source, key)
        if note is not None:
            notes.append(note)
        pinned = (trusted or {}).get(program)
        reports[program], recorders[program] = _audit_one(
            program, source, key, frozenset(heights.get(program, ())), pinned, progress, parallel
        )

    def height_of(program: str, log_index: int | None) -> int | None:
        recorder = recorders.get(program)
        return None if recorder is None else recorder.block_index.height_of(log_index)

    chains = {program: recorder.entries for program, recorder in recorders.items()}
    cross = audit_coalition(chains, key_of, pending_before=pending_before)
    own_headers = {program: recorder.headers_at for program, recorder in recorders.items()}
    evidence = check_evidence(held, _header_keys(reports, key_of), own_headers)
    settlement = audit_settlement(chains, key_of)
    settlement.faults = [
        f if f.log_index is None else replace(f, height=height_of(f.program, f.log_index))
        for f in settlement.faults
    ]
    witnesses: dict[str, QuorumReport] = {}
    if witnessing is not None:
        for program, source in sources.items():
            witnesses[program] = _witnessing(
                program, source, recorders[program], key_of, witnessing, progress
            )
    return PartnersAudit(
        reports, with_heights(cross, height_of), evidence, witnesses, settlement, notes
    )


def _header_keys(
    reports: Mapping[str, AuditReport], key_of: Callable[[str], VerifyKey]
) -> Callable[[str], HeaderKeys]:
    """Each program's header keys: its key schedule as its chain audit found it, else
    (a program not audited) its manifest key."""

    def keys(program: str) -> HeaderKeys:
        report = reports.get(program)
        if report is not None and report.key_schedule is not None:
            return report.key_schedule
        return key_of(program)

    return keys


def audit_partners(
    sources: Mapping[str, ChainSource],
    key_of: Callable[[str], VerifyKey],
    *,
    pending_before: datetime | None = None,
    progress: Phases = silent,
) -> tuple[dict[str, AuditReport], CoalitionReport]:
    """``audit_all`` as (chain reports, cross-chain report), the evidence faults appended
    to the cross-chain report's faults (so it is not ok while any evidence stands)."""
    found = audit_all(sources, key_of, pending_before=pending_before, progress=progress)
    cross = found.cross_chain
    return found.chains, replace(cross, faults=[*cross.faults, *found.evidence.faults])
