"""Conversions A -> B between partner nodes (docs/coalition.md, "Conversion A -> B").

Source side (A): ``convert`` quotes under the agreement in force, checks the member's
daily cap and B's credit limit for A, and writes the ``convert-out`` entry, the
conversion's row and its outbox row in one transaction; the outbox delivers it. Each
answer B signs is verified (signature, sender, conversion id, credit) before A writes
``convert-complete`` (receipt) or ``convert-refund`` (signed rejection), once per
conversion. A refunds only on a signed rejection, never on a timeout.

Target side (B): the ``convert`` and ``abort`` handlers answer each conversion id exactly
once (``convert-in`` or ``convert-reject``) and store the signed answer, which every
redelivery gets again: a conversion is never credited twice, and once aborted never
credited at all.

Messages (bodies of signed envelopes; replies are signed by B):

- ``convert`` ``{"conversions": [{"out_entry": <A's convert-out>, "to_member_id"}]}``
  (1-500) -> ``convert-reply`` ``{"receipts": [<answer>, ...]}``, one answer per
  distinct conversion id;
- ``abort`` ``{"conversions": [<id>, ...]}`` -> ``abort-reply`` ``{"receipts": [...]}``;
- an answer is a signed message ``{"envelope", "signature"}`` of its own, B -> A:
  ``convert-receipt`` ``{"conversion", "status": "credited", "in_entry", "in_hash",
  "credit"}`` or ``convert-rejection`` ``{"conversion", "status": "rejected", "reason"}``.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection

from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VerificationError,
)
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import check_program_id, entry_leaf_hash, format_time, parse_time
from coalition.ledger.envelope import MAX_CLOCK_SKEW, SignedMessage, open_message, sign_message
from coalition.node.features.agreements import Agreements
from coalition.node.features.outbox import Outbox
from coalition.node.idempotency import OPERATOR, KeyScope
from coalition.node.manifest import Manifest
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.sequencer import Decision, EntryDecision
from coalition.node.service import NodeService
from coalition.points import model, operations
from coalition.points.accounts import validate_member_id, validate_reference
from coalition.points.operations import EntryContext
from coalition.points.rates import (
    Agreement,
    check_credit_limit,
    check_daily_cap,
    current_agreements,
    quote,
)
from coalition.points.state import Account
from coalition.store import conversions as conversions_store
from coalition.store import ledger as ledger_store
from coalition.store import members as members_store
from coalition.store.conversions import Answer, ConversionRecord, OutboxItem

log = logging.getLogger(__name__)

CONVERT = "convert"
ABORT = "abort"
RECEIPT = "convert-receipt"
REJECTION = "convert-rejection"
MAX_BATCH = 500
"""Most conversions one ``convert`` or ``abort`` message carries."""
CALL_TIMEOUT_S = 10.0
ABORTED = "aborted"
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_ENTRY_ID = re.compile(r"[0-9a-f]{32}")
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class QuoteView:
    """What converting ``amount`` points would give now (nothing is written)."""

    to_program: str
    agreement_id: str
    agreement_version: int
    amount: int
    fee: int
    net: int
    credit: int
    value_minor: int
    currency: str
    rate: tuple[int, int]
    daily_cap_points: int
    converted_today: int


@dataclass(frozen=True, slots=True)
class ConversionView:
    """One conversion as the member sees it: ``pending``, ``completed`` or ``refunded``."""

    id: str
    member_id: str
    to_program: str
    to_member_id: str
    agreement_id: str
    agreement_version: int
    amount: int
    fee: int
    net: int
    credit: int
    value_minor: int
    currency: str
    status: str
    reason: str | None
    created_at: str
    out_entry: str
    final_entry: str | None
    replayed: bool = False
    """Set by ``convert`` when its idempotency key was seen before (the first request's
    conversion, as it stands now); False on every read."""


@dataclass(frozen=True, slots=True)
class _Checked:
    """A verified answer of the target: what to record for one conversion."""

    conversion_id: str
    kind: str
    message: JsonObject
    reason: str | None


def _day_start(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def _reason(text: str) -> str:
    """A rejection reason fit for an entry: printable, 1-200 characters."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return (clean or "rejected")[: operations.MAX_NOTE]


def _wall_us() -> int:
    return time.time_ns() // 1000


