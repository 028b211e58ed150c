"""Entries of every kind, written by the real ``points.operations`` functions on two
programs' chains (skyair sends conversions and holds to staybright), stored and read
back as a node stores them (canonical bytes, parsed), each chain replaying cleanly."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.ledger.entries import entry_leaf_hash
from coalition.ledger.keys import SigningKey
from coalition.ledger.rotation import sign_rotation
from coalition.points import operations
from coalition.points.operations import EntryContext
from coalition.points.rates import agreement_from_document, quote
from coalition.points.replay import Replay
from coalition.points.rules import ProgramRules
from coalition.points.settlement import obligations, statement_document

_SAMPLE_KEYS = (SigningKey.generate().to_pem(), SigningKey.generate().to_pem())
"""Two ledger keys for the sample key rotation (Ed25519 signs deterministically)."""
RULES = ProgramRules(
    holding_period=timedelta(days=30),
    expiry_period=timedelta(days=365),
    rewards={"signup": 500},
)
T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
SIGNED: JsonObject = {"envelope": "{}", "signature": "c2ln"}
ALICE, BOB = f"{1:064x}", f"{2:064x}"
AGREEMENT_DOC: JsonObject = {
    "type": "coalition.agreement.v1",
    "id": "skyair-staybright",
    "version": 2,
    "from_program": "skyair",
    "to_program": "staybright",
    "rate": [3, 2],
    "fee_bps": 100,
    "min_points": 100,
    "max_points": 100_000,
    "daily_cap_points": 200_000,
    "point_value": [1, 1],
    "currency": "EUR",
    "valid_from": "2026-11-01T00:00:00.000000Z",
    "valid_until": "2027-11-01T00:00:00.000000Z",
    "proposed_by": "skyair",
}
AGREEMENT = agreement_from_document(AGREEMENT_DOC)


@dataclass
class Chain:
    program: str
    now: datetime = T0
    entries: list[JsonObject] = field(default_factory=list)
    replay: Replay = field(default_factory=Replay)

    def ctx(self) -> EntryContext:
        self.now += timedelta(seconds=1)
        return EntryContext(self.program, f"{self.program}-{len(self.entries):04d}", self.now)

    def record(self, body: JsonObject | None) -> JsonObject:
        assert body is not None
        stored = parse_json(canonical_json(body))
        assert isinstance(stored, dict)
        self.replay.apply(stored)
        self.entries.append(stored)
        return stored

    def account(self, member: str):  # type: ignore[no-untyped-def]
        return self.replay.accounts[member]


def two_chains() -> tuple[Chain, Chain]:
    """skyair's and staybright's chains, holding every kind between them."""
    sky, stay = Chain("skyair"), Chain("staybright")
    for chain in (sky, stay):
        chain.record(
            operations.agreement_entry(chain.ctx(), {"agreement": AGREEMENT_DOC, "signatures": {}})
        )
        for member in (ALICE, BOB):
            chain.record(operations.enroll(chain.ctx(), member))
    rec = sky.record
    rec(
        operations.earn_purchase(
            sky.ctx(), RULES, ALICE, 0, "PNR-1", 48_000, "", reference_used=False
        )
    )
    rec(
        operations.earn_reward(
            sky.ctx(), RULES, sky.account(ALICE), "signup", "m-1", reference_used=False
        )
    )
    rec(operations.adjust(sky.ctx(), RULES, sky.account(ALICE), 5_000, "ops-1", "goodwill"))
    rec(operations.redeem(sky.ctx(), RULES, sky.account(ALICE), 100, "order-1"))
    rec(operations.transfer(sky.ctx(), RULES, sky.account(ALICE), BOB, 50, "a gift"))
    rec(operations.adjust(sky.ctx(), RULES, sky.account(ALICE), -25, "ops-1", "correction"))
    earn = rec(
        operations.earn_purchase(
            sky.ctx(), RULES, BOB, 0, "PNR-2", 10_000, "", reference_used=False
        )
    )
    rec(
        operations.clawback(
            sky.ctx(),
            sky.account(BOB),
            str(earn["id"]),
            "reverse",
            {"rule": "refund", "reference": "PNR-2"},
        )
    )
    reward = rec(
        operations.earn_reward(
            sky.ctx(), RULES, sky.account(BOB), "signup", "m-2", reference_used=False
        )
    )
    rec(
        operations.clawback(
            sky.ctx(),
            sky.account(BOB),
            str(reward["id"]),
            "revoke",
            {"rule": "revocation", "operator": "ops-1", "note": "fraud", "earn": reward["id"]},
        )
    )
    # conversions: one completed, one refunded, one rejected by staybright
    q = quote(AGREEMENT, 1_000)
    out = rec(operations.convert_out(sky.ctx(), RULES, sky.account(ALICE), AGREEMENT, q, "conv-1"))
    stay.record(
        operations.convert_in(stay.ctx(), RULES, ALICE, out, entry_leaf_hash(out).hex(), AGREEMENT)
    )
    rec(operations.convert_complete(sky.ctx(), ALICE, "conv-1", SIGNED))
    back = rec(operations.convert_out(sky.ctx(), RULES, sky.account(ALICE), AGREEMENT, q, "conv-2"))
    stay.record(operations.convert_reject(stay.ctx(), "conv-2", "skyair", "member not enrolled"))
    rec(operations.convert_refund(sky.ctx(), back, SIGNED))
    # holds: one captured (receipt on staybright), one voided
    until = sky.now + timedelta(days=1)
    held = rec(
        operations.hold(
            sky.ctx(),
            RULES,
            sky.account(ALICE),
            "hold-1",
            "staybright",
            "stay-1",
            300,
            until,
            AGREEMENT,
        )
    )
    capture = rec(operations.hold_capture(sky.ctx(), held, 300, "EUR"))
    stay.record(
        operations.redemption_receipt(
            stay.ctx(), "hold-1", "skyair", 300, 300, "EUR", sky.now, SIGNED
        )
    )
    voided = rec(
        operations.hold(
            sky.ctx(),
            RULES,
            sky.account(ALICE),
            "hold-2",
            "staybright",
            "stay-2",
            200,
            until,
            AGREEMENT,
        )
    )
    rec(operations.hold_release(sky.ctx(), voided, "void"))
    assert capture["kind"] == "hold-capture"
    # a statement of the period, then the year's end expires what is left
    end = sky.now + timedelta(days=1)
    owed = obligations("skyair", sky.entries, T0, end)
    doc = statement_document("st-1", ("skyair", "staybright"), T0, end, "EUR", owed)
    for chain in (sky, stay):
        chain.record(operations.statement_entry(chain.ctx(), {"statement": doc, "signatures": {}}))
    sky.now += timedelta(days=800)
    rec(operations.expire(sky.ctx(), sky.account(BOB)))
    first, second = SigningKey.from_pem(_SAMPLE_KEYS[0]), SigningKey.from_pem(_SAMPLE_KEYS[1])
    rec(operations.key_rotation_entry(sky.ctx(), sign_rotation("skyair", 1, first, second)))
    return sky, stay


def every_kind() -> dict[str, list[JsonObject]]:
    """The sample entries by kind (both chains)."""
    sky, stay = two_chains()
    found: dict[str, list[JsonObject]] = {}
    for entry in [*sky.entries, *stay.entries]:
        found.setdefault(str(entry["kind"]), []).append(entry)
    return found
