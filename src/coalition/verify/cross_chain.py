"""Reconcile the partners' chains with each other: every conversion left one program and
arrived in the other exactly once, at the signed rate, or came back on a signed rejection.

Pure logic over entry bodies (docs/coalition.md, "Entry kinds added by the coalition"): it
reads no database and no network; the sources of ``coalition.audit`` fetch the chains and
each chain is audited on its own by ``chain_audit`` (signatures, links, replay). This
module checks only what no single chain can show:

- each ``convert-out`` on A is matched by exactly one ``convert-in`` on B with the same
  conversion id, the quoted credit and A's entry hash, or by a ``convert-refund`` on A that
  embeds B's signed rejection while B recorded ``convert-reject``; never both;
- each ``convert-in`` and ``convert-reject`` answers a ``convert-out`` that exists;
- each ``convert-complete`` embeds a receipt signed by B naming B's ``convert-in``;
- each ``convert-out`` equals the quote (``points.rates.quote``) of an agreement both
  partners signed, recorded on both chains and usable at the entry's time;
- each hold is captured or released at most once, for its amount, and a capture happens
  before the hold expires;
- nothing is still pending at a cut-off time the auditor chooses.

A chain is given as its entry bodies in log order from index 0, so an entry's position
is its log index. Each entry of a kind the checks read (``kinds.CROSS_CHAIN_KINDS``) is
parsed once into its typed entry (``points.model``); one that does not parse is an
``entry-malformed`` fault and is not read further. Each kind's ``kinds.CrossChain`` step
says where it is indexed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from coalition.errors import CoalitionError, VerificationError
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json
from coalition.ledger.entries import entry_leaf_hash
from coalition.ledger.envelope import Envelope, SignedMessage, open_message
from coalition.ledger.keys import VerifyKey
from coalition.points import kinds, model
from coalition.points.kinds import CrossChain
from coalition.points.rates import Agreement, quote, verify_signed_agreement
from coalition.verify.located import LocatedFault

KeyOf = Callable[[str], VerifyKey]
E = TypeVar("E", bound=model.Entry, covariant=True)


CrossChainFault = LocatedFault
"""One thing wrong between chains: ``kind`` is a stable slug (``convert-in-missing``,
...); ``program``, ``entry_id``, ``log_index`` and ``conversion`` say where, and
``height`` once the caller knows the block (``with_heights``)."""


@dataclass(slots=True)
class PairTotals:
    """Conversions from one program to another, as both chains record them."""

    completed: int = 0
    refunded: int = 0
    pending: int = 0
    points_out: int = 0
    """Points debited by completed conversions (``convert-out`` amounts)."""
    points_refunded: int = 0
    credit_quoted: int = 0
    """Credits the completed conversions' ``convert-out`` entries quoted."""
    credited: int = 0
    """Points the target's ``convert-in`` entries credited (for every conversion)."""
    value_minor: int = 0
    """What the source owes the target for completed conversions (minor units)."""

    def to_json(self) -> JsonObject:
        return {
            "completed": self.completed,
            "refunded": self.refunded,
            "pending": self.pending,
            "points_out": self.points_out,
            "points_refunded": self.points_refunded,
            "credit_quoted": self.credit_quoted,
            "credited": self.credited,
            "value_minor": self.value_minor,
        }


