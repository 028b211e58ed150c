"""The registry of entry kinds: what each kind holds, and what each part of the system
does with it.

Every kind declares its fields and their types (its ``points.model`` struct), its effect
in replay, its part in cross-chain reconciliation and in settlement, and how the explorer
shows it. Every set of kinds used anywhere (program kinds, the fast replay's kinds, the
kinds the cross-chain and settlement checks read, the explorer's flow kinds) is derived
here, so a new kind is added in one place; tests/unit/test_kinds.py fails when a
consumer does not handle a declared role, and when docs/proofs.md's kinds table is not
``markdown_table()``.

To add a kind: declare its struct in ``points.model`` (and in ``ENTRY_TYPES``), its
``Kind`` here, its effect in ``points.state`` (``_MEMBER_EFFECTS`` or
``_PROGRAM_CHECKS``), its cross-entry rule in ``points.replay`` if it has a cross-chain
role, its reading in ``points.settlement.priced`` if it is owed, its flow in
``explorer.flows`` if it has one, an ``operations`` function that writes it and a sample
in tests/unit/kind_samples.py; then run scripts/update_kinds_doc.py.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import msgspec

from coalition.points import model


class Scope(enum.Enum):
    """Whose entry it is: a member's (``account`` is the member's pseudonymous account)
    or the program's (``account`` is ``"-"``; no balance changes)."""

    MEMBER = "member"
    PROGRAM = "program"


class Effect(enum.Enum):
    """What replay (``points.state.apply_entry``) does with the entry."""

    OPEN_ACCOUNT = "opens the account"
    CREDIT = "opens a lot"
    DEBIT = "debits spendable lots"
    MOVE = "moves spendable lots to another account"
    EXPIRE = "debits expired lots"
    CLAW_BACK = "takes back an earn's points"
    ADJUST = "opens a lot (credit) or debits lots (debit)"
    SEND = "debits spendable lots into flight"
    HOLD = "debits spendable lots into a hold"
    RESTORE = "reopens the points that left, as new lots"
    CLOSE = "closes a conversion or a hold; no balance change"
    RECORD = "checks its shape; no account, no balance"


class Family(enum.Enum):
    """Which cross-chain check reads the kind."""

    NONE = "none"
    CONVERSION = "conversion"
    HOLD = "hold"
    AGREEMENT = "agreement"


class CrossChain(enum.Enum):
    """The kind's part in cross-chain reconciliation (``audit.cross_chain``): the value
    is the family, the name the step."""

    NONE = "none"
    CONVERSION_SENT = "conversion: sent, answered on the partner by convert-in or -reject"
    CONVERSION_CREDITED = "conversion: credited here from the partner's convert-out"
    CONVERSION_COMPLETED = "conversion: closed on the partner's signed receipt"
    CONVERSION_REFUNDED = "conversion: refunded on the partner's signed rejection or abort"
    CONVERSION_REJECTED = "conversion: refused here for good, never credited later"
    HOLD_MADE = "hold: points held for the partner's redemption"
    HOLD_CAPTURED = "hold: captured, the partner's redemption-receipt matches it"
    HOLD_RELEASED = "hold: voided or expired, the points returned"
    REDEMPTION_RECEIVED = "hold: the partner captured a hold for us"
    AGREEMENT = "agreement: prices conversions and holds on both chains"

    @property
    def family(self) -> Family:
        return Family(self.value.split(":", 1)[0])


class Settlement(enum.Enum):
    """The kind's part in settlement (``points.settlement.obligations``)."""

    NONE = "none"
    OWED_BY_PROGRAM = "an obligation of this program to the partner"
    OWED_TO_PROGRAM = "an obligation of the partner to this program"
    COMPLETES = "makes its convert-out an obligation"
    CANCELS = "keeps its convert-out from ever being an obligation"
    STATEMENT = "a statement both parties signed (settlement audit)"


class Flow(enum.Enum):
    """Which value flow between brands the explorer sums the kind into
    (``explorer.flows``)."""

    CONVERSION_OUT = "conversion out"
    CONVERSION_BACK = "conversion refunded"
    CONVERSION_IN = "conversion in"
    REDEMPTION_OUT = "redemption at a partner"
    REDEMPTION_IN = "redemption here"


@dataclass(frozen=True, slots=True)
class Display:
    """How the explorer shows the kind: a label, and the flow it counts in (if any)."""

    label: str
    flow: Flow | None = None


