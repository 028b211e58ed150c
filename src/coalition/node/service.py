"""The node's application service: the one object the wiring builds and transports call.

It composes three parts, each with one job: the sequencer (``node/sequencer.py``, the
one write path and its contract), the points operations (``node/points_service.py``)
and the ledger reads (``node/ledger_service.py``). Features take it as their handle and
reach the parts as ``service.sequencer``, ``service.points`` and ``service.ledger``.
The member and ledger methods below only delegate, so the transports keep one object
to call; new code calls the parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import Engine

from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.node.config import SealerConfig
from coalition.node.ledger_service import LedgerService
from coalition.node.points_service import PointsService
from coalition.node.sequencer import Sequencer
from coalition.node.views import (
    BalanceView,
    BulkResult,
    EntryView,
    ExpiryResult,
    LotView,
    PurchaseRow,
    WriteResult,
)
from coalition.points.rules import ProgramRules


class NodeService:
    """One program's node: its sequencer, points operations and verifiable ledger."""

    def __init__(
        self,
        engine: Engine,
        program: str,
        key: SigningKey,
        account_secret: bytes,
        rules: ProgramRules,
        sealer: SealerConfig,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.program = program
        self.rules = rules
        self.public_key: VerifyKey = key.public_key
        self._key = key
        self.sequencer = Sequencer(engine, program, key, sealer, clock)
        self.sealer = self.sequencer.sealer
        self.points = PointsService(self.sequencer, rules, account_secret)
        self.ledger = LedgerService(self.sequencer, key.public_key)

    @property
    def signing_key(self) -> SigningKey:
        """The node's ledger key: coalition features sign agreements and receipts with it."""
        return self._key

    @property
    def engine(self) -> Engine:
        """The node's database, for the bundle export and the explorer's flows, which read
        it through the store; everything else reads through ``sequencer.read()``."""
        return self.sequencer.engine

    def now(self) -> datetime:
        """The node's clock (the time its entries carry)."""
        return self.sequencer.now()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start sealing in the background."""
        self.sealer.start()

    def close(self) -> None:
        """Seal what is pending, stop the sealer and release the database."""
        self.sequencer.close()

    # --- points operations (delegates to ``points``) ------------------------------------

    def enroll(self, member_id: str, *, idempotency_key: str) -> WriteResult:
        return self.points.enroll(member_id, idempotency_key=idempotency_key)

    def earn_purchase(
        self,
        member_id: str,
        reference: str,
        spend_minor: int,
        category: str = "",
        *,
        idempotency_key: str,
    ) -> WriteResult:
        return self.points.earn_purchase(
            member_id, reference, spend_minor, category, idempotency_key=idempotency_key
        )

    def earn_reward(
        self, member_id: str, event: str, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        return self.points.earn_reward(member_id, event, reference, idempotency_key=idempotency_key)

    def reverse_purchase(
        self, member_id: str, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        return self.points.reverse_purchase(member_id, reference, idempotency_key=idempotency_key)

    def revoke(
        self, member_id: str, earn_entry_id: str, operator: str, note: str, *, idempotency_key: str
    ) -> WriteResult:
        return self.points.revoke(
            member_id, earn_entry_id, operator, note, idempotency_key=idempotency_key
        )

    def redeem(
        self, member_id: str, amount: int, reference: str, *, idempotency_key: str
    ) -> WriteResult:
        return self.points.redeem(member_id, amount, reference, idempotency_key=idempotency_key)

    def transfer(
        self, member_id: str, to_member_id: str, amount: int, note: str, *, idempotency_key: str
    ) -> WriteResult:
        return self.points.transfer(
            member_id, to_member_id, amount, note, idempotency_key=idempotency_key
        )

    def adjust(
        self, member_id: str, amount: int, operator: str, note: str, *, idempotency_key: str
    ) -> WriteResult:
        return self.points.adjust(
            member_id, amount, operator, note, idempotency_key=idempotency_key
        )

    def run_expiry(self, batch: int = 500) -> ExpiryResult:
        return self.points.run_expiry(batch)

    def earn_bulk(
        self,
        rows: Iterable[PurchaseRow],
        *,
        batch_size: int = 2000,
        progress: Callable[[int], None] | None = None,
    ) -> BulkResult:
        return self.points.earn_bulk(rows, batch_size=batch_size, progress=progress)

    def balance(self, member_id: str) -> BalanceView:
        return self.points.balance(member_id)

    def lots(self, member_id: str) -> list[LotView]:
        return self.points.lots(member_id)

    def history(self, member_id: str, limit: int = 100) -> list[EntryView]:
        return self.points.history(member_id, limit)

    # --- ledger reads (delegates to ``ledger``) -----------------------------------------

    def latest_header(self) -> SignedHeader | None:
        return self.ledger.latest_header()

    def headers(self, start: int, limit: int = 1000) -> list[SignedHeader]:
        return self.ledger.headers(start, limit)

    def block(self, height: int) -> tuple[SignedHeader, list[JsonObject]]:
        return self.ledger.block(height)

    def entry(self, entry_id: str) -> EntryView:
        return self.ledger.entry(entry_id)

    def inclusion_proof(self, entry_id: str, tree_size: int | None = None) -> JsonObject:
        return self.ledger.inclusion_proof(entry_id, tree_size)

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject:
        return self.ledger.consistency_proof(first_height, second_height)

    def wait_for_header(self, after_height: int, timeout: float) -> SignedHeader | None:
        return self.ledger.wait_for_header(after_height, timeout)

    def flush(self) -> SignedHeader | None:
        return self.ledger.flush()
