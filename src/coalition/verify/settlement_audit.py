"""Settlement across the chains: every statement signed by both parties, recorded the
same on both chains, equal to the obligations recomputed from each chain, and the
netting of all statements consistent.

Pure logic over entry bodies in log order (like ``cross_chain``). For each ``statement``
entry: both signatures verify with the manifest keys (``points.statements``, the rule the
nodes apply too); both parties' chains (those audited) record it, byte for byte the same
signed form; its ``owed`` and ``items`` per direction equal
``points.settlement.obligations`` of each party's chain for its period; a pair's periods
do not overlap. Netting (per currency)
over every distinct statement gives positions that sum to zero and payments that bring
every position to zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from coalition.errors import CoalitionError
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json
from coalition.ledger.keys import VerifyKey
from coalition.points.kinds import OBLIGATION_KINDS, STATEMENT_KINDS
from coalition.points.settlement import (
    Netting,
    Owed,
    net,
    netting_json,
    obligations,
)
from coalition.points.statements import StatementParts, verify_signed_statement
from coalition.verify.located import LocatedFault

KeyOf = Callable[[str], VerifyKey]


@dataclass(frozen=True, slots=True)
class _Recorded:
    program: str
    index: int
    entry_id: str | None
    signed: JsonValue


@dataclass(slots=True)
class SettlementReport:
    """Statements checked, the netting per currency, and faults (heights not yet set:
    the caller maps log indexes to heights)."""

    statements: int = 0
    netting: dict[str, Netting] = field(default_factory=dict)
    faults: list[LocatedFault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_json(self) -> JsonObject:
        netting: dict[str, JsonValue] = {
            c: netting_json(n) for c, n in sorted(self.netting.items())
        }
        return {
            "ok": self.ok,
            "statements": self.statements,
            "netting": netting,
            "fault_count": len(self.faults),
        }

    def render(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.faults):,} faults)"
        lines = [f"Settlement: {verdict}: {self.statements:,} statements"]
        for currency, netting in sorted(self.netting.items()):
            positions = ", ".join(f"{p} {v:+,}" for p, v in netting.positions.items()) or "-"
            payments = (
                ", ".join(f"{p.payer} pays {p.payee} {p.amount:,}" for p in netting.payments)
                or "none"
            )
            lines.append(f"  {currency}: positions {positions}; payments {payments}")
        return "\n".join(lines)


class _Checker:
    def __init__(self, chains: Mapping[str, Sequence[JsonObject]], key_of: KeyOf) -> None:
        self.chains = chains
        self.key_of = key_of
        self.report = SettlementReport()
        self.obligation_entries: dict[str, list[JsonObject]] = {}

    def fault(
        self, kind: str, at: _Recorded | str, message: str, statement: str | None = None
    ) -> None:
        if isinstance(at, _Recorded):
            found = LocatedFault(
                kind,
                at.program,
                message,
                log_index=at.index,
                entry_id=at.entry_id,
                statement=statement,
            )
        else:
            found = LocatedFault(kind, at, message, statement=statement)
        self.report.faults.append(found)

    def recorded(self) -> dict[str, list[tuple[_Recorded, StatementParts]]]:
        """Every statement entry whose signatures verify, by statement id."""
        found: dict[str, list[tuple[_Recorded, StatementParts]]] = defaultdict(list)
        for program, entries in sorted(self.chains.items()):
            for index, body in enumerate(entries):
                if body.get("kind") not in STATEMENT_KINDS:
                    continue
                entry_id = body.get("id")
                signed = body.get("statement")
                at = _Recorded(
                    program, index, entry_id if isinstance(entry_id, str) else None, signed
                )
                try:
                    parts = verify_signed_statement(signed, self.key_of)
                except CoalitionError as exc:
                    self.fault("statement-signature", at, str(exc))
                    continue
                if program not in parts.parties:
                    self.fault(
                        "statement-party",
                        at,
                        f"statement {parts.id} is between {parts.parties[0]} and "
                        f"{parts.parties[1]}",
                        parts.id,
                    )
                    continue
                found[parts.id].append((at, parts))
        return found

    def check_statement(
        self, statement_id: str, records: list[tuple[_Recorded, StatementParts]]
    ) -> StatementParts:
        first, parts = records[0]
        by_program: dict[str, list[_Recorded]] = defaultdict(list)
        for at, _ in records:
            by_program[at.program].append(at)
        reference = canonical_json(first.signed)
        for at, _ in records[1:]:
            if canonical_json(at.signed) != reference:
                self.fault(
                    "statement-conflict",
                    at,
                    f"differs from the statement {statement_id} recorded on {first.program} "
                    f"at log index {first.index}",
                    statement_id,
                )
        for ats in by_program.values():
            for extra in ats[1:]:
                self.fault(
                    "statement-duplicate", extra, "recorded twice on one chain", statement_id
                )
        for party in parts.parties:
            if party in self.chains and party not in by_program:
                self.fault(
                    "statement-missing",
                    party,
                    f"statement {statement_id}, recorded on {first.program} at log index "
                    f"{first.index}, is not on {party}'s chain",
                    statement_id,
                )
        for ats in by_program.values():
            self.check_obligations(ats[0], parts)
        return parts

    def check_obligations(self, at: _Recorded, parts: StatementParts) -> None:
        """The statement as ``at.program``'s chain computes it for the period."""
        entries = self.obligation_entries.get(at.program)
        if entries is None:
            entries = [e for e in self.chains[at.program] if e.get("kind") in OBLIGATION_KINDS]
            self.obligation_entries[at.program] = entries
        try:
            owed = obligations(at.program, entries, parts.start, parts.end)
        except CoalitionError as exc:
            self.fault("statement-mismatch", at, f"obligations cannot be computed: {exc}", parts.id)
            return
        for direction in (parts.parties, parts.parties[::-1]):
            stated = parts.owed[direction]
            computed = owed.get(direction, Owed(0, 0))
            if stated != computed:
                debtor, creditor = direction
                self.fault(
                    "statement-mismatch",
                    at,
                    f"owed {debtor}->{creditor}: the statement says {stated.minor} minor in "
                    f"{stated.items} item(s), {at.program}'s chain gives {computed.minor} in "
                    f"{computed.items}",
                    parts.id,
                )

    def check_overlaps(self, statements: list[tuple[_Recorded, StatementParts]]) -> None:
        periods: dict[tuple[str, str], list[StatementParts]] = defaultdict(list)
        for at, parts in sorted(statements, key=lambda s: (s[1].parties, s[1].start)):
            for other in periods[parts.parties]:
                if parts.start < other.end and other.start < parts.end:
                    self.fault(
                        "statement-overlap",
                        at,
                        f"statement {parts.id} overlaps statement {other.id}",
                        parts.id,
                    )
            periods[parts.parties].append(parts)

    def netting(self, statements: list[StatementParts]) -> None:
        by_currency: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        for parts in statements:
            pairwise = by_currency[parts.currency]
            for pair, owed in parts.owed.items():
                if owed.minor:
                    pairwise[pair] = pairwise.get(pair, 0) + owed.minor
        for currency, pairwise in sorted(by_currency.items()):
            netting = net(pairwise)
            self.report.netting[currency] = netting
            left = dict(netting.positions)
            for payment in netting.payments:
                left[payment.payer] += payment.amount
                left[payment.payee] -= payment.amount
            total = sum(netting.positions.values())
            if total != 0 or any(left.values()):
                self.fault(
                    "netting",
                    "coalition",
                    f"{currency}: positions sum to {total}; after the payments "
                    f"{ {p: v for p, v in left.items() if v} } remain",
                )

    def run(self) -> SettlementReport:
        recorded = self.recorded()
        distinct: list[StatementParts] = []
        firsts: list[tuple[_Recorded, StatementParts]] = []
        for statement_id, records in sorted(recorded.items()):
            distinct.append(self.check_statement(statement_id, records))
            firsts.append(records[0])
        self.check_overlaps(firsts)
        self.netting(distinct)
        self.report.statements = len(distinct)
        return self.report


def audit_settlement(chains: Mapping[str, Sequence[JsonObject]], key_of: KeyOf) -> SettlementReport:
    """Check the statements recorded on ``chains`` (program -> entry bodies in log order;
    entries of other kinds may be empty placeholders). ``key_of`` gives manifest keys."""
    return _Checker(chains, key_of).run()
