"""Witness quorum: every header of a program cosigned by enough other partners.

Each cosignature line a program's node (or bundle) carries is verified by the auditor
alone: C2SP ``tlog-cosignature/v1`` by ``coalition/<witness>/witness`` with the witness's
manifest key over ``ledger.note.checkpoint_of(header)``. A line that does not verify
(forged, or over another checkpoint: the witness saw a different history) is a fault
``cosignature-invalid`` even when the quorum is met. A header short of
``quorum`` valid cosignatures from distinct other partners is ``not-witnessed`` once it
is older than the grace period, else only reported as pending. A header sealed later
than the auditor's clock allows (``sealed-in-future``) is a fault: otherwise a node could
keep its headers "pending" for ever by dating them ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from coalition.errors import CoalitionError
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import format_time, parse_time
from coalition.ledger.keys import VerifyKey
from coalition.ledger.note import (
    checkpoint_of,
    parse_signature_line,
    verify_cosignature,
    witness_name,
    witness_of,
)
from coalition.verify.located import LocatedFault


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """What the quorum check needs: the manifest's quorum and partners, the time before
    which a header must be witnessed (older ones short of quorum are faults) and the
    latest seal time the auditor's clock accepts (later is ``sealed-in-future``)."""

    quorum: int
    partners: Collection[str]
    witnessed_before: datetime
    sealed_by: datetime | None = None


@dataclass(slots=True)
class QuorumReport:
    """One program's witnessing: headers checked, witnessed, pending, and faults."""

    program: str
    quorum: int
    headers: int = 0
    witnessed: int = 0
    pending: list[int] = field(default_factory=list)
    offered: bool = True
    """False when the source offers no cosignatures (every header counts as unwitnessed)."""
    faults: list[LocatedFault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_json(self) -> JsonObject:
        return {
            "program": self.program,
            "ok": self.ok,
            "quorum": self.quorum,
            "headers": self.headers,
            "witnessed": self.witnessed,
            "pending": list(self.pending),
            "cosignatures_offered": self.offered,
            "fault_count": len(self.faults),
        }

    def render(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.faults):,} faults)"
        pending = ""
        if self.pending:
            shown = ", ".join(str(h) for h in self.pending[:10])
            more = " ..." if len(self.pending) > 10 else ""
            pending = f", {len(self.pending):,} pending (heights {shown}{more})"
        offered = "" if self.offered else " (the source offers no cosignatures)"
        return (
            f"Witnessing of {self.program} (quorum {self.quorum}): {verdict}: "
            f"{self.witnessed:,} of {self.headers:,} headers witnessed{pending}{offered}"
        )


def cosigner_of(line: str) -> str | None:
    """The program a cosignature line names (``coalition/<program>/witness``), None when
    the line does not parse or names no witness."""
    try:
        return witness_of(parse_signature_line(line).name)
    except CoalitionError:
        return None


def check_quorum(
    program: str,
    headers: Mapping[int, SignedHeader],
    cosignatures: Mapping[int, list[str]] | None,
    key_of: Callable[[str], VerifyKey],
    policy: WitnessPolicy,
    progress: Callable[[int], None] | None = None,
) -> QuorumReport:
    """Check every header of ``program`` (by height) against the cosignature lines of
    its height (None: the source offers none)."""
    report = QuorumReport(program, policy.quorum, offered=cosignatures is not None)
    for height, signed in sorted(headers.items()):
        report.headers += 1
        lines = [] if cosignatures is None else cosignatures.get(height, [])
        valid = _valid_cosigners(program, height, signed, lines, key_of, policy, report)
        if policy.sealed_by is not None and not _sealed_before(signed, policy.sealed_by):
            report.faults.append(
                LocatedFault(
                    "sealed-in-future",
                    program,
                    f"sealed at {signed.header.sealed_at}, later than the auditor's clock "
                    f"allows ({format_time(policy.sealed_by)})",
                    height=height,
                )
            )
        elif len(valid) >= policy.quorum:
            report.witnessed += 1
        elif _sealed_before(signed, policy.witnessed_before):
            report.faults.append(
                LocatedFault(
                    "not-witnessed",
                    program,
                    f"{len(valid)} valid cosignature(s) ({', '.join(sorted(valid)) or 'none'}),"
                    f" the quorum is {policy.quorum}; sealed at {signed.header.sealed_at}",
                    height=height,
                )
            )
        else:
            report.pending.append(height)
        if progress is not None:
            progress(1)
    return report


def _sealed_before(signed: SignedHeader, cutoff: datetime) -> bool:
    try:
        return parse_time(signed.header.sealed_at) < cutoff
    except CoalitionError:
        return True


def _valid_cosigners(
    program: str,
    height: int,
    signed: SignedHeader,
    lines: list[str],
    key_of: Callable[[str], VerifyKey],
    policy: WitnessPolicy,
    report: QuorumReport,
) -> set[str]:
    checkpoint = checkpoint_of(signed)
    valid: set[str] = set()
    for line in lines:
        witness = cosigner_of(line)
        if witness is None or witness == program or witness not in policy.partners:
            who = "itself" if witness == program else "no other partner of the manifest"
            report.faults.append(
                LocatedFault(
                    "cosignature-invalid",
                    program,
                    f"a cosignature line names {who}: {line.strip()[:80]!r}",
                    height=height,
                    witness=witness,
                )
            )
            continue
        try:
            verify_cosignature(checkpoint, line, key_of(witness), witness_name(witness))
        except CoalitionError as exc:
            report.faults.append(
                LocatedFault(
                    "cosignature-invalid",
                    program,
                    f"{witness}'s cosignature does not verify over the header's checkpoint "
                    f"(log size {signed.header.log_size}): {exc}",
                    height=height,
                    witness=witness,
                )
            )
            continue
        valid.add(witness)
    return valid
