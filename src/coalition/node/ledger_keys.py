"""The node's ledger signing keys across rotations, and the rotation itself.

Which key signs a header is ``ledger.rotation.KeySchedule``'s rule (the key in force
after every rotation entry below the block's first index). This module only holds the
private keys: the first key (the configured ``signing_key`` file, whose public key is the
manifest's) and the rotated ones, which the composition root loads by key id
(``ops.keyfiles.rotated_key_loader``: ``keys/rotated/<key_id>.pem`` beside the first).

Contract (callers depend on it):

- **The schedule comes from the database**: ``refresh`` reads the stored ``key-rotation``
  entries after the last one it applied, so every process of a node, whoever wrote the
  rotation, signs with the key the chain says is in force; no process keeps the key in
  force in configuration.
- **A key this process cannot load is never guessed**: ``signing_key`` raises
  FailedPrecondition naming the key id and where the file must be, and the sealer then
  seals nothing (the entries stay pending, nothing is lost) until the file is there.
- ``rotation_decision`` is the rotation as a serial decision (``Sequencer.decide``),
  built from the schedule read in its own transaction, so two rotations at once give two
  consecutive epochs, each signed by the key the other put in force, or a refusal; never
  two rotations from one key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import Connection

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.ledger.rotation import KeySchedule, rotation_of, sign_rotation
from coalition.points.operations import EntryContext, key_rotation_entry
from coalition.points.state import Account
from coalition.store import ledger as ledger_store

RotationDecision = tuple[JsonObject, list[Account], set[str]]
"""The rotation entry, as a ``Sequencer`` decision (no account, no lot)."""
RotatedKeyLoader = Callable[[str], SigningKey | None]
"""A rotated private key by its key id (None: this process has no such file)."""


def stored_schedule(conn: Connection, program: str, first: VerifyKey) -> KeySchedule:
    """The key schedule of the stored log (every rotation entry, in log order)."""
    schedule = KeySchedule(program, first)
    _apply_stored(conn, schedule)
    return schedule


def _apply_stored(conn: Connection, schedule: KeySchedule) -> None:
    for index, body in ledger_store.key_rotations_after(conn, schedule.last_index):
        rotation = rotation_of(parse_json(body))
        if rotation is None:  # the kind column says key-rotation: the body must too
            raise FailedPrecondition(f"log index {index} is stored as a key rotation but is not")
        schedule.apply(rotation, index)


class LedgerKeys:
    """The private keys of one node's ledger key schedule, as this process holds them."""

    def __init__(
        self, program: str, first: SigningKey, load: RotatedKeyLoader | None = None
    ) -> None:
        self.first = first
        self._load = load
        self._held: dict[str, SigningKey] = {first.public_key.key_id: first}
        self._lock = threading.Lock()
        self.schedule = KeySchedule(program, first.public_key)
        """The schedule as of the last ``refresh``."""

    def refresh(self, conn: Connection) -> KeySchedule:
        """Apply the rotations stored since the last call; the schedule."""
        with self._lock:
            schedule = self.schedule.copy()
            _apply_stored(conn, schedule)
            self.schedule = schedule
            return schedule

    def signing_key(self, key: VerifyKey) -> SigningKey:
        """The private key of ``key`` (loaded once, by its key id); FailedPrecondition
        when this process has no file for it."""
        with self._lock:
            held = self._held.get(key.key_id)
            if held is None and self._load is not None:
                held = self._load(key.key_id)
                if held is not None and held.public_key != key:
                    raise FailedPrecondition(
                        f"the rotated key file for {key.key_id[:16]} holds another key"
                    )
                if held is not None:
                    self._held[key.key_id] = held
            if held is None:
                raise FailedPrecondition(
                    f"the ledger key in force ({key.key_id}) is not available to this "
                    "process: put its file in the node's keys/rotated/ folder "
                    "(coalition ledger rotate-key writes it there)"
                )
            return held

    def rotation_decision(
        self, new: SigningKey
    ) -> Callable[[Connection, EntryContext], RotationDecision]:
        """The serial decision that appends the rotation to ``new`` (``Sequencer.decide``):
        refused with InvalidArgument when ``new`` is already one of the schedule's keys,
        FailedPrecondition when this process does not hold the key in force."""

        def decide(conn: Connection, ctx: EntryContext) -> RotationDecision:
            schedule = stored_schedule(conn, ctx.program, self.first.public_key)
            if schedule.key_by_id(new.public_key.key_id) is not None:
                raise InvalidArgument(
                    f"key {new.public_key.key_id[:16]} was already a ledger key of "
                    f"{ctx.program}: rotate to a new key"
                )
            old = self.signing_key(schedule.key)
            rotation = sign_rotation(ctx.program, schedule.epoch + 1, old, new)
            schedule.check(rotation)
            with self._lock:
                self._held[new.public_key.key_id] = new
            return key_rotation_entry(ctx, rotation), [], set()

        return decide
