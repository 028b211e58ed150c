"""Typed entries: every entry kind as a msgspec Struct, parsed once at the boundary.

An entry body (``coalition/entry/v1``, docs/proofs.md §2) is a JSON object whose
canonical bytes (RFC 8785) are hashed and signed, so the typed form MUST give back those
exact bytes: ``to_json(parse_entry(body))`` equals ``body`` for every entry a node
writes, and ``canonical_json`` of either is the same (tests/unit/test_entry_model.py
round-trips every kind). Parsing is strict: exact JSON types (``true`` is not an
integer), every field present, no field the kind does not declare (a field is added to
a kind only with a new version of the kind), times in the one canonical spelling. Rules
that need more than one field or the state (totals, lots, expiry) stay in
``points.state`` and ``points.replay``.

Which struct a ``kind`` names, and what each kind does, is ``points.kinds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from coalition.errors import VerificationError
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import CANONICAL_TIME, ENTRY_TYPE, canonical_time

__all__ = ["UNSET", "UnsetType"]

Time = Annotated[str, Meta(pattern=f"^{CANONICAL_TIME.pattern}\\Z")]
"""A time in ``format_time``'s spelling (``YYYY-MM-DDTHH:MM:SS.ffffffZ``); ``moment``
turns it into a datetime and refuses an impossible date."""
Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]
Reason: TypeAlias = dict[str, Any]
"""Why an entry happened (rule, event, reference, operator): told, not replayed, except
an earn's ``rule``/``event``/``reference`` (``state.earn_ref``)."""
Document: TypeAlias = dict[str, Any]
"""A document signed by both partners, embedded verbatim (its own checks: ``rates``,
``settlement``)."""


def moment(text: str) -> datetime:
    """The instant a ``Time`` field spells; VerificationError for an impossible date."""
    found = canonical_time(text)
    if found is None:
        raise VerificationError(f"not a valid date-time: {text!r}")
    return found


class Part(Struct, frozen=True, forbid_unknown_fields=True):
    """Base of the objects nested in entries: strict, immutable."""


class Taken(Part, frozen=True):
    """Points a debit takes from one lot."""

    lot: str
    amount: int


class TakenWithExpiry(Part, frozen=True):
    """A debit's part that may come back (convert-out, hold): its lot's expiry kept."""

    lot: str
    amount: int
    expires_at: Time


class TakenToLot(Part, frozen=True):
    """A transfer's part: taken from ``lot``, opened for the receiver as ``new_lot``."""

    lot: str
    amount: int
    new_lot: str
    expires_at: Time


class Restored(Part, frozen=True):
    """Points coming back as the new lot ``<entry id>:<n>``, with their old expiry."""

    lot: str
    amount: Positive
    expires_at: Time


class EarnedLot(Part, frozen=True):
    """The lot an earn opens."""

    id: str
    available_at: Time
    expires_at: Time
    qualifying: int


class CreditedLot(Part, frozen=True):
    """The lot a convert-in opens."""

    id: str
    available_at: Time
    expires_at: Time


class AgreementRef(Part, frozen=True):
    """How entries name a rate agreement: ``{"id", "version"}`` (``Agreement.ref()``)."""

    id: str
    version: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.version)


def agreement_key(value: object, what: str) -> tuple[str, int]:
    """``(id, version)`` of an agreement reference found in a partner's message (entries
    carry theirs typed, as ``AgreementRef``); VerificationError naming ``what``."""
    try:
        return msgspec.convert(value, AgreementRef).key
    except msgspec.ValidationError as exc:
        raise VerificationError(f"{what} names no agreement {{id, version}}: {exc}") from None


class _ConversionId(Struct, frozen=True):
    id: str


class _NamesConversion(Struct, frozen=True):
    conversion: _ConversionId


def conversion_id(body: object) -> str | None:
    """The conversion id an entry names (``conversion.id``), read leniently, or None: a
    partner's copy of its entry is answered by that id even when it does not parse."""
    try:
        return msgspec.convert(body, _NamesConversion).conversion.id
    except msgspec.ValidationError:
        return None


class SignedMessage(Part, frozen=True):
    """A partner's signed message as embedded in entries (``ledger.envelope``)."""

    envelope: Annotated[str, Meta(min_length=1)]
    signature: Annotated[str, Meta(min_length=1)]


class OutgoingConversion(Part, frozen=True):
    """A convert-out's conversion: the quote the member confirmed."""

    id: str
    to_program: str
    agreement: AgreementRef
    fee: NonNegative
    net: Positive
    credit: Positive
    rate: Annotated[list[int], Meta(min_length=2, max_length=2)]
    """The rate agreed, ``[num, den]``."""
    value_minor: NonNegative
    currency: str