class Conversions:
    """The conversions feature of one node: member operations, both partner handlers and
    the outbox that delivers this node's pending conversions."""

    def __init__(
        self,
        service: NodeService,
        manifest: Manifest,
        client: PartnerClient,
        agreements: Agreements,
        *,
        abort_after_s: float = 30.0,
        call_timeout_s: float = CALL_TIMEOUT_S,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        """``wall_clock`` (microseconds since the epoch; the host's clock by default) is
        the outbox's: when conversions are queued, due and aborted."""
        if not abort_after_s > 0:
            raise InvalidArgument("abort_after_s must be positive")
        self.service = service
        self.manifest = manifest
        self.client = client
        self.agreements = agreements
        self.program = service.program
        self._call_timeout = call_timeout_s
        self._wall = wall_clock or _wall_us
        self.outbox = Outbox(
            service.sequencer,
            self._deliver,
            [partner.program for partner in manifest.others(self.program)],
            abort_after_s=abort_after_s,
            batch=MAX_BATCH,
            wall_clock=self._wall,
        )

    # --- feature life cycle ------------------------------------------------------------

    def register(self, inbox: PartnerInbox) -> None:
        inbox.register(CONVERT, self._on_convert)
        inbox.register(ABORT, self._on_abort)

    def start(self) -> None:
        """Deliver pending conversions in the background (those left by a restart too)."""
        self.outbox.start()

    def stop(self) -> None:
        self.outbox.stop()

    # --- member operations (source side) ------------------------------------------------

    def _check_target(self, to_program: str) -> None:
        check_program_id(to_program, "to_program")
        if to_program == self.program:
            raise InvalidArgument("a conversion goes to another program")
        self.manifest.partner(to_program)

    def convert(
        self,
        member_id: str,
        to_program: str,
        to_member_id: str,
        amount: int,
        *,
        idempotency_key: str,
        scope: KeyScope = OPERATOR,
    ) -> ConversionView:
        """Convert ``amount`` of the member's points into ``to_program`` points for the
        member ``to_member_id`` there; returns the conversion, ``pending`` until B answers.
        The same idempotency key with the same request, in the caller's ``scope``
        (``node.idempotency``), returns the same conversion."""
        validate_member_id(member_id)
        validate_member_id(to_member_id)
        self._check_target(to_program)
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise InvalidArgument(f"amount must be an integer, got {amount!r}")
        request: JsonObject = {
            "op": "convert",
            "member_id": member_id,
            "to_program": to_program,
            "to_member_id": to_member_id,
            "amount": amount,
        }
        conversion_id = secrets.token_hex(16)

        def decide(conn: Connection, ctx: EntryContext) -> Decision:
            account = self.service.points.member_account(conn, member_id)
            agreement = self.agreements.require(conn, self.program, to_program, ctx.at)
            quoted = quote(agreement, amount)
            start = _day_start(ctx.at)
            today = conversions_store.converted_between(
                conn, account, agreement.id, start, start + DAY
            )
            check_daily_cap(agreement, today, amount)
            limit = self.manifest.credit_limit(to_program, self.program)
            if limit is not None:
                unsettled = conversions_store.unsettled(
                    conn, self.program, self.program, to_program, in_flight=True, keep=True
                )
                check_credit_limit(limit, unsettled, quoted.value_minor, self.program, to_program)
            touched, known = self.service.points.load_debit(conn, account, quoted.amount, ctx.at)
            body = operations.convert_out(
                ctx, self.service.points.rules, touched[0], agreement, quoted, conversion_id
            )
            conversions_store.insert_conversion(
                conn,
                ConversionRecord(
                    id=conversion_id,
                    account=account,
                    member_id=member_id,
                    to_program=to_program,
                    to_member_id=to_member_id,
                    agreement_id=agreement.id,
                    agreement_version=agreement.version,
                    amount=amount,
                    credit=quoted.credit,
                    value_minor=quoted.value_minor,
                    created_at=ctx.at,
                    out_entry=ctx.entry_id,
                    status="pending",
                    reason=None,
                    final_entry=None,
                ),
            )
            self.outbox.enqueue(conn, conversion_id, to_program)
            return body, touched, known

        result = self.service.sequencer.append(request, idempotency_key, decide, scope=scope)
        if result.replayed:  # it may have settled since: read its status
            out: model.ConvertOut = model.parse_as(result.entry, model.ConvertOut)
            view = replace(self.status(member_id, out.conversion.id), replayed=True)
        else:  # just written, still pending: the entry says it all
            view = _pending_view(result.entry, member_id, to_member_id)
        self.outbox.wake(to_program)
        return view

    def status(self, member_id: str, conversion_id: str) -> ConversionView:
        """The member's conversion; NotFound for another member's or an unknown one."""
        validate_member_id(member_id)
        validate_reference(conversion_id, "conversion id")
        with self.service.sequencer.read() as conn:
            record = conversions_store.conversion(conn, conversion_id)
            if record is None or record.member_id != member_id:
                raise NotFound(f"member {member_id} has no conversion {conversion_id}")
            found = ledger_store.entry_by_id(conn, record.out_entry)
        if found is None:
            raise NotFound(f"conversion {conversion_id} has no convert-out entry")
        conversion = model.parse_as(found[1], model.ConvertOut).conversion
        return ConversionView(
            id=record.id,
            member_id=record.member_id,
            to_program=record.to_program,
            to_member_id=record.to_member_id,
            agreement_id=record.agreement_id,
            agreement_version=record.agreement_version,
            amount=record.amount,
            fee=conversion.fee,
            net=conversion.net,
            credit=record.credit,
            value_minor=record.value_minor,
            currency=conversion.currency,
            status=record.status,
            reason=record.reason,
            created_at=format_time(record.created_at),
            out_entry=record.out_entry,
            final_entry=record.final_entry,
        )

    def quote(self, member_id: str, to_program: str, amount: int) -> QuoteView:
        """What ``amount`` points would convert into now; writes nothing."""
        self._check_target(to_program)
        now = self.service.now()
        with self.service.sequencer.read() as conn:
            account = self.service.points.member_account(conn, member_id)
            agreement = self.agreements.require(conn, self.program, to_program, now)
            quoted = quote(agreement, amount)
            start = _day_start(now)
            today = conversions_store.converted_between(
                conn, account, agreement.id, start, start + DAY
            )
        return QuoteView(
            to_program=to_program,
            agreement_id=agreement.id,
            agreement_version=agreement.version,
            amount=quoted.amount,
            fee=quoted.fee,
            net=quoted.net,
            credit=quoted.credit,
            value_minor=quoted.value_minor,
            currency=agreement.currency,
            rate=(agreement.rate_num, agreement.rate_den),
            daily_cap_points=agreement.daily_cap_points,
            converted_today=today,
        )

    # --- delivery (source side, called by the outbox) -----------------------------------

    def _deliver(self, partner: str, items: Sequence[OutboxItem], abort: bool) -> set[str]:
        """Send one batch to ``partner``; record its answers; the ids settled.

        Raises PartnerUnavailable (or the partner's refusal) so the outbox backs off.
        """
        ids = [item.conversion_id for item in items]
        with self.service.sequencer.read() as conn:
            records = conversions_store.conversions_by_id(conn, ids)
            bodies = conversions_store.out_entry_bodies(
                conn, [r.out_entry for r in records.values()]
            )
        live = [records[i] for i in ids if i in records and records[i].status == "pending"]
        stale = set(ids) - {r.id for r in live}
        if stale:  # settled meanwhile (e.g. by another replica): nothing to send
            self.service.sequencer.run(lambda tx: _dequeue(tx.conn, stale))
        if not live:
            return stale
        body: JsonObject
        if abort:
            body = {"conversions": [r.id for r in live]}
        else:
            body = {
                "conversions": [
                    {"out_entry": bodies[r.out_entry], "to_member_id": r.to_member_id}
                    for r in live
                    if r.out_entry in bodies
                ]
            }
        kind, reply = self.client.call(
            partner, ABORT if abort else CONVERT, body, self._call_timeout
        )
        expected = f"{ABORT if abort else CONVERT}-reply"
        if kind != expected:
            raise VerificationError(f"{partner} answered {kind} instead of {expected}")
        answers = reply.get("receipts")
        if not isinstance(answers, list):
            raise VerificationError(f"{partner}'s {kind} has no receipts list")
        return self.record_answers(partner, answers) | stale

    def record_answers(self, partner: str, answers: Sequence[JsonValue]) -> set[str]:
        """Verify ``partner``'s signed answers and record them, one entry per conversion
        still pending; a tampered or foreign answer is refused, logged, and changes nothing.
        Returns the conversion ids that are settled afterwards."""
        opened: list[tuple[str, str, JsonObject, JsonObject]] = []
        for raw in answers:
            try:
                opened.append(self._open_answer(partner, raw))
            except CoalitionError as exc:
                log.warning("refused an answer from %s: %s", partner, exc)
        with self.service.sequencer.read() as conn:
            records = conversions_store.conversions_by_id(conn, [o[0] for o in opened])
        checked: list[_Checked] = []
        for conversion_id, kind, body, message in opened:
            try:
                checked.append(
                    self._check_answer(partner, records.get(conversion_id), kind, body, message)
                )
            except CoalitionError as exc:
                log.warning(
                    "refused %s's %s for conversion %s: %s", partner, kind, conversion_id, exc
                )

        def decisions() -> list[EntryDecision]:
            batch = _SourceBatch([c.conversion_id for c in checked])
            return [self._settle_decision(c, batch) for c in checked]

        results = self.service.sequencer.decide_each(decisions)
        settled: set[str] = set()
        for answer, result in zip(checked, results, strict=True):
            if isinstance(result, CoalitionError):
                log.error(
                    "conversion %s: cannot record the answer: %s", answer.conversion_id, result
                )
            else:
                settled.add(answer.conversion_id)
        return settled

    def _open_answer(self, partner: str, raw: JsonValue) -> tuple[str, str, JsonObject, JsonObject]:
        msg = SignedMessage.from_json(raw)
        envelope = open_message(msg, self.manifest.public_key)
        if envelope.sender != partner or envelope.to != self.program:
            raise VerificationError(
                f"an answer from {envelope.sender} to {envelope.to} came through {partner}"
            )
        if envelope.kind not in (RECEIPT, REJECTION):
            raise VerificationError(f"{envelope.kind} is not a conversion answer")
        conversion_id = envelope.body.get("conversion")
        if not isinstance(conversion_id, str):
            raise VerificationError("the answer names no conversion")
        return conversion_id, envelope.kind, envelope.body, msg.to_json()

    def _check_answer(
        self,
        partner: str,
        record: ConversionRecord | None,
        kind: str,
        body: JsonObject,
        message: JsonObject,
    ) -> _Checked:
        if record is None or record.to_program != partner:
            raise VerificationError(f"no conversion {body.get('conversion')} to {partner}")
        if kind == RECEIPT:
            if body.get("status") != "credited":
                raise VerificationError("a receipt's status must be credited")
            if body.get("credit") != record.credit:
                raise VerificationError(
                    f"the receipt credits {body.get('credit')!r}, the conversion {record.credit}"
                )
            in_entry, in_hash = body.get("in_entry"), body.get("in_hash")
            if not isinstance(in_entry, str) or not _ENTRY_ID.fullmatch(in_entry):
                raise VerificationError("the receipt names no convert-in entry")
            if not isinstance(in_hash, str) or not _HEX_HASH.fullmatch(in_hash):
                raise VerificationError("the receipt's in_hash is not 64 lowercase hex digits")
            return _Checked(record.id, kind, message, None)
        reason = body.get("reason")
        if body.get("status") != "rejected" or not isinstance(reason, str) or not reason:
            raise VerificationError("a rejection has status rejected and a reason")
        return _Checked(record.id, kind, message, reason)

    def _settle_decision(self, answer: _Checked, batch: _SourceBatch) -> EntryDecision:
        def decide(conn: Connection, ctx: EntryContext) -> Decision | None:
            record = batch.pending(conn, answer.conversion_id)
            if record is None:
                conversions_store.dequeue(conn, answer.conversion_id)
                return None  # answered before: nothing twice
            if answer.kind == RECEIPT:
                body = operations.convert_complete(ctx, record.account, record.id, answer.message)
                status = "completed"
            else:
                found = ledger_store.entry_by_id(conn, record.out_entry)
                if found is None:
                    raise NotFound(f"conversion {record.id} has no convert-out entry")
                body = operations.convert_refund(ctx, found[1], answer.message)
                status = "refunded"
            # The guard that counts: only the writer that moves the row off ``pending``
            # writes the entry (another replica on the same database may race us).
            finished = conversions_store.finish_conversion(
                conn, record, status, answer.reason, ctx.entry_id, ctx.at
            )
            batch.settled(record.id)
            conversions_store.dequeue(conn, record.id)
            if not finished:
                return None
            return body, [Account(record.account)], set()

        return decide

    # --- partner handlers (target side) ------------------------------------------------

    def _on_convert(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        """Credit or reject each conversion of the batch once; answer every one of them."""
        items = body.get("conversions")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise InvalidArgument(f"convert carries 1-{MAX_BATCH} conversions")
        parsed: list[tuple[str, JsonObject, str]] = []
        for item in items:
            if not isinstance(item, dict):
                raise InvalidArgument("each conversion is {out_entry, to_member_id}")
            out_entry, to_member = item.get("out_entry"), item.get("to_member_id")
            conversion_id = model.conversion_id(out_entry)
            if conversion_id is None or not isinstance(to_member, str):
                raise InvalidArgument("each conversion is {out_entry, to_member_id}")
            validate_reference(conversion_id, "conversion id")
            assert isinstance(out_entry, dict)
            parsed.append((conversion_id, out_entry, to_member))

        def decisions() -> list[EntryDecision]:
            batch = _TargetBatch(self, sender, [p[0] for p in parsed], [p[2] for p in parsed])
            return [self._credit_decision(batch, *p) for p in parsed]

        self._write_answers(decisions)
        return f"{CONVERT}-reply", self._stored_answers(sender, [p[0] for p in parsed])

    def _on_abort(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        """Answer each conversion: its receipt if credited, else record it as aborted."""
        ids = body.get("conversions")
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_BATCH:
            raise InvalidArgument(f"abort carries 1-{MAX_BATCH} conversion ids")
        for conversion_id in ids:
            if not isinstance(conversion_id, str):
                raise InvalidArgument("conversion ids are strings")
            validate_reference(conversion_id, "conversion id")
        wanted = [str(i) for i in ids]

        def decisions() -> list[EntryDecision]:
            batch = _TargetBatch(self, sender, wanted, [])
            return [self._abort_decision(batch, i) for i in wanted]

        self._write_answers(decisions)
        return f"{ABORT}-reply", self._stored_answers(sender, wanted)

    def _write_answers(self, decisions: Callable[[], list[EntryDecision]]) -> None:
        """Record the answers in one transaction; one that cannot be recorded (a conversion
        id no entry may carry) is logged and left unanswered, never holding up the rest of
        the batch."""
        for result in self.service.sequencer.decide_each(decisions):
            if isinstance(result, CoalitionError):
                log.warning("a conversion could not be answered: %s", result)

    def _stored_answers(self, sender: str, ids: list[str]) -> JsonObject:
        with self.service.sequencer.read() as conn:
            stored = conversions_store.answers(conn, sender, ids)
        unique = list(dict.fromkeys(ids))
        return {"receipts": [stored[i].message for i in unique if i in stored]}

    def _sign_answer(self, kind: str, to: str, body: JsonObject, at: datetime) -> JsonObject:
        return sign_message(self.service.signing_key, kind, self.program, to, body, at).to_json()

    def _credit_decision(
        self, batch: _TargetBatch, conversion_id: str, out_entry: JsonObject, to_member: str
    ) -> EntryDecision:
        sender = batch.sender

        def decide(conn: Connection, ctx: EntryContext) -> list[Decision] | None:
            if batch.answered(conn, conversion_id):
                return None  # answered before: the stored answer goes back
            try:
                credited, account, value, out_at = self._credit(
                    conn, ctx, batch, out_entry, to_member
                )
            except CoalitionError as exc:
                reason = _reason(str(exc))
                log.info("conversion %s from %s rejected: %s", conversion_id, sender, reason)
                decision = self._reject(
                    conn, ctx, sender, conversion_id, reason, _out_time(out_entry)
                )
                batch.answer(conversion_id)
                return [decision]
            convert_in = credited.typed
            assert isinstance(convert_in, model.ConvertIn)  # operations.convert_in built it
            receipt: JsonObject = {
                "conversion": conversion_id,
                "status": "credited",
                "in_entry": ctx.entry_id,
                "in_hash": entry_leaf_hash(credited).hex(),
                "credit": convert_in.amount,
            }
            conversions_store.insert_answer(
                conn,
                sender,
                conversion_id,
                Answer(
                    "credited", ctx.entry_id, self._sign_answer(RECEIPT, sender, receipt, ctx.at)
                ),
                value_minor=value,
                out_at=out_at,
                at=ctx.at,
            )
            batch.answer(conversion_id, value)
            if batch.enrolled(conn, to_member):
                return [(credited, [Account(account)], set())]
            # Enrolled by the conversion, as by a transfer: a member converting to an id
            # here learns nothing of which ids are enrolled (issue 11, class 9).
            opened = self.service.points.enrol_on_arrival(conn, to_member, account, ctx.at)
            batch.enrol(to_member, account)
            return [opened, (credited, opened[1], set())]

        return decide

    def _credit(
        self,
        conn: Connection,
        ctx: EntryContext,
        batch: _TargetBatch,
        out_entry: JsonObject,
        to_member: str,
    ) -> tuple[model.EntryBody, str, int, datetime]:
        """The convert-in entry for a partner's convert-out, or the reason to reject it."""
        sender = batch.sender
        if out_entry.get("program") != sender:
            raise InvalidArgument(f"the convert-out is not {sender}'s entry")
        try:
            out: model.ConvertOut = model.parse_as(out_entry, model.ConvertOut)
        except VerificationError as exc:
            raise InvalidArgument(str(exc)) from None
        agreement_id, version = out.conversion.agreement.key
        recorded = batch.agreements(conn)
        agreement = next(
            (a for a in recorded if (a.id, a.version) == (agreement_id, version)), None
        )
        if agreement is None:
            raise FailedPrecondition(f"agreement {agreement_id} v{version} is not recorded here")
        try:
            out_at = model.moment(out.at)
        except VerificationError:
            raise InvalidArgument("the convert-out has no valid time") from None
        if out_at > ctx.at + MAX_CLOCK_SKEW:
            # A convert-out is sent after it is written: one dated later would pick an
            # agreement (and a settlement period) that is not yet in force.
            raise FailedPrecondition(
                f"the convert-out is dated {format_time(out_at)}, after now ({format_time(ctx.at)})"
            )
        _check_in_force(current_agreements(recorded, out_at).get((sender, self.program)), agreement)
        account = batch.accounts(conn).get(validate_member_id(to_member))
        if account is None:  # enrolled by the credit (``_credit_decision``)
            account = self.service.points.account_for(to_member)
        quoted = quote(agreement, out.amount)
        limit = self.manifest.credit_limit(self.program, sender)
        if limit is not None:
            unsettled = batch.unsettled(conn)
            check_credit_limit(limit, unsettled, quoted.value_minor, sender, self.program)
        body = operations.convert_in(
            ctx,
            self.service.points.rules,
            account,
            out_entry,
            entry_leaf_hash(out_entry).hex(),
            agreement,
        )
        return body, account, quoted.value_minor, out_at

    def _reject(
        self,
        conn: Connection,
        ctx: EntryContext,
        sender: str,
        conversion_id: str,
        reason: str,
        out_at: datetime | None,
    ) -> Decision:
        body = operations.convert_reject(ctx, conversion_id, sender, reason)
        rejection: JsonObject = {
            "conversion": conversion_id,
            "status": "rejected",
            "reason": reason,
        }
        conversions_store.insert_answer(
            conn,
            sender,
            conversion_id,
            Answer(
                "rejected", ctx.entry_id, self._sign_answer(REJECTION, sender, rejection, ctx.at)
            ),
            value_minor=0,
            out_at=out_at,
            at=ctx.at,
        )
        return body, [], set()

    def _abort_decision(self, batch: _TargetBatch, conversion_id: str) -> EntryDecision:
        sender = batch.sender

        def decide(conn: Connection, ctx: EntryContext) -> Decision | None:
            if batch.answered(conn, conversion_id):
                return None  # credited or rejected before: that answer stands
            log.info("conversion %s from %s aborted before it arrived", conversion_id, sender)
            decision = self._reject(conn, ctx, sender, conversion_id, ABORTED, None)
            batch.answer(conversion_id)
            return decision

        return decide


class _SourceBatch:
    """The conversions a batch of answers settles, read once inside the writer's
    transaction (the first decision reads them; later ones see the batch's own changes)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self._ids = list(dict.fromkeys(ids))
        self._records: dict[str, ConversionRecord] | None = None

    def pending(self, conn: Connection, conversion_id: str) -> ConversionRecord | None:
        if self._records is None:
            self._records = conversions_store.conversions_by_id(conn, self._ids)
        record = self._records.get(conversion_id)
        return record if record is not None and record.status == "pending" else None

    def settled(self, conversion_id: str) -> None:
        assert self._records is not None
        self._records.pop(conversion_id, None)


class _TargetBatch:
    """What the decisions of one ``convert`` or ``abort`` message share, read once inside
    the writer's transaction: the answers already given, the recorded agreements and the
    members' accounts (a batch writes no agreement; the members it enrolls, ``enrol``)."""

    def __init__(
        self, owner: Conversions, sender: str, ids: Sequence[str], members: Sequence[str]
    ) -> None:
        self.sender = sender
        self._owner = owner
        self._ids = list(dict.fromkeys(ids))
        self._members = list(dict.fromkeys(members))
        self._answered: set[str] | None = None
        self._agreements: list[Agreement] | None = None
        self._accounts: dict[str, str] | None = None
        self._unsettled: int | None = None

    def answered(self, conn: Connection, conversion_id: str) -> bool:
        if self._answered is None:
            self._answered = set(conversions_store.answers(conn, self.sender, self._ids))
        return conversion_id in self._answered

    def answer(self, conversion_id: str, credited_minor: int = 0) -> None:
        """Note an answer just recorded (and what the sender owes for it, if credited)."""
        assert self._answered is not None
        self._answered.add(conversion_id)
        if self._unsettled is not None:
            self._unsettled += credited_minor

    def unsettled(self, conn: Connection) -> int:
        """What the sender owes here unsettled (``conversions_store.unsettled``), read once;
        the batch's own credits are added as they are recorded."""
        if self._unsettled is None:
            program = self._owner.program
            self._unsettled = conversions_store.unsettled(
                conn, program, self.sender, program, keep=True
            )
        return self._unsettled

    def agreements(self, conn: Connection) -> list[Agreement]:
        if self._agreements is None:
            self._agreements = self._owner.agreements.recorded(conn)
        return self._agreements

    def accounts(self, conn: Connection) -> dict[str, str]:
        if self._accounts is None:
            valid = [m for m in self._members if _valid_member(m)]
            self._accounts = members_store.accounts_for_members(conn, valid)
        return self._accounts

    def enrolled(self, conn: Connection, member_id: str) -> bool:
        """Whether ``member_id`` is enrolled here (before the batch, or by it)."""
        return member_id in self.accounts(conn)

    def enrol(self, member_id: str, account: str) -> None:
        """Note a member the batch just enrolled (``PointsService.enrol_on_arrival``)."""
        assert self._accounts is not None
        self._accounts[member_id] = account


def _dequeue(conn: Connection, conversion_ids: Iterable[str]) -> None:
    for conversion_id in conversion_ids:
        conversions_store.dequeue(conn, conversion_id)


def _valid_member(member_id: str) -> bool:
    try:
        validate_member_id(member_id)
    except CoalitionError:
        return False
    return True


def _pending_view(body: JsonObject, member_id: str, to_member_id: str) -> ConversionView:
    """The view of a conversion just written, from its own convert-out entry."""
    out: model.ConvertOut = model.parse_as(body, model.ConvertOut)
    conversion = out.conversion
    return ConversionView(
        id=conversion.id,
        member_id=member_id,
        to_program=conversion.to_program,
        to_member_id=to_member_id,
        agreement_id=conversion.agreement.id,
        agreement_version=conversion.agreement.version,
        amount=out.amount,
        fee=conversion.fee,
        net=conversion.net,
        credit=conversion.credit,
        value_minor=conversion.value_minor,
        currency=conversion.currency,
        status="pending",
        reason=None,
        created_at=out.at,
        out_entry=out.id,
        final_entry=None,
    )


def _out_time(out_entry: JsonObject) -> datetime | None:
    """When a partner's convert-out says it was written, read leniently (a rejection
    records it even for an entry that does not parse), or None."""
    at = out_entry.get("at")
    if not isinstance(at, str):
        return None
    try:
        return parse_time(at)
    except CoalitionError:
        return None


def _check_in_force(current: Agreement | None, named: Agreement) -> None:
    if current is None or (current.id, current.version) != (named.id, named.version):
        raise FailedPrecondition(
            f"agreement {named.id} v{named.version} was not the one in force at the convert-out"
        )
