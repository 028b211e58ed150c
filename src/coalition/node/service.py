"""The node's application service: the one object the wiring builds, holding its parts.

It composes three parts, each with one job: the sequencer (``node/sequencer.py``, the
one write path and its contract), the points operations (``node/points_service.py``)
and the ledger reads (``node/ledger_service.py``), plus the issued API keys
(``node/api_keys.py``). Features and transports call the
parts, ``service.sequencer``, ``service.points`` and ``service.ledger``; this object
only owns their life cycle and the node's identity (program, keys, rules, clock).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from coalition.ledger.blocks import BlockHeader
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.ledger.rotation import KeySchedule
from coalition.node.api_keys import ApiKeyStore
from coalition.node.config import SealerConfig
from coalition.node.integrity import IntegrityState
from coalition.node.ledger_keys import RotatedKeyLoader
from coalition.node.ledger_service import LedgerService
from coalition.node.points_service import PointsService
from coalition.node.read_only import ReadOnlySequencer
from coalition.node.sequencer import Sequencer
from coalition.points.rules import ProgramRules
from coalition.store.failures import health_of


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
        rotated_keys: RotatedKeyLoader | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """``read_only_primary``: a read-only process (``node/read_only.py``) whose writes
        are refused naming this primary; it never seals. ``key`` is the program's first
        ledger key (the manifest's); ``rotated_keys`` loads the keys rotations put in
        force after it (``node.ledger_keys``). ``monotonic``: see ``Sequencer`` (the
        simulator's clock)."""
        self.program = program
        self.rules = rules
        self.public_key: VerifyKey = key.public_key
        self._key = key
        self.read_only = read_only_primary is not None
        self.primary = read_only_primary
        """Where a read-only process sends writers (None for a writing process)."""
        self.sequencer = (
            Sequencer(
                engine, program, key, sealer, clock, rotated_keys=rotated_keys, monotonic=monotonic
            )
            if read_only_primary is None
            else ReadOnlySequencer(
                read_only_primary, engine, program, key, sealer, clock, rotated_keys=rotated_keys
            )
        )
        self.sealer = self.sequencer.sealer
        self.leadership = self.sequencer.leadership
        self.points = PointsService(self.sequencer, rules, account_secret)
        self._on_close: list[Callable[[], None]] = []
        self.api_keys = ApiKeyStore(
            engine,
            self.sequencer.now,
            read_only_primary=None if read_only_primary is None else (program, read_only_primary),
        )
        """The API keys issued at run time (``node.api_keys``)."""
        self.integrity = IntegrityState()
        """What this process found checking its own ledger (``node.integrity``)."""
        self.ledger = LedgerService(self.sequencer, key.public_key, self.integrity)
        self.storage = health_of(engine)
        """The database's last storage failure, until it works again (``/healthz``)."""

    @property
    def signing_key(self) -> SigningKey:
        """The node's coalition identity key, the manifest's (the ledger's first key):
        coalition features sign agreements, receipts, partner messages and cosignatures
        with it. Block headers are signed by the key in force (``rotate_ledger_key``)."""
        return self._key

    def rotate_ledger_key(self, new: SigningKey) -> JsonObject:
        """Append the rotation of the ledger key to ``new``, signed by the key in force:
        headers of the blocks after the one that holds it are signed by ``new``
        (``ledger.rotation``). Every process of the node MUST be able to load ``new``
        by its key id (``keys/rotated/<key_id>.pem``) before it seals such a block."""
        entry = self.sequencer.decide(self.sequencer.keys.rotation_decision(new))
        assert entry is not None
        return entry

    def key_schedule(self) -> KeySchedule:
        """The program's ledger keys as the stored chain rotated them (``ledger.rotation``)."""
        with self.sequencer.read() as conn:
            return self.sequencer.keys.refresh(conn)

    def header_signing_key(
        self, header: BlockHeader, schedule: KeySchedule | None = None
    ) -> SigningKey:
        """The private key in force for ``header`` (it signs the header's C2SP checkpoint
        note too), by ``schedule`` (default: read now); FailedPrecondition when this
        process cannot load it."""
        found = schedule if schedule is not None else self.key_schedule()
        return self.sequencer.keys.signing_key(found.key_for(header))

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