class IncomingConversion(Part, frozen=True):
    """A convert-in's conversion: which convert-out it credits."""

    id: str
    from_program: str
    out_entry: str
    out_hash: str
    out_at: Time
    value_minor: NonNegative
    currency: str
    agreement: AgreementRef


class ConversionRef(Part, frozen=True):
    id: str


class RejectedConversion(Part, frozen=True):
    id: str
    from_program: str
    reason: str


class HoldTerms(Part, frozen=True):
    """What a hold holds its points for."""

    id: str
    partner: str
    reference: str
    expires_at: Time
    agreement: AgreementRef


class HoldRef(Part, frozen=True):
    id: str
    partner: str


class HoldEnd(Part, frozen=True):
    id: str
    partner: str
    why: Literal["void", "expired"]


class ReceivedHold(Part, frozen=True):
    """The hold a partner captured for us (redemption-receipt)."""

    id: str
    partner: str
    amount: Positive


class SignedAgreement(Part, frozen=True):
    agreement: Document
    signatures: Document


class SignedStatement(Part, frozen=True):
    statement: Document
    signatures: Document


class Rotation(Part, frozen=True):
    """A key rotation's ``rotation`` object; its rules are ``ledger.rotation``'s."""

    epoch: Positive
    key: str
    key_id: str
    previous_key_id: str
    signature: str
    proof: str


