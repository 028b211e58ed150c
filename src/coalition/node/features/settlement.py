"""Settlement between partner nodes (docs/coalition.md, "Settlement").

Obligations come from this node's own chain alone (``points.settlement.obligations``).
``propose`` builds the statement of a finished period with a partner, signs it and sends
``statement-propose``; the partner recomputes the statement from its own chain and
countersigns only if it is equal, else it refuses naming the difference. Both record
the statement signed by both as a ``statement`` entry. A statement's id is derived from
its parties and period, so a proposal retried after a lost reply records nothing twice,
and periods of one pair never overlap.

A proposal whose reply was lost (or that reached the partner only after the proposer
stopped waiting) leaves the statement on the partner's chain alone. So a partner asked
for a period that overlaps a statement it recorded for the pair answers with that
statement, signed by both, instead of refusing; the proposer verifies both signatures
(its own among them: it proposed that statement), records it if it had not, and refuses
the new period naming it. And before every proposal the proposer first records what the
partner lists (``statements-list``) of the pair's statements of the last
``RECONCILE_LOOKBACK`` that it lacks, and proposes again those it holds that the partner
does not list (``reconcile``), so whichever partner proposes next levels the chains.

``coalition_netting`` gathers the statements recorded for a period, this node's and its
partners' (``statements-list``, each statement's two signatures verified), and nets them
into positions and the fewest payments, exported as CSV and JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from coalition.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PartnerUnavailable,
    VerificationError,
)
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import check_program_id, check_time, format_time
from coalition.node.manifest import Manifest
from coalition.node.paging import check_page_size
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.sequencer import Decision
from coalition.node.service import NodeService
from coalition.points import model, operations
from coalition.points.accounts import validate_reference
from coalition.points.kinds import OBLIGATION_KINDS
from coalition.points.operations import EntryContext
from coalition.points.settlement import (
    Netting,
    Owed,
    net,
    netting_csv,
    netting_json,
    obligations,
    pending_conversions,
    priced,
    statement_document,
)
from coalition.points.statements import (
    StatementParts,
    check_statement_signature,
    sign_statement,
    signed_statement,
    statement_id,
    statement_parts,
    verify_signed_statement,
)
from coalition.store import ledger as ledger_store
from coalition.store import statements as statements_store
from coalition.store.statements import Statement

log = logging.getLogger(__name__)

PROPOSE = "statement-propose"
LIST = "statements-list"
CALL_TIMEOUT_S = 10.0
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)
END_OF_TIME = datetime(9999, 1, 1, tzinfo=UTC)
MAX_LISTED = 10_000
"""Most statements one ``statements-list`` reply carries."""
RECONCILE_LOOKBACK = timedelta(days=400)
"""How far before a proposed period ``propose`` looks for statements of the pair that
only the partner recorded (``reconcile``)."""


# --- proposals -------------------------------------------------------------------------


def _differences(expected: JsonObject, proposed: JsonObject) -> list[str]:
    """What differs between two statement documents, in words."""
    found: list[str] = []
    for key in ("owed", "items"):
        mine, theirs = expected.get(key), proposed.get(key)
        assert isinstance(mine, dict) and isinstance(theirs, dict)
        for direction in sorted(set(mine) | set(theirs)):
            if mine.get(direction) != theirs.get(direction):
                found.append(
                    f"{key} {direction}: {mine.get(direction)} here, "
                    f"{theirs.get(direction)} proposed"
                )
    for key in ("currency", "id", "parties", "period"):
        if expected.get(key) != proposed.get(key):
            found.append(f"{key}: {expected.get(key)} here, {proposed.get(key)} proposed")
    return found


# --- views ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatementView:
    """A recorded statement and the entry that recorded it on this chain."""

    id: str
    parties: tuple[str, str]
    start: str
    end: str
    currency: str
    signed: JsonObject
    entry_id: str


@dataclass(frozen=True, slots=True)
class NettingView:
    """Netting over the statements found for a period, and what it rests on."""

    start: str
    end: str
    currency: str | None
    netting: Netting
    statements: list[str]
    unreachable: list[str] = field(default_factory=list)
    """Partners that did not answer; their statements with reachable partners still count."""

    def to_json(self) -> JsonObject:
        doc = netting_json(self.netting)
        doc.update(
            {
                "period": {"start": self.start, "end": self.end},
                "currency": self.currency,
                "statements": list(self.statements),
                "unreachable": list(self.unreachable),
            }
        )
        return doc

    def to_csv(self) -> str:
        return netting_csv(self.netting)


def _view(statement: Statement) -> StatementView:
    return StatementView(
        id=statement.id,
        parties=statement.parties,
        start=format_time(statement.start),
        end=format_time(statement.end),
        currency=statement.currency,
        signed=statement.signed,
        entry_id=statement.entry_id,
    )


# --- the feature ------------------------------------------------------------------------


class Settlement:
    """Statements with partners, the unsettled balance, and coalition netting."""

    def __init__(
        self,
        service: NodeService,
        manifest: Manifest,
        client: PartnerClient,
        *,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.manifest = manifest
        self.client = client
        self.program = service.program
        self._timeout = call_timeout_s

    def register(self, inbox: PartnerInbox) -> None:
        inbox.register(PROPOSE, self._on_propose)
        inbox.register(LIST, self._on_list)

    def start(self) -> None:
        """Nothing runs in the background."""

    def stop(self) -> None:
        """Nothing to stop."""

    # --- obligations ------------------------------------------------------------------

    def _chain(self, conn: Connection) -> list[JsonObject]:
        return ledger_store.bodies_of_kinds(conn, OBLIGATION_KINDS)

    def obligations(self, start: datetime, end: datetime) -> dict[tuple[str, str], Owed]:
        """``(debtor, creditor) -> Owed`` for ``[start, end)`` from this node's chain."""
        with self.service.sequencer.read() as conn:
            return obligations(self.program, self._chain(conn), start, end)

    def unsettled(self, debtor: str, creditor: str, conn: Connection | None = None) -> int:
        """Minor units ``debtor`` owes ``creditor`` by this chain that no recorded statement
        covers: every obligation between them less what their statements settled. Pass
        ``conn`` to read inside a caller's transaction (a credit-limit check)."""
        for program in (debtor, creditor):
            self.manifest.partner(program)
        if self.program not in (debtor, creditor) or debtor == creditor:
            raise InvalidArgument(f"{self.program} knows only its own obligations")
        if conn is None:
            with self.service.sequencer.read() as own:
                return self.unsettled(debtor, creditor, own)
        owed = obligations(self.program, self._chain(conn), BEGINNING, END_OF_TIME)
        total = owed.get((debtor, creditor), Owed(0, 0)).minor
        parties = (min(debtor, creditor), max(debtor, creditor))
        for statement in statements_store.statements_between(conn, parties):
            parts = statement_parts(statement.signed["statement"])
            total -= parts.owed[(debtor, creditor)].minor
        return total

    def _statement_for(
        self,
        conn: Connection,
        parties: tuple[str, str],
        start: datetime,
        end: datetime,
        default_currency: str | None = None,
    ) -> JsonObject:
        """This chain's statement for the pair and period; refused while it cannot be final
        (period not over, conversions of the period pending). ``default_currency`` is the
        currency of a period without obligations (this program's own by default)."""
        if not start < end:
            raise InvalidArgument("a settlement period starts before it ends")
        now = self.service.now()
        if end > now:
            raise FailedPrecondition(
                f"the period ends at {format_time(end)}, after now ({format_time(now)}): "
                "settle finished periods only"
            )
        chain = self._chain(conn)
        pending = pending_conversions(chain, start, end)
        if pending:
            shown = ", ".join(pending[:5]) + (" ..." if len(pending) > 5 else "")
            raise FailedPrecondition(
                f"{len(pending)} conversion(s) of the period are still pending at "
                f"{self.program} ({shown}): settle once they complete or are refunded"
            )
        owed = obligations(self.program, chain, start, end)
        currency = self._currency(chain, parties, start, end, default_currency)
        return statement_document(
            statement_id(parties, start, end), parties, start, end, currency, owed
        )

    def _currency(
        self,
        chain: list[JsonObject],
        parties: tuple[str, str],
        start: datetime,
        end: datetime,
        default: str | None,
    ) -> str:
        """The currency of the pair's obligations in the period (one, else refused), or
        ``default`` (else this program's manifest currency) for a period without any."""
        found: set[str] = set()
        for entry in chain:
            obligation = priced(self.program, model.parse_entry(entry))
            if obligation is None:
                continue
            debtor, creditor, at, _, currency = obligation
            counterpart = creditor if debtor == self.program else debtor
            if counterpart in parties and counterpart != self.program and start <= at < end:
                found.add(currency)
        if len(found) > 1:
            raise FailedPrecondition(
                f"obligations with {parties} are in {sorted(found)}: settle each currency apart"
            )
        if found:
            return found.pop()
        return default or self.manifest.partner(self.program).currency

    # --- statements -------------------------------------------------------------------

    def _check_partner(self, partner: str) -> tuple[str, str]:
        check_program_id(partner, "partner")
        if partner == self.program:
            raise InvalidArgument("a statement is between this node and another partner")
        self.manifest.partner(partner)
        first, second = sorted((self.program, partner))
        return (first, second)

    def propose(self, partner: str, start: datetime, end: datetime) -> JsonObject:
        """Agree the statement of ``[start, end)`` with ``partner``; the statement signed by
        both, recorded on both chains. Proposing an agreed period again returns it."""
        parties = self._check_partner(partner)
        with self.service.sequencer.read() as conn:
            existing = statements_store.statement(conn, statement_id(parties, start, end))
        if existing is not None:
            return existing.signed
        doc = self._proposal(parties, start, end)  # refused here before any call
        if self.reconcile(partner, start - RECONCILE_LOOKBACK, end):
            doc = self._proposal(parties, start, end)  # with what was just recorded
        signature = sign_statement(doc, self.service.signing_key)
        kind, reply = self.client.call(
            partner, PROPOSE, {"statement": doc, "signature": signature}, self._timeout
        )
        if kind != f"{PROPOSE}-reply":
            raise VerificationError(f"{partner} answered {PROPOSE} with {kind}")
        signed = reply.get("signed")
        parts = verify_signed_statement(signed, self.manifest.public_key)
        assert isinstance(signed, dict)
        if signed["statement"] != doc:
            self._adopt(partner, parties, start, end, signed, parts)
        self._record(signed, parts)
        return signed

    def _proposal(self, parties: tuple[str, str], start: datetime, end: datetime) -> JsonObject:
        with self.service.sequencer.read() as conn:
            self._check_free(conn, parties, start, end)
            return self._statement_for(conn, parties, start, end)

    def reconcile(self, partner: str, start: datetime, end: datetime) -> int:
        """Level the statements of this node and ``partner`` within ``[start, end)``:
        record those the partner recorded and this node did not (a proposal the partner
        answered after the proposer stopped waiting), each verified (both signatures)
        first; propose again those recorded here that the partner does not list (it
        recorded nothing: the reply carrying its countersignature was what got through).
        How many were recorded here. One that overlaps another statement recorded here
        is refused (FailedPrecondition).
        """
        parties = self._check_partner(partner)
        body: JsonObject = {"start": format_time(start), "end": format_time(end)}
        kind, reply = self.client.call(partner, LIST, body, self._timeout)
        listed = reply.get("statements")
        if kind != f"{LIST}-reply" or not isinstance(listed, list):
            raise VerificationError(f"{partner} answered {LIST} with {kind}")
        recorded = 0
        theirs: set[str] = set()
        for signed in listed:
            parts = verify_signed_statement(signed, self.manifest.public_key)
            if parts.parties != parties:
                continue  # the partner's statement with another program
            theirs.add(parts.id)
            with self.service.sequencer.read() as conn:
                known = statements_store.statement(conn, parts.id) is not None
            if not known:
                assert isinstance(signed, dict)
                self._record(signed, parts)
                log.info("recorded statement %s, which only %s had recorded", parts.id, partner)
                recorded += 1
        for mine in self._within(start, end):
            if mine.parties == parties and mine.id not in theirs:
                self._resend(partner, mine)
        return recorded

    def _resend(self, partner: str, mine: Statement) -> None:
        """Propose again a statement recorded here that ``partner`` does not list: it
        countersigns and records it (it holds the same chain for that period; signatures
        are deterministic, so the statement signed by both is the very one stored here)."""
        signed = mine.signed
        statement = signed["statement"]
        signatures = signed.get("signatures")
        assert isinstance(statement, dict) and isinstance(signatures, dict)
        body: JsonObject = {"statement": statement, "signature": signatures[self.program]}
        kind, reply = self.client.call(partner, PROPOSE, body, self._timeout)
        if kind != f"{PROPOSE}-reply" or reply.get("signed") != signed:
            raise VerificationError(f"{partner} did not countersign statement again as recorded")
        log.info("%s recorded statement %s, which only this node had recorded", partner, mine.id)

    def _adopt(
        self,
        partner: str,
        parties: tuple[str, str],
        start: datetime,
        end: datetime,
        signed: JsonObject,
        parts: StatementParts,
    ) -> None:
        """The partner answered a proposal with a statement it had recorded for an
        overlapping period (signed by both, so proposed by this node once: its reply
        lost): record it here too, then refuse the proposal naming it."""
        if parts.parties != parties or not (parts.start < end and start < parts.end):
            raise VerificationError(f"{partner} countersigned another statement than proposed")
        self._record(signed, parts)
        raise FailedPrecondition(
            f"statement {parts.id} already covers {format_time(parts.start)} - "
            f"{format_time(parts.end)} for {parties[0]} and {parties[1]} ({partner} had "
            "recorded it alone; it is recorded here now)"
        )

    def _check_free(
        self, conn: Connection, parties: tuple[str, str], start: datetime, end: datetime
    ) -> None:
        overlapping = statements_store.statements_between(conn, parties, (start, end))
        if overlapping:
            first = overlapping[0]
            raise FailedPrecondition(
                f"statement {first.id} already covers {format_time(first.start)} - "
                f"{format_time(first.end)} for {parties[0]} and {parties[1]}"
            )

    def _record(self, signed: JsonObject, parts: StatementParts) -> None:
        """Write the ``statement`` entry and row once (checked again under the writer)."""

        def decide(conn: Connection, ctx: EntryContext) -> Decision | None:
            existing = statements_store.statement(conn, parts.id)
            if existing is not None:
                if existing.signed != signed:
                    raise FailedPrecondition(f"statement {parts.id} was recorded differently")
                return None
            self._check_free(conn, parts.parties, parts.start, parts.end)
            body = operations.statement_entry(ctx, signed)
            statements_store.insert_statement(
                conn,
                statement_id=parts.id,
                parties=parts.parties,
                start=parts.start,
                end=parts.end,
                currency=parts.currency,
                signed=signed,
                entry_id=ctx.entry_id,
            )
            return body, [], set()

        self.service.sequencer.decide(decide)

    def _on_propose(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        if set(body) != {"statement", "signature"}:
            raise InvalidArgument(f"a {PROPOSE} body is {{statement, signature}}")
        proposed = body["statement"]
        parts = statement_parts(proposed)
        assert isinstance(proposed, dict)
        if set(parts.parties) != {sender, self.program}:
            raise InvalidArgument(f"the statement's parties are not {sender} and {self.program}")
        check_statement_signature(
            self.manifest.public_key(sender), proposed, body["signature"], sender, parts
        )
        with self.service.sequencer.read() as conn:
            overlapping = statements_store.statements_between(
                conn, parts.parties, (parts.start, parts.end)
            )
            if overlapping:  # agreed before (the proposer's answer lost): see the module
                return f"{PROPOSE}-reply", {"signed": overlapping[0].signed}
            expected = self._statement_for(
                conn, parts.parties, parts.start, parts.end, parts.currency
            )
        if expected != proposed:
            raise FailedPrecondition(
                f"{self.program} computes another statement from its chain: "
                + "; ".join(_differences(expected, proposed))
            )
        mine = sign_statement(proposed, self.service.signing_key)
        signed = signed_statement(proposed, {sender: str(body["signature"]), self.program: mine})
        self._record(signed, parts)
        return f"{PROPOSE}-reply", {"signed": signed}

    def statements(self, partner: str | None = None) -> list[StatementView]:
        """Statements recorded on this chain (with ``partner`` only), oldest period first."""
        parties = None if partner is None else self._check_partner(partner)
        with self.service.sequencer.read() as conn:
            return [_view(s) for s in statements_store.statements_between(conn, parties)]

    def statements_page(
        self, partner: str | None, limit: int, after: str | None = None
    ) -> list[StatementView]:
        """``statements`` a page at a time: up to ``limit`` (1..1000), from the one after
        the statement ``after`` (an id), oldest period first. NotFound for an unknown
        ``after``."""
        parties = None if partner is None else self._check_partner(partner)
        check_page_size(limit)
        if after is not None:
            validate_reference(after, "statement id")  # before it is looked up
        with self.service.sequencer.read() as conn:
            found = statements_store.statements_page(conn, parties, limit, after)
        if found is None:
            raise NotFound(f"no statement {after} is recorded here")
        return [_view(s) for s in found]

    def statement(self, statement_id: str) -> StatementView:
        with self.service.sequencer.read() as conn:
            found = statements_store.statement(conn, statement_id)
        if found is None:
            raise NotFound(f"no statement {statement_id} is recorded here")
        return _view(found)

    def _within(self, start: datetime, end: datetime) -> list[Statement]:
        with self.service.sequencer.read() as conn:
            found = statements_store.statements_between(conn, None, (start, end))
        return [s for s in found if start <= s.start and s.end <= end]

    def _on_list(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        if set(body) != {"start", "end"}:
            raise InvalidArgument(f"a {LIST} body is {{start, end}}")
        start = check_time(body["start"], "start")
        end = check_time(body["end"], "end")
        if not start < end:
            raise InvalidArgument("a period starts before it ends")
        found = self._within(start, end)
        if len(found) > MAX_LISTED:
            raise FailedPrecondition(
                f"{len(found)} statements in the period, more than {MAX_LISTED}: ask for a "
                "shorter one"
            )
        return f"{LIST}-reply", {"statements": [s.signed for s in found]}

    # --- netting ----------------------------------------------------------------------

    def coalition_netting(self, start: datetime, end: datetime) -> NettingView:
        """Net every statement recorded within ``[start, end)`` across the coalition: this
        node's and those its partners list (each verified). A partner that does not
        answer is named in ``unreachable``; statements it shares with others still count."""
        if not start < end:
            raise InvalidArgument("a netting period starts before it ends")
        gathered: dict[str, JsonObject] = {s.id: s.signed for s in self._within(start, end)}
        unreachable: list[str] = []
        for partner in self.manifest.others(self.program):
            try:
                kind, reply = self.client.call(
                    partner.program,
                    LIST,
                    {"start": format_time(start), "end": format_time(end)},
                    self._timeout,
                )
            except PartnerUnavailable as exc:
                log.warning("netting without %s's statements: %s", partner.program, exc)
                unreachable.append(partner.program)
                continue
            listed = reply.get("statements")
            if kind != f"{LIST}-reply" or not isinstance(listed, list):
                raise VerificationError(f"{partner.program} answered {LIST} with {kind}")
            for signed in listed:
                parts = verify_signed_statement(signed, self.manifest.public_key)
                if not (start <= parts.start and parts.end <= end):
                    raise VerificationError(
                        f"{partner.program} listed statement {parts.id} outside the period"
                    )
                assert isinstance(signed, dict)
                known = gathered.setdefault(parts.id, signed)
                if known["statement"] != signed["statement"]:
                    raise VerificationError(f"two different statements {parts.id} exist")
        return self._net(start, end, gathered, unreachable)

    def _net(
        self,
        start: datetime,
        end: datetime,
        gathered: Mapping[str, JsonObject],
        unreachable: list[str],
    ) -> NettingView:
        pairwise: dict[tuple[str, str], int] = {}
        currencies: set[str] = set()
        covered: dict[tuple[str, str], list[tuple[datetime, datetime]]] = {}
        for statement_id_ in sorted(gathered):
            parts = statement_parts(gathered[statement_id_]["statement"])
            periods = covered.setdefault(parts.parties, [])
            if any(parts.start < e and s < parts.end for s, e in periods):
                raise VerificationError(
                    f"statements of {parts.parties[0]} and {parts.parties[1]} overlap"
                )
            periods.append((parts.start, parts.end))
            currencies.add(parts.currency)
            for pair, owed in parts.owed.items():
                if owed.minor:
                    pairwise[pair] = pairwise.get(pair, 0) + owed.minor
        if len(currencies) > 1:
            raise FailedPrecondition(
                f"the period's statements are in {sorted(currencies)}: net each currency apart"
            )
        return NettingView(
            start=format_time(start),
            end=format_time(end),
            currency=currencies.pop() if currencies else None,
            netting=net(pairwise),
            statements=sorted(gathered),
            unreachable=unreachable,
        )