@dataclass(frozen=True, slots=True)
class Kind:
    """One entry kind and every part it plays.

    ``supply`` is how the entry's ``amount`` changes the points members hold (+1, -1 or
    0), which the chain audit checks against the replayed supply; ``fast`` says the
    replay's fast path (``points.replay_fast``) may take the kind.
    """

    struct: type[model.Entry]
    scope: Scope
    summary: str
    effect: Effect
    supply: int
    cross_chain: CrossChain
    settlement: Settlement
    display: Display
    fast: bool = False

    @property
    def name(self) -> str:
        return model.kind_of(self.struct)


_M, _P = Scope.MEMBER, Scope.PROGRAM
_NO_X, _NO_S = CrossChain.NONE, Settlement.NONE

_DECLARED = (
    Kind(model.Enroll, _M, "Opens the account on the ledger; `reason` `{\"event\": \"enroll\"}`.",
         Effect.OPEN_ACCOUNT, 0, _NO_X, _NO_S, Display("Enrolment"), fast=True),
    Kind(model.Earn, _M,
         "Points earned (`amount` > 0) into the new lot `lot` (its id is the entry id), "
         "spendable from `available_at` (after the holding period), expiring at "
         "`expires_at`, with `qualifying` tier points. A purchase's `reason` is "
         "`{\"rule\": \"purchase\", \"reference\", \"spend\" (minor units), \"currency\", "
         "\"category\", \"multipliers\": [[name, rational], ...], \"capped\"}` with "
         "`amount = min(cap, floor(spend / minor_units × Π multipliers))`; a reward's is "
         "`{\"rule\": \"reward\", \"event\", \"reference\"}` (`qualifying` 0, spendable at "
         "once). One earn per reference.",
         Effect.CREDIT, +1, _NO_X, _NO_S, Display("Earn"), fast=True),
    Kind(model.Redeem, _M,
         "Points spent: the `taken` amounts sum to `amount`; `reason` "
         "`{\"rule\": \"redemption\", \"reference\"}`.",
         Effect.DEBIT, -1, _NO_X, _NO_S, Display("Redemption"), fast=True),
    Kind(model.Transfer, _M,
         "Points moved to the account `to`; each `taken` item names the receiver's new lot "
         "`new_lot` (`\"<entry id>:<n>\"`) and keeps the source lot's `expires_at`; "
         "`reason` `{\"rule\": \"transfer\", \"note\"}`.",
         Effect.MOVE, 0, _NO_X, _NO_S, Display("Transfer"), fast=True),
    Kind(model.Expire, _M,
         "The expired lots and what they still held; `reason` `{\"rule\": \"expiry\"}`.",
         Effect.EXPIRE, -1, _NO_X, _NO_S, Display("Expiry"), fast=True),
    Kind(model.Reverse, _M,
         "A refunded purchase: the earn's lot `lot`, the points recovered `amount` "
         "(taken from `taken`), the points the member no longer had `written_off`; "
         "`amount + written_off` is the earn's amount; `reason` "
         "`{\"rule\": \"refund\", \"reference\"}`.",
         Effect.CLAW_BACK, -1, _NO_X, _NO_S, Display("Refunded purchase")),
    Kind(model.Revoke, _M,
         "As `reverse`, with `reason` `{\"rule\": \"revocation\", \"operator\", \"note\", "
         "\"earn\"}`.",
         Effect.CLAW_BACK, -1, _NO_X, _NO_S, Display("Revocation")),
    Kind(model.Adjust, _M,
         "An operator's correction, `amount` ≠ 0, `reason` `{\"rule\": \"adjustment\", "
         "\"operator\", \"note\"}`: a credit (`amount` > 0) opens the lot `lot` (the entry "
         "id) expiring at `expires_at`; a debit has `taken` summing to −`amount`.",
         Effect.ADJUST, +1, _NO_X, _NO_S, Display("Adjustment"), fast=True),
    Kind(model.ConvertOut, _M,
         "Points sent to `conversion.to_program` at the quote the member confirmed "
         "(`fee` + `net` = `amount`; the partner credits `credit`); `taken` keeps each "
         "lot's expiry so a refund can restore it.",
         Effect.SEND, -1, CrossChain.CONVERSION_SENT, Settlement.OWED_BY_PROGRAM,
         Display("Conversion out", Flow.CONVERSION_OUT)),
    Kind(model.ConvertIn, _M,
         "A partner's convert-out credited (`amount` = its credit) into a new lot; "
         "`conversion.out_hash` is the leaf hash of the convert-out, `out_at` its time.",
         Effect.CREDIT, +1, CrossChain.CONVERSION_CREDITED, Settlement.OWED_TO_PROGRAM,
         Display("Conversion in", Flow.CONVERSION_IN)),
    Kind(model.ConvertComplete, _M,
         "A conversion closed with the partner's signed receipt.",
         Effect.CLOSE, 0, CrossChain.CONVERSION_COMPLETED, Settlement.COMPLETES,
         Display("Conversion completed")),
    Kind(model.ConvertRefund, _M,
         "A conversion's points given back on the partner's signed rejection or abort: "
         "`restored` reopens exactly what was taken, as lots `\"<entry id>:<n>\"`.",
         Effect.RESTORE, +1, CrossChain.CONVERSION_REFUNDED, Settlement.CANCELS,
         Display("Conversion refunded", Flow.CONVERSION_BACK)),
    Kind(model.ConvertReject, _P,
         "This program will never credit the conversion (rejected or aborted).",
         Effect.RECORD, 0, CrossChain.CONVERSION_REJECTED, _NO_S,
         Display("Conversion rejected")),
    Kind(model.Hold, _M,
         "Points held for a redemption at `hold.partner` until capture, void or "
         "`hold.expires_at`.",
         Effect.HOLD, -1, CrossChain.HOLD_MADE, _NO_S, Display("Hold")),
    Kind(model.HoldCapture, _M,
         "The held points leave for good: the partner redeemed them and this program "
         "owes it `value_minor`.",
         Effect.CLOSE, 0, CrossChain.HOLD_CAPTURED, Settlement.OWED_BY_PROGRAM,
         Display("Hold captured", Flow.REDEMPTION_OUT)),
    Kind(model.HoldRelease, _M,
         "Held points given back (`why`: `void` by the partner, or `expired`).",
         Effect.RESTORE, +1, CrossChain.HOLD_RELEASED, _NO_S, Display("Hold released")),
    Kind(model.RedemptionReceipt, _P,
         "The partner captured `hold.amount` of its points for a redemption here and owes "
         "this program `value_minor` (its signed capture receipt attached).",
         Effect.RECORD, 0, CrossChain.REDEMPTION_RECEIVED, Settlement.OWED_TO_PROGRAM,
         Display("Redemption received", Flow.REDEMPTION_IN)),
    Kind(model.AgreementRecord, _P,
         "A rate agreement signed by both partners (docs/coalition.md, \"Rate agreements\").",
         Effect.RECORD, 0, CrossChain.AGREEMENT, _NO_S, Display("Rate agreement")),
    Kind(model.StatementRecord, _P,
         "A settlement statement signed by both parties (docs/coalition.md, \"Settlement\").",
         Effect.RECORD, 0, _NO_X, Settlement.STATEMENT, Display("Settlement statement")),
    Kind(model.KeyRotationRecord, _P,
         "The program's ledger key rotated to epoch `rotation.epoch`: `key` (base64 of the "
         "raw Ed25519 key, `key_id` its SHA-256) signs every header after the block that "
         "holds this entry; `signature` is the previous key's (`previous_key_id`) and "
         "`proof` the new key's over the rotation statement (§11).",
         Effect.RECORD, 0, _NO_X, _NO_S, Display("Key rotation")),
)  # fmt: skip