class Entry(Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    """The envelope every entry shares; ``kind`` is the tag naming the subclass."""

    type: Literal["coalition/entry/v1"]
    program: str
    id: str
    at: Time
    account: str


class Enroll(Entry, tag="enroll", frozen=True):
    reason: Reason


class Earn(Entry, tag="earn", frozen=True):
    amount: int
    lot: EarnedLot
    reason: Reason


class Redeem(Entry, tag="redeem", frozen=True):
    amount: int
    taken: list[Taken]
    reason: Reason


class Transfer(Entry, tag="transfer", frozen=True):
    to: str
    amount: int
    taken: list[TakenToLot]
    reason: Reason


class Expire(Entry, tag="expire", frozen=True):
    amount: int
    taken: list[Taken]
    reason: Reason


class Reverse(Entry, tag="reverse", frozen=True):
    """A refunded purchase's points taken back (``lot`` names the earn)."""

    lot: str
    amount: int
    written_off: int
    taken: list[Taken]
    reason: Reason


class Revoke(Reverse, tag="revoke", frozen=True):
    """An earn revoked by an operator: the fields of ``reverse``."""


class Adjust(Entry, tag="adjust", frozen=True):
    """A credit (``lot`` and ``expires_at``) or a debit (``taken``); never both."""

    amount: int
    reason: Reason
    lot: str | UnsetType = UNSET
    expires_at: Time | UnsetType = UNSET
    taken: list[Taken] | UnsetType = UNSET


class ConvertOut(Entry, tag="convert-out", frozen=True):
    amount: Positive
    taken: list[TakenWithExpiry]
    conversion: OutgoingConversion


class ConvertIn(Entry, tag="convert-in", frozen=True):
    amount: Positive
    lot: CreditedLot
    conversion: IncomingConversion


class ConvertComplete(Entry, tag="convert-complete", frozen=True):
    conversion: ConversionRef
    receipt: SignedMessage


class ConvertRefund(Entry, tag="convert-refund", frozen=True):
    amount: Positive
    restored: Annotated[list[Restored], Meta(min_length=1)]
    conversion: ConversionRef
    rejection: SignedMessage


class ConvertReject(Entry, tag="convert-reject", frozen=True):
    conversion: RejectedConversion


class Hold(Entry, tag="hold", frozen=True):
    amount: Positive
    taken: list[TakenWithExpiry]
    hold: HoldTerms


class HoldCapture(Entry, tag="hold-capture", frozen=True):
    amount: Positive
    hold: HoldRef
    value_minor: NonNegative
    currency: str


class HoldRelease(Entry, tag="hold-release", frozen=True):
    amount: Positive
    restored: Annotated[list[Restored], Meta(min_length=1)]
    hold: HoldEnd


class RedemptionReceipt(Entry, tag="redemption-receipt", frozen=True):
    hold: ReceivedHold
    value_minor: NonNegative
    currency: str
    captured_at: Time
    receipt: SignedMessage


class AgreementRecord(Entry, tag="agreement", frozen=True):
    agreement: SignedAgreement


class StatementRecord(Entry, tag="statement", frozen=True):
    statement: SignedStatement


class KeyRotationRecord(Entry, tag="key-rotation", frozen=True):
    rotation: Rotation


ENTRY_TYPES: tuple[type[Entry], ...] = (
    Enroll,
    Earn,
    Redeem,
    Transfer,
    Expire,
    Reverse,
    Revoke,
    Adjust,
    ConvertOut,
    ConvertIn,
    ConvertComplete,
    ConvertRefund,
    ConvertReject,
    Hold,
    HoldCapture,
    HoldRelease,
    RedemptionReceipt,
    AgreementRecord,
    StatementRecord,
    KeyRotationRecord,
)
"""Every entry struct, in the order docs/proofs.md lists the kinds (``points.kinds``
attaches each to its kind's declaration)."""

AnyEntry: TypeAlias = (
    Enroll
    | Earn
    | Redeem
    | Transfer
    | Expire
    | Reverse
    | Revoke
    | Adjust
    | ConvertOut
    | ConvertIn
    | ConvertComplete
    | ConvertRefund
    | ConvertReject
    | Hold
    | HoldCapture
    | HoldRelease
    | RedemptionReceipt
    | AgreementRecord
    | StatementRecord
    | KeyRotationRecord
)


def kind_of(struct: type[Entry]) -> str:
    """The ``kind`` tag of an entry struct."""
    tag = struct.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


_BY_KIND: dict[str, type[Entry]] = {kind_of(t): t for t in ENTRY_TYPES}


def parse_entry(body: object) -> Entry:
    """The typed entry for ``body`` (a parsed JSON object), or VerificationError naming
    the entry and the offending field (wrong type, missing, unknown, unknown kind)."""
    kind = body.get("kind") if isinstance(body, dict) else None
    struct = _BY_KIND.get(kind) if isinstance(kind, str) else None
    try:
        if struct is None:  # the union names the unknown kind (or what is not an object)
            found: Entry = msgspec.convert(body, AnyEntry)
            return found
        # One struct, not the union: msgspec converts to the union ten times slower.
        return msgspec.convert(body, struct)
    except msgspec.ValidationError as exc:
        raise VerificationError(f"{_named(body)}: {exc}") from None


def parse_as(body: object, struct: type[Entry]) -> Any:
    """``parse_entry`` restricted to one kind: VerificationError for any other kind."""
    if isinstance(body, dict) and body.get("kind") != kind_of(struct):
        raise VerificationError(f"{_named(body)}: expected a {kind_of(struct)} entry")
    return parse_entry(body)


def _named(body: object) -> str:
    if not isinstance(body, dict):
        return "an entry must be a JSON object"
    return f"entry {body.get('id')} ({body.get('kind')})"


def to_json(value: Entry | Part) -> JsonObject:
    """The JSON object of a typed entry (or part of one): ``canonical_json`` of an entry's
    is the entry's bytes."""
    out: JsonObject = msgspec.to_builtins(value)
    return out


class EntryBody(dict[str, Any]):
    """A new entry's JSON body as the node built it (``build_entry``), carrying the typed
    entry it was checked as in ``typed``: the sequencer applies ``typed`` and encodes the
    body, so a node-built entry is parsed once. It MUST NOT be changed once built (its
    ``typed`` would no longer be its body): change a copy (``copy.deepcopy`` or a pickle of
    it is a plain dict, parsed again)."""

    __slots__ = ("typed",)
    typed: Entry

    def __init__(self, body: dict[str, Any], typed: Entry) -> None:
        super().__init__(body)
        self.typed = typed

    def __reduce_ex__(self, protocol: object) -> tuple[type[dict[str, Any]], tuple[JsonObject]]:
        return (dict, (dict(self),))


def build_entry(
    kind: str, program: str, entry_id: str, at: str, account: str, fields: Mapping[str, object]
) -> EntryBody:
    """A new entry's body, checked against its kind's struct: the node writes only
    entries that parse. The body is plain JSON (what is stored and hashed), its members
    in the envelope's order, then ``fields``, and carries its typed entry. Raises
    VerificationError (a node bug: operations validate their inputs first)."""
    struct = _BY_KIND.get(kind)
    if struct is None:
        raise VerificationError(f"unknown entry kind {kind!r}")
    body = EntryBody.__new__(EntryBody)  # filled in place: no copy of a plain dict
    dict.__init__(
        body,
        {"type": ENTRY_TYPE, "program": program, "id": entry_id, "kind": kind, "at": at},
        account=account,
        **fields,
    )
    body.typed = parse_as(body, struct)
    return body


def typed_entry(body: JsonObject) -> Entry:
    """The typed entry of ``body``: the one it was built with (``EntryBody``), else parsed
    (``parse_entry``)."""
    return body.typed if type(body) is EntryBody else parse_entry(body)
