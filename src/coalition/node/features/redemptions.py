"""Cross-brand redemption: a member of A spends A points at partner B (docs/coalition.md).

Asking side (B, where the member spends): ``authorize`` sends ``hold-authorize`` to A,
then ``capture`` or ``void`` sends ``hold-capture`` / ``hold-void``. On capture B records
a ``redemption-receipt`` entry embedding A's signed capture receipt, so B's chain shows
what A owes it. A redemption B asked for is recorded (``pending``) before the message
leaves, so a retry with the same idempotency key reuses its hold id.

Issuing side (A, whose points are spent): the handlers write ``hold``, ``hold-capture``
and ``hold-release`` entries once per hold id and sign a receipt for each in the same
transaction; a repeated message gets the very same signed receipt. A hold is priced
(``value_minor``) at capture by the agreement it was made under; capture at or after the
hold's ``expires_at`` is refused, and ``release_expired`` (the node's scheduled job)
gives expired holds back to their members.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from coalition.errors import (
    CoalitionError,
    CorruptStore,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PartnerUnavailable,
    VerificationError,
    quoted,
)
from coalition.ledger.canonical import MAX_SAFE_INTEGER, JsonObject, canonical_json
from coalition.ledger.entries import check_program_id, check_time, entry_leaf_hash, format_time
from coalition.ledger.envelope import SignedMessage, open_message, sign_message
from coalition.node.features.agreements import Agreements
from coalition.node.idempotency import OPERATOR, KeyScope
from coalition.node.manifest import Manifest
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.sequencer import (
    Decision,
    EntryDecision,
    Transaction,
    idempotency_conflict,
)
from coalition.node.service import NodeService
from coalition.points import model, operations
from coalition.points.accounts import validate_member_id, validate_reference
from coalition.points.operations import EntryContext
from coalition.points.rates import redemption_value
from coalition.points.state import Account
from coalition.store import ledger as ledger_store
from coalition.store import members as members_store
from coalition.store import redemptions as redemptions_store
from coalition.store.redemptions import Hold, PartnerRedemption

log = logging.getLogger(__name__)

AUTHORIZE = "hold-authorize"
CAPTURE = "hold-capture"
VOID = "hold-void"
HOLD_RECEIPT = "hold-receipt"
CAPTURE_RECEIPT = "hold-capture-receipt"
RELEASE_RECEIPT = "hold-release-receipt"
MAX_HOLD_S = 30 * 24 * 3600
"""Longest a hold may last: a redemption is captured or voided within 30 days."""
CALL_TIMEOUT_S = 10.0
SWEEP_BATCH = 500
HOLD_ID = re.compile(r"[0-9a-f]{32}")
"""A hold id (the whole string): 32 lowercase hex digits."""


def check_hold_id(hold_id: object) -> str:
    """Hold ids are 32 lowercase hex digits, chosen at random by the asking partner."""
    if not isinstance(hold_id, str) or not HOLD_ID.fullmatch(hold_id):
        raise InvalidArgument(f"a hold id is 32 lowercase hex digits, not {quoted(hold_id)}")
    return hold_id


def _whole(value: object, what: str, least: int, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
        raise InvalidArgument(f"{what} must be an integer in [{least}, {most}], got {value!r}")
    return value


def _hash(request: JsonObject) -> str:
    return hashlib.sha256(canonical_json(request)).hexdigest()


@dataclass(frozen=True, slots=True)
class RedemptionView:
    """A redemption as the asking partner's operator sees it.

    ``status``: ``pending`` (no answer from the issuer yet), ``authorized``, ``captured``,
    ``voided``, ``expired`` (authorized but past ``expires_at``, or released as expired)
    or ``refused``. The receipts are the issuer's signed messages, verbatim.
    """

    hold_id: str
    program: str
    member_id: str
    amount: int
    reference: str
    status: str
    created_at: str
    expires_at: str | None
    agreement_id: str | None
    agreement_version: int | None
    value_minor: int | None
    currency: str | None
    receipt_entry: str | None
    reason: str | None
    authorization: JsonObject | None
    capture: JsonObject | None
    release: JsonObject | None
    replayed: bool = False
    """Set by ``authorize`` when its idempotency key was seen before (the first request's
    redemption, as it stands now); False on every other call."""


class Redemptions:
    """Cross-brand redemptions of one node: both the asking and the issuing side."""

    def __init__(
        self,
        service: NodeService,
        manifest: Manifest,
        client: PartnerClient,
        agreements: Agreements,
        *,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.manifest = manifest
        self.client = client
        self.agreements = agreements
        self.program = service.program
        self._timeout = call_timeout_s

    # --- feature life cycle ------------------------------------------------------------

    def register(self, inbox: PartnerInbox) -> None:
        inbox.register(AUTHORIZE, self._on_authorize)
        inbox.register(CAPTURE, self._on_capture)
        inbox.register(VOID, self._on_void)

    def start(self) -> None:
        """Nothing runs in the background: the node's scheduler calls ``release_expired``."""

    def stop(self) -> None:
        """Nothing to stop."""

    # --- asking side (B) ----------------------------------------------------------------

    def authorize(
        self,
        program: str,
        member_id: str,
        amount: int,
        reference: str,
        expires_in_s: int,
        *,
        idempotency_key: str,
        scope: KeyScope = OPERATOR,
    ) -> RedemptionView:
        """Ask ``program`` to hold ``amount`` of its member ``member_id``'s points for a
        redemption here. The same idempotency key and request return the same redemption
        (resending to the issuer while it is still ``pending``); the issuer's refusal
        (unknown member, too few points, no agreement in force) is raised as it came and
        leaves nothing behind, so the key may be retried. Keys are the caller's
        (``scope``, ``node.idempotency``); only operators ask, so in practice the
        operator scope."""
        self._check_partner(program)
        validate_member_id(member_id)
        _whole(amount, "amount", 1, MAX_SAFE_INTEGER)
        validate_reference(reference, "redemption reference")
        _whole(expires_in_s, "expires_in_s", 1, MAX_HOLD_S)
        validate_reference(idempotency_key, "idempotency key")
        request: JsonObject = {
            "op": "partner-redemption",
            "program": program,
            "member_id": member_id,
            "amount": amount,
            "reference": reference,
            "expires_in_s": expires_in_s,
        }
        found, replayed = self._start(
            idempotency_key, scope.stored(idempotency_key), _hash(request), request
        )
        view = self._view(found) if found.status != "pending" else self._send_authorize(found)
        return replace(view, replayed=replayed)

    def _start(
        self, key: str, stored: str, request_hash: str, request: JsonObject
    ) -> tuple[PartnerRedemption, bool]:
        """The redemption stored under ``stored`` (the caller's ``key`` in its scope),
        inserted as ``pending`` when new, and whether it was there before (a replay)."""

        def start(tx: Transaction) -> tuple[PartnerRedemption, bool]:
            found = redemptions_store.redemption_by_key(tx.conn, stored)
            if found is not None:
                if found.request_hash != request_hash:
                    raise idempotency_conflict(key)
                return found, True
            hold_id = secrets.token_hex(16)
            redemptions_store.insert_redemption(
                tx.conn,
                hold_id=hold_id,
                program=str(request["program"]),
                member_id=str(request["member_id"]),
                amount=int(request["amount"]),  # type: ignore[arg-type]
                reference=str(request["reference"]),
                expires_in_s=int(request["expires_in_s"]),  # type: ignore[arg-type]
                idem_key=stored,
                request_hash=request_hash,
                created_at=tx.now(),
            )
            inserted = redemptions_store.redemption(tx.conn, hold_id)
            assert inserted is not None
            return inserted, False

        for _ in range(2):
            try:
                return self.service.sequencer.run(start)
            except IntegrityError:
                continue  # another replica with the same key inserted it first
        raise FailedPrecondition(f"idempotency key {key} is being used concurrently; retry")

    def _send_authorize(self, row: PartnerRedemption) -> RedemptionView:
        body: JsonObject = {
            "hold": row.hold_id,
            "member_id": row.member_id,
            "amount": row.amount,
            "reference": row.reference,
            "expires_in_s": row.expires_in_s,
        }
        try:
            reply = self._call(row.program, AUTHORIZE, body)
        except (PartnerUnavailable, VerificationError):
            raise  # no trustworthy answer: the redemption stays pending, a retry resends
        except CoalitionError:
            self.service.sequencer.run(
                lambda tx: redemptions_store.delete_pending(tx.conn, row.hold_id)
            )
            raise
        receipt, answer = self._open_receipt(row, reply, HOLD_RECEIPT)
        if answer.get("status") != "held" or answer.get("reference") != row.reference:
            raise VerificationError(f"{row.program}'s hold receipt for {row.hold_id} differs")
        if "expires_at" not in answer:
            raise VerificationError("a hold receipt has no 'expires_at'")
        expires_at = check_time(answer["expires_at"], "expires_at")
        agreement = model.agreement_key(answer.get("agreement"), "a hold receipt")
        self.service.sequencer.run(
            lambda tx: redemptions_store.authorize_redemption(
                tx.conn,
                row.hold_id,
                expires_at=expires_at,
                agreement=agreement,
                authorization=receipt,
            )
        )
        return self.get(row.hold_id)

    def capture(self, hold_id: str) -> RedemptionView:
        """Capture an authorized redemption: the issuer debits the held points for good and
        signs what it owes; this node records that receipt as a ``redemption-receipt``
        entry, once. Capturing again returns the same redemption."""
        row = self._row(hold_id)
        if row.status == "captured":
            return self._view(row)
        self._require_authorized(row, "capture")
        reply = self._call(row.program, CAPTURE, {"hold": row.hold_id})
        receipt, answer = self._open_receipt(row, reply, CAPTURE_RECEIPT)
        value_minor, currency, captured_at = self._check_capture(row, answer)

        def decide(conn: Connection, ctx: EntryContext) -> Decision | None:
            current = redemptions_store.redemption(conn, row.hold_id)
            if current is None or current.status == "captured":
                return None
            body = operations.redemption_receipt(
                ctx,
                row.hold_id,
                row.program,
                row.amount,
                value_minor,
                currency,
                captured_at,
                receipt,
            )
            redemptions_store.capture_redemption(
                conn,
                row.hold_id,
                value_minor=value_minor,
                currency=currency,
                capture=receipt,
                receipt_entry=ctx.entry_id,
            )
            return body, [], set()

        self.service.sequencer.decide(decide)
        return self.get(row.hold_id)

    def void(self, hold_id: str) -> RedemptionView:
        """Void a redemption not captured: the issuer gives the points back. Voiding again
        returns the same redemption; a captured one cannot be voided."""
        row = self._row(hold_id)
        if row.status in ("voided", "expired", "refused"):
            return self._view(row)
        if row.status == "captured":
            raise FailedPrecondition(f"redemption {hold_id} was captured; it cannot be voided")
        try:
            reply = self._call(row.program, VOID, {"hold": row.hold_id})
        except NotFound:
            if row.status != "pending":
                raise
            # The issuer never made this hold: nothing to give back.
            self.service.sequencer.run(
                lambda tx: redemptions_store.end_redemption(
                    tx.conn, row.hold_id, status="refused", reason="voided before authorization"
                )
            )
            return self.get(row.hold_id)
        receipt, answer = self._open_receipt(row, reply, RELEASE_RECEIPT)
        why = answer.get("why")
        if answer.get("status") != "released" or why not in ("void", "expired"):
            raise VerificationError(f"{row.program}'s release receipt for {hold_id} is malformed")
        self.service.sequencer.run(
            lambda tx: redemptions_store.end_redemption(
                tx.conn,
                row.hold_id,
                status="voided" if why == "void" else "expired",
                reason=None,
                release=receipt,
            )
        )
        return self.get(row.hold_id)

    def get(self, hold_id: str) -> RedemptionView:
        """The redemption started here under ``hold_id``; NotFound otherwise."""
        return self._view(self._row(hold_id))

    def _row(self, hold_id: str) -> PartnerRedemption:
        check_hold_id(hold_id)
        with self.service.sequencer.read() as conn:
            row = redemptions_store.redemption(conn, hold_id)
        if row is None:
            raise NotFound(f"no partner redemption {hold_id} here")
        return row

    def _require_authorized(self, row: PartnerRedemption, what: str) -> None:
        if row.status == "pending":
            raise FailedPrecondition(
                f"redemption {row.hold_id} is not authorized yet: retry its authorization"
            )
        if row.status != "authorized":
            raise FailedPrecondition(f"redemption {row.hold_id} is {row.status}; cannot {what}")

    def _check_partner(self, program: str) -> None:
        check_program_id(program, "program")
        if program == self.program:
            raise InvalidArgument("a partner redemption spends another program's points")
        self.manifest.partner(program)

    def _call(self, program: str, kind: str, body: JsonObject) -> JsonObject:
        reply_kind, reply = self.client.call(program, kind, body, self._timeout)
        if reply_kind != f"{kind}-reply":
            raise VerificationError(f"{program} answered {kind} with {reply_kind}")
        return reply

    def _open_receipt(
        self, row: PartnerRedemption, reply: JsonObject, kind: str
    ) -> tuple[JsonObject, JsonObject]:
        """The signed receipt in ``reply`` and its body, once it verifies as the issuer's
        ``kind`` receipt for this hold and amount, addressed to this program."""
        raw = reply.get("receipt")
        try:
            msg = SignedMessage.from_json(raw)
            envelope = open_message(msg, self.manifest.public_key)
        except InvalidArgument as exc:
            raise VerificationError(f"{row.program}'s {kind} is malformed: {exc}") from None
        if envelope.sender != row.program or envelope.to != self.program:
            raise VerificationError(
                f"the {kind} for {row.hold_id} is from {envelope.sender} to {envelope.to}"
            )
        body = envelope.body
        if envelope.kind != kind or body.get("hold") != row.hold_id:
            raise VerificationError(
                f"{row.program} answered hold {row.hold_id} with a {envelope.kind} "
                f"for {body.get('hold')!r}"
            )
        if body.get("amount") != row.amount:
            raise VerificationError(
                f"{row.program}'s {kind} for {row.hold_id} is for {body.get('amount')!r} "
                f"points, not {row.amount}"
            )
        return msg.to_json(), body

    def _check_capture(
        self, row: PartnerRedemption, answer: JsonObject
    ) -> tuple[int, str, datetime]:
        """(value_minor, currency, captured_at) of a capture receipt, checked against the
        agreement the hold was authorized under, as this node recorded it."""
        what = f"{row.program}'s capture receipt for {row.hold_id}"
        if answer.get("status") != "captured":
            raise VerificationError(f"{what} does not say captured")
        if model.agreement_key(answer.get("agreement"), what) != (
            row.agreement_id,
            row.agreement_version,
        ):
            raise VerificationError(f"{what} names another agreement than the authorization")
        value_minor = answer.get("value_minor")
        currency = answer.get("currency")
        if not isinstance(value_minor, int) or isinstance(value_minor, bool) or value_minor < 0:
            raise VerificationError(f"{what} has a bad value_minor {value_minor!r}")
        if not isinstance(currency, str):
            raise VerificationError(f"{what} has no currency")
        try:
            captured_at = check_time(answer.get("captured_at"), "captured_at")
        except InvalidArgument as exc:
            raise VerificationError(f"{what}: {exc}") from None
        assert row.agreement_id is not None and row.agreement_version is not None
        with self.service.sequencer.read() as conn:
            agreement = self.agreements.get(conn, row.agreement_id, row.agreement_version)
        if agreement is None:
            raise VerificationError(
                f"{what}: agreement {row.agreement_id} v{row.agreement_version} is not "
                "recorded here"
            )
        expected = redemption_value(agreement, row.amount)
        if value_minor != expected or currency != agreement.currency:
            raise VerificationError(
                f"{what} says {value_minor} {currency}; the agreement gives {expected} "
                f"{agreement.currency}"
            )
        return value_minor, currency, captured_at

    def _view(self, row: PartnerRedemption) -> RedemptionView:
        status = row.status
        expires_at = row.expires_at
        if status == "authorized" and expires_at is not None and self.service.now() >= expires_at:
            status = "expired"
        return RedemptionView(
            hold_id=row.hold_id,
            program=row.program,
            member_id=row.member_id,
            amount=row.amount,
            reference=row.reference,
            status=status,
            created_at=format_time(row.created_at),
            expires_at=None if row.expires_at is None else format_time(row.expires_at),
            agreement_id=row.agreement_id,
            agreement_version=row.agreement_version,
            value_minor=row.value_minor,
            currency=row.currency,
            receipt_entry=row.receipt_entry,
            reason=row.reason,
            authorization=row.authorization,
            capture=row.capture,
            release=row.release,
        )

    # --- issuing side (A) ---------------------------------------------------------------

    def _receipt(self, to: str, kind: str, body: JsonObject, at: datetime) -> JsonObject:
        key = self.service.signing_key
        return sign_message(key, kind, self.program, to, body, at).to_json()

    def _on_authorize(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        expected = {"hold", "member_id", "amount", "reference", "expires_in_s"}
        if set(body) != expected:
            raise InvalidArgument(f"a {AUTHORIZE} body has exactly {sorted(expected)}")
        hold_id = check_hold_id(body["hold"])
        member_id = validate_member_id(body["member_id"])  # type: ignore[arg-type]
        amount = _whole(body["amount"], "amount", 1, MAX_SAFE_INTEGER)
        reference = validate_reference(body["reference"], "redemption reference")  # type: ignore[arg-type]
        expires_in_s = _whole(body["expires_in_s"], "expires_in_s", 1, MAX_HOLD_S)
        request_hash = _hash({"partner": sender, **body})

        def decide(conn: Connection, ctx: EntryContext) -> Decision | None:
            found = redemptions_store.hold(conn, hold_id)
            if found is not None:
                if found.partner != sender or found.request_hash != request_hash:
                    raise FailedPrecondition(f"hold id {hold_id} was used for another request")
                return None
            account = members_store.account_of_member(conn, member_id)
            if account is None:
                raise NotFound(f"unknown member {member_id} at {self.program}")
            agreement = self.agreements.require(conn, self.program, sender, ctx.at)
            touched, known = self.service.points.load_debit(conn, account, amount, ctx.at)
            expires_at = ctx.at + timedelta(seconds=expires_in_s)
            entry = operations.hold(
                ctx,
                self.service.points.rules,
                touched[0],
                hold_id,
                sender,
                reference,
                amount,
                expires_at,
                agreement,
            )
            receipt = self._receipt(
                sender,
                HOLD_RECEIPT,
                {
                    "hold": hold_id,
                    "status": "held",
                    "amount": amount,
                    "reference": reference,
                    "expires_at": format_time(expires_at),
                    "agreement": agreement.ref(),
                    "entry": ctx.entry_id,
                    "entry_hash": entry_leaf_hash(entry).hex(),
                },
                ctx.at,
            )
            redemptions_store.insert_hold(
                conn,
                hold_id=hold_id,
                partner=sender,
                account=account,
                amount=amount,
                reference=reference,
                request_hash=request_hash,
                expires_at=expires_at,
                hold_entry=ctx.entry_id,
                receipt=receipt,
            )
            return entry, touched, known

        self.service.sequencer.decide(decide)
        return f"{AUTHORIZE}-reply", {"receipt": self._held(hold_id, sender).receipt}

    def _held(self, hold_id: str, sender: str) -> Hold:
        """The hold ``sender`` asked for; NotFound for an unknown or another partner's."""
        with self.service.sequencer.read() as conn:
            found = redemptions_store.hold(conn, hold_id)
        if found is None or found.partner != sender:
            raise NotFound(f"{self.program} holds nothing under {hold_id} for {sender}")
        return found

    def _hold_entry(self, conn: Connection, found: Hold) -> JsonObject:
        stored = ledger_store.entry_by_id(conn, found.hold_entry)
        if stored is None:
            raise CorruptStore(f"hold {found.hold_id}: its entry {found.hold_entry} is missing")
        return stored[1]

    def _only_hold(self, body: JsonObject, kind: str) -> str:
        if set(body) != {"hold"}:
            raise InvalidArgument(f"a {kind} body is {{hold}}")
        return check_hold_id(body["hold"])

    def _on_capture(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        hold_id = self._only_hold(body, CAPTURE)
        self._held(hold_id, sender)

        def decide(conn: Connection, ctx: EntryContext) -> Decision | None:
            found = redemptions_store.hold(conn, hold_id)
            assert found is not None
            if found.status == "captured":
                return None
            if found.status == "released":
                raise FailedPrecondition(f"hold {hold_id} was released ({found.why})")
            if ctx.at >= found.expires_at:
                raise FailedPrecondition(
                    f"hold {hold_id} expired at {format_time(found.expires_at)}: capture refused"
                )
            hold_entry = self._hold_entry(conn, found)
            held: model.Hold = model.parse_as(hold_entry, model.Hold)
            agreement_id, version = held.hold.agreement.key
            agreement = self.agreements.get(conn, agreement_id, version)
            if agreement is None:
                raise CorruptStore(f"hold {hold_id}: agreement {agreement_id} v{version} missing")
            value_minor = redemption_value(agreement, found.amount)
            entry = operations.hold_capture(ctx, hold_entry, value_minor, agreement.currency)
            receipt = self._receipt(
                sender,
                CAPTURE_RECEIPT,
                {
                    "hold": hold_id,
                    "status": "captured",
                    "amount": found.amount,
                    "value_minor": value_minor,
                    "currency": agreement.currency,
                    "captured_at": format_time(ctx.at),
                    "agreement": agreement.ref(),
                    "entry": ctx.entry_id,
                    "entry_hash": entry_leaf_hash(entry).hex(),
                },
                ctx.at,
            )
            redemptions_store.finish_hold(
                conn,
                hold_id,
                status="captured",
                why=None,
                end_entry=ctx.entry_id,
                value_minor=value_minor,
                end_receipt=receipt,
            )
            return entry, [Account(found.account)], set()

        self.service.sequencer.decide(decide)
        return f"{CAPTURE}-reply", {"receipt": self._end_receipt(hold_id, sender)}

    def _on_void(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        hold_id = self._only_hold(body, VOID)
        self._held(hold_id, sender)
        self.service.sequencer.decide(self._release(hold_id, voided=True))
        return f"{VOID}-reply", {"receipt": self._end_receipt(hold_id, sender)}

    def _end_receipt(self, hold_id: str, sender: str) -> JsonObject:
        found = self._held(hold_id, sender)
        if found.end_receipt is None:
            raise CorruptStore(f"hold {hold_id} is {found.status} without a receipt")
        return found.end_receipt

    def _release(self, hold_id: str, *, voided: bool) -> EntryDecision:
        """The decision releasing a hold: voided by its partner (``expired`` once past its
        time), or by the expiry job; nothing for a hold already released."""

        def decide(conn: Connection, ctx: EntryContext) -> Decision | None:
            found = redemptions_store.hold(conn, hold_id)
            if found is None or found.status == "released":
                return None
            if found.status == "captured":
                if voided:
                    raise FailedPrecondition(f"hold {hold_id} was captured; it cannot be voided")
                return None
            expired = ctx.at >= found.expires_at
            if not voided and not expired:
                return None
            why = "expired" if expired else "void"
            entry = operations.hold_release(ctx, self._hold_entry(conn, found), why)
            receipt = self._receipt(
                found.partner,
                RELEASE_RECEIPT,
                {
                    "hold": hold_id,
                    "status": "released",
                    "why": why,
                    "amount": found.amount,
                    "entry": ctx.entry_id,
                    "entry_hash": entry_leaf_hash(entry).hex(),
                },
                ctx.at,
            )
            redemptions_store.finish_hold(
                conn,
                hold_id,
                status="released",
                why=why,
                end_entry=ctx.entry_id,
                value_minor=None,
                end_receipt=receipt,
            )
            return entry, [Account(found.account)], set()

        return decide

    def _expiry_releases(self, due: list[str]) -> list[EntryDecision]:
        return [self._release(hold_id, voided=False) for hold_id in due]

    def release_expired(self, batch: int = SWEEP_BATCH) -> int:
        """Release every hold whose ``expires_at`` has come (``why: expired``), a batch per
        transaction; the number released. Safe to run at any time, from any scheduler."""
        released = 0
        while True:
            with self.service.sequencer.read() as conn:
                due = redemptions_store.due_holds(conn, self.service.now(), batch)
            if not due:
                return released
            results = self.service.sequencer.decide_each(partial(self._expiry_releases, due))
            done = 0
            for hold_id, result in zip(due, results, strict=True):
                if isinstance(result, CoalitionError):
                    log.error("hold %s: the expiry release failed: %s", hold_id, result)
                elif result is not None:
                    done += 1
            released += done
            if done == 0 or len(due) < batch:
                return released