KINDS: Mapping[str, Kind] = MappingProxyType({k.name: k for k in _DECLARED})
"""Every entry kind by name, in the order docs/proofs.md lists them."""


def _names(*, where: Callable[[Kind], bool]) -> frozenset[str]:
    return frozenset(name for name, k in KINDS.items() if where(k))


PROGRAM_KINDS = _names(where=lambda k: k.scope is Scope.PROGRAM)
"""Kinds recorded with ``account: "-"``: replay never looks an account up for them."""
MEMBER_KINDS = _names(where=lambda k: k.scope is Scope.MEMBER)
COALITION_MEMBER_KINDS = _names(
    where=lambda k: k.scope is Scope.MEMBER and k.cross_chain is not CrossChain.NONE
)
"""A member's conversions and holds: checked against the conversions and holds seen."""
FAST_KINDS = _names(where=lambda k: k.fast)
"""The kinds the replay's fast path may take (``Replay.apply`` tries it on them)."""
CONVERSION_KINDS = _names(where=lambda k: k.cross_chain.family is Family.CONVERSION)
HOLD_KINDS = _names(where=lambda k: k.cross_chain.family is Family.HOLD)
CROSS_CHAIN_KINDS = _names(where=lambda k: k.cross_chain is not CrossChain.NONE)
"""The kinds cross-chain reconciliation reads."""
SETTLEMENT_KINDS = _names(where=lambda k: k.settlement is not Settlement.NONE)
OBLIGATION_KINDS = _names(
    where=lambda k: k.settlement not in (Settlement.NONE, Settlement.STATEMENT)
)
"""The kinds ``points.settlement.obligations`` reads (completions and refunds included)."""
STATEMENT_KINDS = _names(where=lambda k: k.settlement is Settlement.STATEMENT)
"""The kinds that record a statement both parties signed (the settlement audit's)."""
COALITION_KINDS = CROSS_CHAIN_KINDS | SETTLEMENT_KINDS
"""Every kind the coalition checks (cross-chain and settlement) read from a chain."""
FLOW_KINDS = _names(where=lambda k: k.display.flow is not None)
"""The kinds the explorer sums into flows between brands."""