@dataclass(slots=True)
class CoalitionReport:
    """What ``audit_coalition`` found: faults and per-pair conversion totals."""

    programs: list[str] = field(default_factory=list)
    conversions: int = 0
    holds: int = 0
    totals: dict[tuple[str, str], PairTotals] = field(default_factory=dict)
    faults: list[CrossChainFault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_json(self) -> JsonObject:
        return {
            "type": "coalition/cross-chain-report/v1",
            "ok": self.ok,
            "programs": list(self.programs),
            "conversions": self.conversions,
            "holds": self.holds,
            "pairs": {f"{a}->{b}": t.to_json() for (a, b), t in sorted(self.totals.items())},
            "fault_count": len(self.faults),
            "faults": [f.to_json() for f in self.faults],
        }

    def render(self, limit: int = 200) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.faults):,} faults)"
        lines = [
            f"Cross-chain audit of {', '.join(self.programs) or 'no programs'}: {verdict}",
            f"  conversions   {self.conversions:,}",
            f"  holds         {self.holds:,}",
        ]
        for (a, b), t in sorted(self.totals.items()):
            lines.append(
                f"  {a} -> {b}: {t.completed:,} completed ({t.points_out:,} points out, "
                f"{t.credited:,} credited, {t.value_minor:,} minor owed), "
                f"{t.refunded:,} refunded ({t.points_refunded:,} points), {t.pending:,} pending"
            )
        if self.faults:
            lines.append("Faults:")
            lines.extend(f"  {fault}" for fault in self.faults[:limit])
            if len(self.faults) > limit:
                lines.append(f"  ... and {len(self.faults) - limit:,} more faults not listed")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _At(Generic[E]):
    """One entry of one chain: its program, log index, body (for its leaf hash) and
    typed entry."""

    program: str
    index: int
    body: JsonObject
    entry: E

    @property
    def id(self) -> str:
        return self.entry.id


class _Malformed(Exception):
    """A signed agreement's document names no id and version (reported, never raised)."""


def _signed(message: model.SignedMessage) -> SignedMessage:
    """The partner's signed message an entry embeds, as ``open_message`` takes it."""
    return SignedMessage.from_json(model.to_json(message))


def _total(items: Sequence[model.Taken | model.TakenWithExpiry | model.Restored]) -> int:
    return sum(item.amount for item in items)


_Hold = model.Hold | model.HoldCapture | model.HoldRelease | model.RedemptionReceipt
_Answer = model.ConvertIn | model.ConvertReject
_Own = model.ConvertOut | model.ConvertComplete | model.ConvertRefund


