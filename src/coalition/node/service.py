"""The node's application service: the one object the wiring builds, holding its parts.

It composes three parts, each with one job: the sequencer (``node/sequencer.py``, the
one write path and its contract), the points operations (``node/points_service.py``)
and the ledger reads (``node/ledger_service.py``). Features and transports call the
parts, ``service.sequencer``, ``service.points`` and ``service.ledger``; this object
only owns their life cycle and the node's identity (program, keys, rules, clock).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.node.config import SealerConfig
from coalition.node.ledger_service import LedgerService
from coalition.node.points_service import PointsService
from coalition.node.read_only import ReadOnlySequencer
from coalition.node.sequencer import Sequencer
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
        *,
        read_only_primary: str | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """``read_only_primary``: a read-only process (``node/read_only.py``) whose writes
        are refused naming this primary; it never seals. ``monotonic``: see ``Sequencer``
        (the simulator's clock)."""
        self.program = program
        self.rules = rules
        self.public_key: VerifyKey = key.public_key
        self._key = key
        self.read_only = read_only_primary is not None
        self.primary = read_only_primary
        """Where a read-only process sends writers (None for a writing process)."""
        self.sequencer = (
            Sequencer(engine, program, key, sealer, clock, monotonic=monotonic)
            if read_only_primary is None
            else ReadOnlySequencer(read_only_primary, engine, program, key, sealer, clock)
        )
        self.sealer = self.sequencer.sealer
        self.leadership = self.sequencer.leadership
        self.points = PointsService(self.sequencer, rules, account_secret)
        self._on_close: list[Callable[[], None]] = []
        self.ledger = LedgerService(self.sequencer, key.public_key)

    @property
    def signing_key(self) -> SigningKey:
        """The node's ledger key: coalition features sign agreements and receipts with it."""
        return self._key

    def now(self) -> datetime:
        """The node's clock (the time its entries carry)."""
        return self.sequencer.now()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Claim the node's lease and start sealing (or following) in the background; a
        read-only process starts nothing (it never seals)."""
        if not self.read_only:
            self.sequencer.start()

    def on_close(self, release: Callable[[], None]) -> None:
        """Run ``release`` after the service closed (the composition root hands it what it
        holds for the service's life, such as the SQLite writer lock)."""
        self._on_close.append(release)

    def abandon(self) -> None:
        """Let the database go as a killed process does (the simulator's crash): nothing
        sealed, the lease not given up (it lapses), outbox claims kept; the connections
        closed and what ``on_close`` was given released. The service MUST NOT be used
        afterwards; a new one built on the same database resumes from what is committed."""
        try:
            self.sequencer.engine.dispose()
        finally:
            while self._on_close:
                self._on_close.pop()()

    def close(self) -> None:
        """Seal what is pending (holding the lease), stop the sealer, let the lease go,
        release the database, then what ``on_close`` was given; idempotent."""
        try:
            self.sequencer.close()
        finally:
            while self._on_close:
                self._on_close.pop()()