def kind(name: object) -> Kind | None:
    """The declaration of ``name``, or None for a kind the registry does not know."""
    return KINDS.get(name) if isinstance(name, str) else None


def supply_change(points_by_kind: Mapping[str, int]) -> int:
    """How much the points members hold changed, from the ``amount`` totals per kind
    (``Replay.points_by_kind``): what the chain audit compares with the replayed supply."""
    return sum(KINDS[name].supply * total for name, total in points_by_kind.items())


def display_json() -> list[dict[str, str | None]]:
    """The explorer's view of the kinds: name, label, scope and flow, in registry order."""
    return [
        {
            "kind": name,
            "label": k.display.label,
            "scope": k.scope.value,
            "flow": None if k.display.flow is None else k.display.flow.value,
        }
        for name, k in KINDS.items()
    ]


# --- the kinds table of docs/proofs.md ---------------------------------------------------


def _type_text(info: msgspec.inspect.Type) -> str:
    """A field's type in the table: ``int``, ``time``, ``{a, b}``, ``[{a, b}]``, ..."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.StructType):
        return "{" + ", ".join(f"`{f.encode_name}`" for f in info.fields) + "}"
    if isinstance(info, inspect.ListType):
        return "[" + _type_text(info.item_type) + ", ...]"
    if isinstance(info, inspect.TupleType):
        return "[" + ", ".join(_type_text(t) for t in info.item_types) + "]"
    if isinstance(info, inspect.UnionType):
        return " or ".join(_type_text(t) for t in info.types)
    if isinstance(info, inspect.LiteralType):
        return " or ".join(f"`{v}`" for v in info.values)
    if isinstance(info, inspect.StrType):
        return "time" if info.pattern else "string"
    if isinstance(info, inspect.IntType):
        if info.ge == 1:
            return "int > 0"
        return "int ≥ 0" if info.ge == 0 else "int"
    if isinstance(info, inspect.DictType):
        return "object"
    return type(info).__name__.removesuffix("Type").lower()


def _fields_text(struct: type[model.Entry]) -> str:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    envelope = set(model.Entry.__struct_fields__)
    parts = []
    for f in info.fields:
        if f.name in envelope:
            continue
        optional = " (optional)" if not f.required else ""
        parts.append(f"`{f.encode_name}`: {_type_text(f.type)}{optional}")
    return "; ".join(parts)


def markdown_table() -> str:
    """The kinds table of docs/proofs.md §2, from the registry (fields from the structs)."""
    rows = [
        "| kind | scope | fields beyond the envelope | meaning | replay | cross-chain "
        "| settlement | explorer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, k in KINDS.items():
        flow = "" if k.display.flow is None else f" ({k.display.flow.value})"
        rows.append(
            f"| `{name}` | {k.scope.value} | {_fields_text(k.struct)} | {k.summary} "
            f"| {k.effect.value} | {k.cross_chain.value} | {k.settlement.value} "
            f"| {k.display.label}{flow} |"
        )
    return "\n".join(rows) + "\n"