@dataclass
class _Chain:
    """One program's coalition entries, indexed by conversion id, hold id and agreement."""

    program: str
    outs: dict[str, list[_At[model.ConvertOut]]] = field(default_factory=lambda: defaultdict(list))
    ins: dict[tuple[str, str], list[_At[model.ConvertIn]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """(source program, conversion id) -> convert-in entries; likewise ``rejects``: ids
    are unique per source only."""
    completes: dict[str, list[_At[model.ConvertComplete]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    refunds: dict[str, list[_At[model.ConvertRefund]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    rejects: dict[tuple[str, str], list[_At[model.ConvertReject]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    holds: dict[tuple[str, str], list[_At[model.Hold]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """(partner, hold id) -> hold entries; likewise captures, releases and, on the
    partner where the member redeemed, redemption receipts keyed (points' program, id)."""
    captures: dict[tuple[str, str], list[_At[model.HoldCapture]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    releases: dict[tuple[str, str], list[_At[model.HoldRelease]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    redemptions: dict[tuple[str, str], list[_At[model.RedemptionReceipt]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    agreements: dict[tuple[str, int], list[tuple[_At[model.AgreementRecord], JsonObject]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def index_of(self, step: CrossChain) -> dict[Any, list[Any]]:
        """Where an entry of cross-chain ``step`` is indexed (agreements apart)."""
        where: dict[CrossChain, dict[Any, list[Any]]] = {
            CrossChain.CONVERSION_SENT: self.outs,
            CrossChain.CONVERSION_CREDITED: self.ins,
            CrossChain.CONVERSION_COMPLETED: self.completes,
            CrossChain.CONVERSION_REFUNDED: self.refunds,
            CrossChain.CONVERSION_REJECTED: self.rejects,
            CrossChain.HOLD_MADE: self.holds,
            CrossChain.HOLD_CAPTURED: self.captures,
            CrossChain.HOLD_RELEASED: self.releases,
            CrossChain.REDEMPTION_RECEIVED: self.redemptions,
        }
        return where[step]


class _Checker:
    def __init__(
        self,
        chains: Mapping[str, Sequence[JsonObject]],
        key_of: KeyOf,
        pending_before: datetime | None,
    ) -> None:
        self.raw = chains
        self.key_of = key_of
        self.pending_before = pending_before
        self.report = CoalitionReport(programs=sorted(chains))
        self.chains: dict[str, _Chain] = {}
        self.verified: dict[tuple[str, str, int], Agreement | None] = {}
        """(program, agreement id, version) -> the agreement as that chain records it."""

    def fault(
        self, kind: str, where: _At[Any] | str, message: str, conversion: str | None = None
    ) -> None:
        if isinstance(where, _At):
            fault = CrossChainFault(
                kind,
                where.program,
                message,
                log_index=where.index,
                entry_id=where.id,
                conversion=conversion,
            )
        else:
            fault = CrossChainFault(kind, where, message, conversion=conversion)
        self.report.faults.append(fault)

    # --- indexing ---------------------------------------------------------------------

    def index(self) -> None:
        for program, entries in sorted(self.raw.items()):
            chain = _Chain(program)
            self.chains[program] = chain
            for n, body in enumerate(entries):
                if not isinstance(body, dict):
                    continue  # chain_audit reports malformed entries
                kind = body.get("kind")
                if kind not in kinds.CROSS_CHAIN_KINDS:
                    continue
                raw_id = body.get("id")
                entry_id = raw_id if isinstance(raw_id, str) else None
                if body.get("program") != program:
                    self.report.faults.append(
                        CrossChainFault(
                            "entry-program",
                            program,
                            f"entry names program {body.get('program')!r}",
                            log_index=n,
                            entry_id=entry_id,
                        )
                    )
                    continue
                try:
                    self._index_one(chain, _At(program, n, body, model.parse_entry(body)))
                except (VerificationError, _Malformed) as exc:
                    self.report.faults.append(
                        CrossChainFault(
                            "entry-malformed",
                            program,
                            f"{kind} entry: {exc}",
                            log_index=n,
                            entry_id=entry_id,
                        )
                    )

    def _index_one(self, chain: _Chain, at: _At[model.Entry]) -> None:
        entry = at.entry
        step = kinds.KINDS[model.kind_of(type(entry))].cross_chain
        if step is CrossChain.AGREEMENT:
            signed = cast(model.AgreementRecord, entry).agreement
            doc = signed.agreement
            ident, version = doc.get("id"), doc.get("version")
            if not isinstance(ident, str) or not ident:
                raise _Malformed("field 'id' must be a non-empty string")
            if not isinstance(version, int) or isinstance(version, bool):
                raise _Malformed("field 'version' must be an integer")
            recorded = cast(_At[model.AgreementRecord], at)
            chain.agreements[(ident, version)].append((recorded, model.to_json(signed)))
        elif step.family is kinds.Family.HOLD:
            hold = cast(_Hold, entry).hold
            chain.index_of(step)[(hold.partner, hold.id)].append(at)
        elif step in (CrossChain.CONVERSION_CREDITED, CrossChain.CONVERSION_REJECTED):
            answer = cast(_Answer, entry).conversion
            chain.index_of(step)[(answer.from_program, answer.id)].append(at)
        else:
            chain.index_of(step)[cast(_Own, entry).conversion.id].append(at)

    # --- agreements ------------------------------------------------------------------

    def agreement(self, program: str, ref: tuple[str, int], where: _At[Any]) -> Agreement | None:
        """The agreement ``ref`` as recorded on ``program``'s chain, signatures verified;
        None (and a fault) when it is not recorded or does not verify."""
        if not self.chains[program].agreements.get(ref):
            self.fault(
                "agreement-missing",
                where,
                f"agreement {ref[0]} v{ref[1]} is not recorded on {program}'s chain",
            )
            return None
        return self.verified.get((program, ref[0], ref[1]))  # None: reported as unverified

    def verify_agreements(self) -> None:
        """Verify every recorded agreement once; the same id and version must be the same
        document everywhere it is recorded, and both its parties must record it."""
        documents: dict[tuple[str, int], tuple[_At[Any], bytes]] = {}
        for program, chain in self.chains.items():
            for ref, records in chain.agreements.items():
                verified: Agreement | None = None
                for at, signed in records:
                    try:
                        agreement = verify_signed_agreement(signed, self.key_of)
                    except CoalitionError as exc:
                        self.fault(
                            "agreement-signature",
                            at,
                            f"agreement {ref[0]} v{ref[1]} does not verify: {exc}",
                        )
                        continue
                    if program not in (agreement.from_program, agreement.to_program):
                        self.fault(
                            "agreement-party",
                            at,
                            f"agreement {ref[0]} v{ref[1]} is between "
                            f"{agreement.from_program} and {agreement.to_program}",
                        )
                        continue
                    doc = canonical_json(agreement.document())
                    seen = documents.setdefault(ref, (at, doc))
                    if seen[1] != doc:
                        self.fault(
                            "agreement-conflict",
                            at,
                            f"agreement {ref[0]} v{ref[1]} differs from the one recorded at "
                            f"{seen[0].program} log index {seen[0].index}",
                        )
                        continue
                    verified = verified or agreement
                self.verified[(program, ref[0], ref[1])] = verified
                if verified is None:
                    continue
                other = (
                    verified.to_program
                    if program == verified.from_program
                    else verified.from_program
                )
                if other in self.chains and ref not in self.chains[other].agreements:
                    self.fault(
                        "agreement-one-sided",
                        records[0][0],
                        f"agreement {ref[0]} v{ref[1]} is not recorded on {other}'s chain",
                    )

    # --- conversions -----------------------------------------------------------------

    def conversions(self) -> None:
        for chain in self.chains.values():
            for cid, outs in chain.outs.items():
                self.report.conversions += 1
                for extra in outs[1:]:
                    self.fault(
                        "convert-out-duplicate", extra, "a second convert-out with this id", cid
                    )
                try:
                    self._conversion(chain, cid, outs[0])
                except VerificationError as exc:  # an impossible date
                    self.fault("entry-malformed", outs[0], f"convert-out: {exc}", cid)
            settled: list[tuple[str, Sequence[_At[_Own]]]] = [
                *chain.completes.items(),
                *chain.refunds.items(),
            ]
            for cid, answers in settled:
                if cid not in chain.outs:
                    self.fault(
                        "settle-orphan",
                        answers[0],
                        "completes or refunds a conversion with no convert-out on this chain",
                        cid,
                    )
        for chain in self.chains.values():
            for (source, cid), ins in chain.ins.items():
                self._orphan(chain, source, cid, ins[0], "convert-in")
            for (source, cid), rejects in chain.rejects.items():
                self._orphan(chain, source, cid, rejects[0], "convert-reject")

    def _orphan(self, chain: _Chain, source: str, cid: str, found: _At[_Answer], kind: str) -> None:
        """A convert-in or convert-reject whose source chain has no such convert-out."""
        if source not in self.chains:
            return
        outs = self.chains[source].outs.get(cid)
        if not outs:
            self.fault(
                f"{kind}-orphan",
                found,
                f"{source}'s chain has no convert-out for this conversion",
                cid,
            )
            return
        target = outs[0].entry.conversion.to_program
        if target != chain.program:
            self.fault(
                f"{kind}-orphan",
                found,
                f"{source}'s convert-out sends this conversion to {target}, not here",
                cid,
            )

    def _conversion(self, chain: _Chain, cid: str, out: _At[model.ConvertOut]) -> None:
        conv = out.entry.conversion
        target = conv.to_program
        amount = out.entry.amount
        credit, value_minor = conv.credit, conv.value_minor
        pair = (chain.program, target)
        totals = self.report.totals.setdefault(pair, PairTotals())
        if target == chain.program:
            self.fault("convert-out-target", out, "converts to its own program", cid)
            return

        # The points that left the member add up, and equal the signed agreement's quote.
        taken = _total(out.entry.taken)
        if taken != amount:
            self.fault("convert-out-amount", out, f"takes {taken} points, amount says {amount}")
        self._check_quote(chain.program, target, cid, out, conv, amount)

        completes = chain.completes.get(cid, [])
        refunds = chain.refunds.get(cid, [])
        if len(completes) + len(refunds) > 1:
            self.fault(
                "settled-twice",
                (completes + refunds)[1],
                f"{len(completes)} convert-complete and {len(refunds)} convert-refund "
                "entries for one conversion",
                cid,
            )
        partner = self.chains.get(target)
        key = (chain.program, cid)
        ins = partner.ins.get(key, []) if partner is not None else []
        rejects = partner.rejects.get(key, []) if partner is not None else []
        for extra in ins[1:]:
            self.fault("convert-in-duplicate", extra, "a second convert-in: credited twice", cid)
        if ins and rejects:
            self.fault(
                "credited-and-rejected",
                rejects[0],
                "the target recorded both convert-in and convert-reject",
                cid,
            )
        convert_in = ins[0] if ins else None
        if convert_in is not None:
            totals.credited += self._check_in(out, convert_in, cid, credit)

        for complete in completes:
            self._check_receipt(chain.program, target, cid, complete, convert_in, partner)
        for refund in refunds:
            self._check_refund(chain.program, target, cid, refund, amount, rejects, partner)
            if convert_in is not None:
                self.fault(
                    "credited-and-refunded",
                    refund,
                    f"refunded on A although {target} credited it (log index "
                    f"{convert_in.index}): points created",
                    cid,
                )

        if completes and not refunds:
            totals.completed += 1
            totals.points_out += amount
            totals.credit_quoted += credit
            totals.value_minor += value_minor
        elif refunds and not completes:
            totals.refunded += 1
            totals.points_refunded += amount
        elif not completes:
            totals.pending += 1
            self._check_pending(out, cid, "convert-out is neither completed nor refunded")

    def _check_quote(
        self,
        source: str,
        target: str,
        cid: str,
        out: _At[model.ConvertOut],
        conv: model.OutgoingConversion,
        amount: int,
    ) -> None:
        ref = conv.agreement.key
        agreement = self.agreement(source, ref, out)
        if agreement is None:
            return
        name = f"agreement {ref[0]} v{ref[1]}"
        if (agreement.from_program, agreement.to_program) != (source, target):
            self.fault(
                "agreement-direction",
                out,
                f"{name} converts {agreement.from_program} -> {agreement.to_program}, "
                f"not {source} -> {target}",
                cid,
            )
            return
        if not agreement.usable_at(model.moment(out.entry.at)):
            self.fault("agreement-unusable", out, f"{name} is not valid at {out.entry.at}", cid)
        try:
            q = quote(agreement, amount)
        except CoalitionError as exc:
            self.fault("quote-refused", out, f"{name} refuses {amount} points: {exc}", cid)
            return
        expected: dict[str, JsonValue] = {
            "fee": q.fee,
            "net": q.net,
            "credit": q.credit,
            "value_minor": q.value_minor,
            "rate": [agreement.rate_num, agreement.rate_den],
            "currency": agreement.currency,
        }
        wrong = [
            f"{k} {getattr(conv, k)!r} (the agreement gives {v!r})"
            for k, v in expected.items()
            if getattr(conv, k) != v
        ]
        if wrong:
            self.fault("quote-mismatch", out, f"differs from {name}: {'; '.join(wrong)}", cid)

    def _check_in(
        self, out: _At[model.ConvertOut], convert_in: _At[model.ConvertIn], cid: str, credit: int
    ) -> int:
        """Check the target's convert-in against the convert-out; return its credit."""
        conv, amount = convert_in.entry.conversion, convert_in.entry.amount
        wrong = []
        if amount != credit:
            wrong.append(f"credits {amount} points, the convert-out quoted {credit}")
        if conv.from_program != out.program:
            wrong.append(f"from_program is {conv.from_program!r}")
        if conv.out_entry != out.id:
            wrong.append(f"out_entry {conv.out_entry!r} is not {out.id!r}")
        if conv.out_hash != entry_leaf_hash(out.body).hex():
            wrong.append("out_hash is not the leaf hash of the convert-out")
        if conv.agreement.key != out.entry.conversion.agreement.key:
            wrong.append("names another agreement than the convert-out")
        for what in wrong:
            self.fault("convert-in-mismatch", convert_in, what, cid)
        return amount

    def _open(
        self, signed: model.SignedMessage, sender: str, to: str, kind: str, cid: str
    ) -> tuple[Envelope | None, str]:
        """Open an embedded signed message from ``sender`` to ``to``; (None, why) if bad."""
        try:
            envelope = open_message(_signed(signed), self.key_of)
        except CoalitionError as exc:
            return None, f"does not verify: {exc}"
        if envelope.sender != sender:
            return None, f"is signed by {envelope.sender}, not the target {sender}"
        if envelope.to != to:
            return None, f"is addressed to {envelope.to}, not {to}"
        if envelope.kind != kind:
            return None, f"is a {envelope.kind!r} message, not {kind!r}"
        if envelope.body.get("conversion") != cid:
            return None, f"is about conversion {envelope.body.get('conversion')!r}"
        return envelope, ""

    def _check_receipt(
        self,
        source: str,
        target: str,
        cid: str,
        complete: _At[model.ConvertComplete],
        convert_in: _At[model.ConvertIn] | None,
        partner: _Chain | None,
    ) -> None:
        envelope, why = self._open(complete.entry.receipt, target, source, "convert-receipt", cid)
        if envelope is None:
            self.fault("receipt-invalid", complete, f"the embedded receipt {why}", cid)
            return
        body = envelope.body
        if body.get("status") != "credited":
            self.fault("receipt-invalid", complete, f"receipt status {body.get('status')!r}", cid)
        if partner is None:
            return  # the target's chain is not audited: the signature is all we can check
        if convert_in is None:
            self.fault(
                "convert-in-missing",
                complete,
                f"completed with {target}'s receipt, but {target}'s chain has no convert-in",
                cid,
            )
            return
        if body.get("in_entry") != convert_in.id:
            self.fault(
                "receipt-mismatch",
                complete,
                f"the receipt names entry {body.get('in_entry')!r}, {target}'s convert-in is "
                f"{convert_in.id!r}",
                cid,
            )
        if "credit" in body and body.get("credit") != convert_in.entry.amount:
            self.fault(
                "receipt-mismatch",
                complete,
                f"the receipt says credit {body.get('credit')!r}, {target}'s convert-in "
                f"credits {convert_in.entry.amount!r}",
                cid,
            )
        if body.get("in_hash") != entry_leaf_hash(convert_in.body).hex():
            self.fault(
                "receipt-mismatch",
                complete,
                f"the receipt's in_hash is not the leaf hash of {target}'s convert-in",
                cid,
            )

    def _check_refund(
        self,
        source: str,
        target: str,
        cid: str,
        refund: _At[model.ConvertRefund],
        amount: int,
        rejects: list[_At[model.ConvertReject]],
        partner: _Chain | None,
    ) -> None:
        refunded, restored = refund.entry.amount, _total(refund.entry.restored)
        if refunded != amount or restored != amount:
            self.fault(
                "refund-amount",
                refund,
                f"refunds {refunded} points and restores {restored}; the convert-out took {amount}",
                cid,
            )
        envelope, why = self._open(refund.entry.rejection, target, source, "convert-rejection", cid)
        if envelope is None:
            self.fault("refund-unsigned", refund, f"the embedded rejection {why}", cid)
            return
        if envelope.body.get("status") != "rejected":
            self.fault(
                "refund-unsigned",
                refund,
                f"the rejection's status is {envelope.body.get('status')!r}",
                cid,
            )
        if partner is not None and not rejects:
            self.fault(
                "convert-reject-missing",
                refund,
                f"refunded on {target}'s rejection, but {target}'s chain has no convert-reject "
                "(it could still credit later)",
                cid,
            )

    def _check_pending(self, at: _At[Any], reference: str, message: str) -> None:
        if self.pending_before is None:
            return
        try:
            when = model.moment(at.entry.at)
        except VerificationError:
            return
        if when < self.pending_before:
            self.fault("pending", at, f"{message} (written {at.entry.at})", reference)

    # --- holds -----------------------------------------------------------------------

    def holds(self) -> None:
        for chain in self.chains.values():
            for key, holds in chain.holds.items():
                self.report.holds += 1
                for extra in holds[1:]:
                    self.fault("hold-duplicate", extra, f"a second hold {key[1]} for {key[0]}")
                try:
                    self._hold(chain, key, holds[0])
                except CoalitionError as exc:
                    self.fault("entry-malformed", holds[0], f"hold: {exc}")
            ended: list[tuple[tuple[str, str], Sequence[_At[_Hold]]]] = [
                *chain.captures.items(),
                *chain.releases.items(),
            ]
            for key, found in ended:
                if key not in chain.holds:
                    self.fault("hold-orphan", found[0], f"no hold {key[1]} for {key[0]} here")
            for (source, hold_id), receipts in chain.redemptions.items():
                for again in receipts[1:]:
                    self.fault("redemption-receipt-duplicate", again, f"hold {hold_id} again")
                other = self.chains.get(source)
                if other is not None and (chain.program, hold_id) not in other.captures:
                    self.fault(
                        "redemption-receipt-orphan",
                        receipts[0],
                        f"{source}'s chain has no capture of hold {hold_id} for {chain.program}",
                    )

    def _hold(self, chain: _Chain, key: tuple[str, str], hold: _At[model.Hold]) -> None:
        partner, hold_id = key
        spec = hold.entry.hold
        amount = hold.entry.amount
        expires_at = model.moment(spec.expires_at)
        if _total(hold.entry.taken) != amount:
            self.fault("hold-amount", hold, f"hold {hold_id} takes other than its {amount} points")
        if partner == chain.program:
            self.fault("hold-partner", hold, f"hold {hold_id} is for its own program")
        captures = chain.captures.get(key, [])
        releases = chain.releases.get(key, [])
        if len(captures) + len(releases) > 1:
            self.fault(
                "hold-settled-twice",
                (captures + releases)[1],
                f"hold {hold_id} has {len(captures)} captures and {len(releases)} releases",
            )
        ends: list[_At[model.HoldCapture | model.HoldRelease]] = [*captures, *releases]
        for end in ends:
            if end.entry.amount != amount:
                self.fault(
                    "hold-amount",
                    end,
                    f"settles {end.entry.amount} points of hold {hold_id} of {amount}",
                )
        for release in releases:
            if _total(release.entry.restored) != amount:
                self.fault("hold-amount", release, f"restores other than {amount} points")
        for capture in captures:
            self._capture(chain, hold, capture, amount, expires_at)
        cutoff = self.pending_before
        if not captures and not releases and cutoff is not None and expires_at < cutoff:
            self.fault(
                "pending",
                hold,
                f"hold {hold_id} expired at {spec.expires_at} and is neither captured nor released",
            )

    def _capture(
        self,
        chain: _Chain,
        hold: _At[model.Hold],
        capture: _At[model.HoldCapture],
        amount: int,
        expires_at: datetime,
    ) -> None:
        """A capture: before expiry, valued by the hold's agreement, and acknowledged by
        the partner's ``redemption-receipt`` carrying this program's signed receipt."""
        spec = hold.entry.hold
        partner, hold_id = spec.partner, spec.id
        captured_at = model.moment(capture.entry.at)
        if captured_at >= expires_at:
            self.fault(
                "hold-capture-late",
                capture,
                f"captures hold {hold_id} after it expired at {spec.expires_at}",
            )
        value_minor, currency = capture.entry.value_minor, capture.entry.currency
        ref = spec.agreement.key
        agreement = self.agreement(chain.program, ref, hold)
        if agreement is not None:
            expected = hold.entry.amount * agreement.value_num // agreement.value_den
            if agreement.pair != (chain.program, partner):
                self.fault(
                    "agreement-direction",
                    hold,
                    f"agreement {ref[0]} v{ref[1]} is not {chain.program} -> {partner}",
                )
            elif value_minor != expected or currency != agreement.currency:
                self.fault(
                    "capture-value",
                    capture,
                    f"values hold {hold_id} at {value_minor} {currency}; "
                    f"agreement {ref[0]} v{ref[1]} gives {expected} {agreement.currency}",
                )
        other = self.chains.get(partner)
        if other is None:
            return
        receipts = other.redemptions.get((chain.program, hold_id), [])
        if not receipts:
            cutoff = self.pending_before
            if cutoff is not None and captured_at < cutoff:
                self.fault(
                    "redemption-receipt-missing",
                    capture,
                    f"{partner}'s chain has no redemption-receipt for hold {hold_id}",
                )
            return
        receipt = receipts[0]
        stated = receipt.entry
        wrong = []
        if stated.hold.amount != amount:
            wrong.append(f"amount {stated.hold.amount!r}, captured {amount}")
        if stated.value_minor != value_minor:
            wrong.append(f"value_minor {stated.value_minor!r}, captured {value_minor}")
        if stated.currency != currency:
            wrong.append(f"currency {stated.currency!r}")
        try:
            envelope = open_message(_signed(stated.receipt), self.key_of)
            if (envelope.sender, envelope.to) != (chain.program, partner):
                wrong.append(f"its receipt is from {envelope.sender} to {envelope.to}")
            elif envelope.body.get("hold") != hold_id:
                wrong.append(f"its receipt is about hold {envelope.body.get('hold')!r}")
        except CoalitionError as exc:
            wrong.append(f"its receipt does not verify: {exc}")
        for what in wrong:
            self.fault("redemption-receipt-mismatch", receipt, what)

    def run(self) -> CoalitionReport:
        self.index()
        self.verify_agreements()
        self.conversions()
        self.holds()
        return self.report


def audit_coalition(
    chains: Mapping[str, Sequence[JsonObject]],
    key_of: KeyOf,
    *,
    pending_before: datetime | None = None,
) -> CoalitionReport:
    """Reconcile the chains of several partners (program -> entry bodies in log order).

    ``key_of`` gives a program's ledger public key (the manifest's). A conversion or hold
    still open from before ``pending_before`` is a fault; without it, open ones are only
    counted. Chains that are not given are not checked beyond the signatures embedded
    in the given ones.
    """
    return _Checker(chains, key_of, pending_before).run()


def with_heights(
    report: CoalitionReport, height_of: Callable[[str, int | None], int | None]
) -> CoalitionReport:
    """``report`` with each fault's block height filled in from its program and log
    index (``height_of`` answers None when it does not know)."""
    faults = [
        f if f.height is not None else replace(f, height=height_of(f.program, f.log_index))
        for f in report.faults
    ]
    return replace(report, faults=faults)


def check_coalition(
    chains: Mapping[str, Sequence[JsonObject]],
    key_of: KeyOf,
    *,
    pending_before: datetime | None = None,
) -> list[CrossChainFault]:
    """The faults ``audit_coalition`` finds: empty when the chains reconcile."""
    return audit_coalition(chains, key_of, pending_before=pending_before).faults
