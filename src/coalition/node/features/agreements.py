"""Rate agreements between this node and its partners (docs/coalition.md, "Rate agreements").

The proposer checks the document and the no-gain-cycle rule, signs it and sends it as an
``agreement-propose`` message; the counterparty runs the same checks, countersigns,
records an ``agreement`` entry and replies ``agreement-accept`` with its signature; the
proposer then records the same signed agreement. Both steps are idempotent by
``(id, version)``, so a proposal retried after a lost reply records nothing twice.

The no-gain-cycle check covers the agreements recorded here and those every other
partner lists (``agreement-list`` -> ``agreement-list-reply`` ``{"agreements": [...]}``,
each verified with both parties' keys): a cycle may run through partners this node has
no agreement with. Messages: ``agreement-propose`` ``{"agreement": {"agreement": doc,
"signatures": {proposer: hex}}}`` -> ``agreement-accept`` ``{"id", "version",
"signature"}``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    VerificationError,
)
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import format_time
from coalition.node.manifest import Manifest
from coalition.node.paging import MAX_PAGE, check_page_size
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.sequencer import Decision
from coalition.node.service import NodeService
from coalition.points import operations
from coalition.points.accounts import validate_reference
from coalition.points.operations import EntryContext
from coalition.points.rates import (
    Agreement,
    agreement_from_document,
    check_no_gain_cycle,
    current_agreements,
    sign_agreement,
    signed_agreement,
    verify_signed_agreement,
)
from coalition.store import agreements as agreements_store

log = logging.getLogger(__name__)

PROPOSE = "agreement-propose"
ACCEPT = "agreement-accept"
LIST = "agreement-list"
PROPOSE_TIMEOUT_S = 10.0
LIST_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class AgreementView:
    """A recorded agreement: the signed document and whether it is in force now."""

    id: str
    version: int
    from_program: str
    to_program: str
    valid_from: str
    valid_until: str
    in_force: bool
    signed: JsonObject


class Agreements:
    """The agreements feature: propose, countersign, record, and look agreements up."""

    def __init__(self, service: NodeService, manifest: Manifest, client: PartnerClient) -> None:
        self.service = service
        self.manifest = manifest
        self.client = client
        self.program = service.program
        self._parsed: dict[tuple[str, int], Agreement] = {}
        self._lock = threading.Lock()

    # --- feature life cycle ------------------------------------------------------------

    def register(self, inbox: PartnerInbox) -> None:
        inbox.register(PROPOSE, self._on_propose)
        inbox.register(LIST, self._on_list)

    def start(self) -> None:
        """Nothing runs in the background."""

    def stop(self) -> None:
        """Nothing runs in the background."""

    # --- proposing ---------------------------------------------------------------------

    def propose(self, doc: JsonObject, timeout: float = PROPOSE_TIMEOUT_S) -> JsonObject:
        """Sign ``doc``, have the counterparty countersign and record it; return the
        agreement signed by both. Proposing a recorded ``(id, version)`` again returns it."""
        agreement = agreement_from_document(doc)
        if agreement.proposed_by != self.program:
            raise InvalidArgument(f"{self.program} proposes only agreements proposed_by itself")
        partner = self._counterparty(agreement)
        with self.service.sequencer.read() as conn:
            recorded = self._recorded(conn, agreement, doc)
        if recorded is not None:
            return recorded
        elsewhere = self._partners_agreements()
        with self.service.sequencer.read() as conn:
            self._check_new(conn, agreement, self.service.now(), elsewhere)
        own = sign_agreement(doc, self.service.signing_key)
        body: JsonObject = {"agreement": signed_agreement(doc, {self.program: own})}
        kind, reply = self.client.call(partner, PROPOSE, body, timeout)
        theirs = reply.get("signature")
        if kind != ACCEPT or not isinstance(theirs, str):
            raise VerificationError(f"{partner} answered {kind} to an agreement proposal")
        signed = signed_agreement(doc, {self.program: own, partner: theirs})
        verify_signed_agreement(signed, self.manifest.public_key)
        self._record(signed, agreement, check=None)
        log.info("agreement %s v%d with %s recorded", agreement.id, agreement.version, partner)
        return signed

    def _on_propose(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        """Countersign a partner's proposal after the proposer's own checks."""
        signed = body.get("agreement")
        if not isinstance(signed, dict) or set(signed) != {"agreement", "signatures"}:
            raise InvalidArgument("agreement-propose carries {agreement: {agreement, signatures}}")
        doc, signatures = signed["agreement"], signed["signatures"]
        if not isinstance(doc, dict) or not isinstance(signatures, dict):
            raise InvalidArgument("a signed agreement is {agreement, signatures}")
        agreement = agreement_from_document(doc)
        if agreement.proposed_by != sender or self._counterparty(agreement) != sender:
            raise PermissionDenied(f"{sender} may propose only its own agreements with us")
        if set(signatures) != {sender}:
            raise VerificationError("a proposal carries exactly the proposer's signature")
        own = sign_agreement(doc, self.service.signing_key)
        full = signed_agreement(doc, {sender: str(signatures[sender]), self.program: own})
        verify_signed_agreement(full, self.manifest.public_key)  # the proposer's signature
        with self.service.sequencer.read() as conn:
            recorded = self._recorded(conn, agreement, doc)
        if recorded is None:
            self._record(full, agreement, check=self._partners_agreements(exclude=sender))
            log.info(
                "agreement %s v%d from %s countersigned", agreement.id, agreement.version, sender
            )
        return ACCEPT, {"id": agreement.id, "version": agreement.version, "signature": own}

    def _counterparty(self, agreement: Agreement) -> str:
        if self.program == agreement.from_program:
            partner = agreement.to_program
        elif self.program == agreement.to_program:
            partner = agreement.from_program
        else:
            raise InvalidArgument(f"agreement {agreement.id} is not one of {self.program}'s")
        self.manifest.partner(partner)
        return partner

    def _recorded(
        self, conn: Connection, agreement: Agreement, doc: JsonObject
    ) -> JsonObject | None:
        """The recorded signed agreement for the same document, or None if not recorded;
        FailedPrecondition when ``(id, version)`` was recorded with other terms."""
        found = agreements_store.agreement(conn, agreement.id, agreement.version)
        if found is None:
            return None
        if found.get("agreement") != doc:
            raise FailedPrecondition(
                f"agreement {agreement.id} v{agreement.version} is recorded with other terms; "
                "propose a higher version"
            )
        return found

    def _on_list(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        """Every agreement recorded here, signed by both of its partners."""
        with self.service.sequencer.read() as conn:
            recorded: list[JsonValue] = list(agreements_store.all_agreements(conn))
        return f"{LIST}-reply", {"agreements": recorded}

    def _partners_agreements(self, exclude: str | None = None) -> list[Agreement]:
        """The agreements the other partners recorded (each verified with both parties'
        keys), so the cycle check sees agreements this node is not party to. A partner
        that cannot be reached is skipped with a warning."""
        found: dict[tuple[str, int], Agreement] = {}
        for partner in self.manifest.others(self.program):
            if partner.program == exclude:
                continue
            try:
                kind, body = self.client.call(partner.program, LIST, {}, LIST_TIMEOUT_S)
                listed = body.get("agreements")
                if kind != f"{LIST}-reply" or not isinstance(listed, list):
                    raise VerificationError(f"{partner.program} answered {kind} to {LIST}")
            except CoalitionError as exc:
                log.warning(
                    "agreements of %s unknown for the cycle check: %s", partner.program, exc
                )
                continue
            for signed in listed:
                try:
                    if not isinstance(signed, dict):
                        raise InvalidArgument("an agreement is a JSON object")
                    agreement = verify_signed_agreement(signed, self.manifest.public_key)
                except CoalitionError as exc:
                    log.warning(
                        "%s listed an agreement that does not verify: %s", partner.program, exc
                    )
                    continue
                found[(agreement.id, agreement.version)] = agreement
        return list(found.values())

    def _check_new(
        self,
        conn: Connection,
        agreement: Agreement,
        now: datetime,
        elsewhere: Iterable[Agreement] = (),
    ) -> None:
        """A new version must not be expired, must supersede, and must create no points
        with the agreements recorded here and ``elsewhere`` (the partners')."""
        if agreement.valid_until <= now:
            raise FailedPrecondition(
                f"agreement {agreement.id} v{agreement.version} expired at "
                f"{format_time(agreement.valid_until)}"
            )
        recorded = self._all(conn)
        highest = max((a.version for a in recorded if a.id == agreement.id), default=0)
        if agreement.version <= highest:
            raise FailedPrecondition(
                f"agreement {agreement.id} is at version {highest}: propose a higher version"
            )
        known = {(a.id, a.version): a for a in (*elsewhere, *recorded)}
        check_no_gain_cycle([*_overlapping(known.values(), agreement, now), agreement])

    def _record(
        self, signed: JsonObject, agreement: Agreement, *, check: list[Agreement] | None
    ) -> None:
        """Write the ``agreement`` entry and row once; with ``check`` (the partners'
        agreements) the checks rerun under the writer first."""

        def decide(conn: Connection, ctx: EntryContext) -> Decision | None:
            if agreements_store.agreement(conn, agreement.id, agreement.version) is not None:
                return None
            if check is not None:
                self._check_new(conn, agreement, ctx.at, check)
            body = operations.agreement_entry(ctx, signed)
            agreements_store.insert_agreement(
                conn,
                signed,
                agreement_id=agreement.id,
                version=agreement.version,
                pair=agreement.pair,
                valid=(agreement.valid_from, agreement.valid_until),
                entry_id=ctx.entry_id,
            )
            return body, [], set()

        self.service.sequencer.decide(decide)

    # --- lookups -----------------------------------------------------------------------

    def _parse(self, signed: JsonObject) -> Agreement:
        doc = signed.get("agreement")
        key = (
            (str(doc.get("id")), int(doc.get("version", 0)))  # type: ignore[arg-type]
            if isinstance(doc, dict)
            else ("", 0)
        )
        with self._lock:
            cached = self._parsed.get(key)
        if cached is not None:
            return cached
        agreement = verify_signed_agreement(signed, self.manifest.public_key)
        with self._lock:
            self._parsed[(agreement.id, agreement.version)] = agreement
        return agreement

    def _all(self, conn: Connection) -> list[Agreement]:
        return [self._parse(signed) for signed in agreements_store.all_agreements(conn)]

    def recorded(self, conn: Connection) -> list[Agreement]:
        """Every recorded agreement (both signatures verified once, then cached)."""
        return self._all(conn)

    def get(self, conn: Connection, agreement_id: str, version: int) -> Agreement | None:
        """The recorded agreement ``(id, version)`` (signatures verified), or None."""
        signed = agreements_store.agreement(conn, agreement_id, version)
        return None if signed is None else self._parse(signed)

    def usable_on(
        self, conn: Connection, from_program: str, to_program: str, at: datetime
    ) -> Agreement | None:
        """The agreement in force for ``from_program -> to_program`` at ``at``, or None."""
        return current_agreements(self._all(conn), at).get((from_program, to_program))

    def usable(self, from_program: str, to_program: str, at: datetime) -> Agreement | None:
        """``usable_on`` in its own read transaction."""
        with self.service.sequencer.read() as conn:
            return self.usable_on(conn, from_program, to_program, at)

    def require(
        self, conn: Connection, from_program: str, to_program: str, at: datetime
    ) -> Agreement:
        """The agreement in force, or FailedPrecondition."""
        found = self.usable_on(conn, from_program, to_program, at)
        if found is None:
            raise FailedPrecondition(
                f"no rate agreement {from_program} -> {to_program} is in force at {format_time(at)}"
            )
        return found

    def list(
        self, limit: int = MAX_PAGE, after: tuple[str, int] | None = None
    ) -> list[AgreementView]:
        """Recorded agreements by id then version, up to ``limit`` (1..1000) from the one
        after ``after`` (an (id, version)). Whether each is in force is decided among the
        versions of its id and the agreements of its pair only, so a page costs its own
        agreements and their rivals, not every agreement recorded."""
        check_page_size(limit)
        now = self.service.now()
        with self.service.sequencer.read() as conn:
            signed_all = agreements_store.agreements_page(conn, limit, after)
            parsed = [self._parse(signed) for signed in signed_all]
            rivals = agreements_store.agreements_related(
                conn, [a.id for a in parsed], [a.pair for a in parsed]
            )
            considered = [self._parse(signed) for signed in rivals]
        current = {(a.id, a.version) for a in current_agreements(considered, now).values()}
        return [
            AgreementView(
                id=a.id,
                version=a.version,
                from_program=a.from_program,
                to_program=a.to_program,
                valid_from=format_time(a.valid_from),
                valid_until=format_time(a.valid_until),
                in_force=(a.id, a.version) in current,
                signed=signed,
            )
            for a, signed in zip(parsed, signed_all, strict=True)
        ]


def cursor_of(view: AgreementView) -> str:
    """The cursor naming ``view`` as the last of a page (``VERSION:ID``: ids may hold
    any character, versions are digits)."""
    return f"{view.version}:{view.id}"


def parse_cursor(cursor: str | None) -> tuple[str, int] | None:
    """The (id, version) a ``cursor_of`` cursor names; None for the first page.
    InvalidArgument for anything this node never gave."""
    if cursor is None:
        return None
    version, _, agreement_id = cursor.partition(":")
    if not agreement_id or not version.isascii() or not version.isdigit() or len(version) > 18:
        raise InvalidArgument(f"{cursor[:40]!r} is not a cursor of the agreements list")
    return validate_reference(agreement_id, "agreement id in the cursor"), int(version)


def _overlapping(recorded: Iterable[Agreement], new: Agreement, now: datetime) -> list[Agreement]:
    """The recorded agreements that may be in force together with ``new``: unexpired, with
    a window meeting ``new``'s, other ids only (``new`` supersedes its own id)."""
    return [
        a
        for a in recorded
        if a.id != new.id
        and a.valid_until > now
        and a.valid_from < new.valid_until
        and new.valid_from < a.valid_until
    ]
