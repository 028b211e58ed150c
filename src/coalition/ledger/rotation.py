"""Rotation of a program's ledger signing key: the one rule of which key signs a header.

A program's first key (the one in the coalition manifest) is epoch 0. A ``key-rotation``
entry in the program's own log names the next key: its ``rotation`` object carries the
epoch (previous + 1), the new raw Ed25519 key, the previous key's id, the previous key's
signature over the rotation statement (the authority) and the new key's signature over
the same statement (proof that the program holds the new private key).

**The boundary.** The key that signs the header of a block is the key in force after
every rotation entry at a log index *below the block's* ``first_index``: a rotation entry
takes effect with the first block after the one that holds it. So the block holding a
rotation is still signed by the old key, which thereby also signs the rotation entry
itself into the log (its leaf is under the signed ``block_root``), and every later header
is signed by the new key. Several rotations may sit in one block; each must be signed by
the key the one before it named.

``KeySchedule`` is that rule, and every verifier (``ChainVerifier``, the chain audit, the
witness, the C2SP checkpoints, proof documents) and the sealer ask it; nothing else
decides which key signs a header. It is pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coalition.errors import CoalitionError, InvalidArgument, VerificationError
from coalition.ledger.blocks import BlockHeader, check_count, check_hex32, check_keys
from coalition.ledger.canonical import JsonObject, JsonValue, parse_json
from coalition.ledger.keys import PUBLIC_KEY_SIZE, SigningKey, VerifyKey

ROTATION_KIND = "key-rotation"
"""The entry kind that rotates the key (``points.kinds`` declares its fields)."""
STATEMENT_TYPE = "coalition/key-rotation/v1"
"""The ``type`` of the statement both keys sign."""
ROTATION_FIELD = "rotation"
_FIELDS = frozenset({"epoch", "key", "key_id", "previous_key_id", "signature", "proof"})
_MARK = ROTATION_KIND.encode()


def encode_key(key: VerifyKey) -> str:
    """Standard base64 of the raw 32-byte key: how a rotation names the new key."""
    return base64.b64encode(key.raw).decode("ascii")


def decode_key(text: object) -> VerifyKey:
    """The key ``encode_key`` wrote; InvalidArgument unless canonical base64 of 32 bytes."""
    if not isinstance(text, str):
        raise InvalidArgument("a rotation's key must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("a rotation's key is not valid base64") from None
    if len(raw) != PUBLIC_KEY_SIZE or base64.b64encode(raw).decode("ascii") != text:
        raise InvalidArgument("a rotation's key must be canonical base64 of 32 bytes")
    return VerifyKey.from_raw(raw)


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """One rotation as a ``key-rotation`` entry's ``rotation`` object carries it.
    Form only: whether its signatures hold is ``KeySchedule.check``'s question."""

    program: str
    epoch: int
    key: VerifyKey
    previous_key_id: str
    signature: str
    proof: str

    def statement(self) -> JsonObject:
        """What the previous key (``signature``) and the new key (``proof``) sign."""
        return statement(self.program, self.epoch, self.key, self.previous_key_id)

    def to_json(self) -> JsonObject:
        """The entry's ``rotation`` field."""
        return {
            "epoch": self.epoch,
            "key": encode_key(self.key),
            "key_id": self.key.key_id,
            "previous_key_id": self.previous_key_id,
            "signature": self.signature,
            "proof": self.proof,
        }

    @classmethod
    def from_json(cls, program: str, obj: JsonValue) -> KeyRotation:
        """Strict parse of a ``rotation`` object of ``program``'s entry; InvalidArgument."""
        o = check_keys(obj, _FIELDS, "key rotation")
        epoch = check_count(o["epoch"], "rotation epoch")
        if epoch < 1:
            raise InvalidArgument("a rotation's epoch starts at 1 (the manifest key is 0)")
        key = decode_key(o["key"])
        if check_hex32(o["key_id"], "rotation key_id") != key.key_id:
            raise InvalidArgument("a rotation's key_id is not the SHA-256 of its key")
        signature, proof = o["signature"], o["proof"]
        if not isinstance(signature, str) or not isinstance(proof, str):
            raise InvalidArgument("a rotation's signature and proof must be base64 strings")
        previous = check_hex32(o["previous_key_id"], "rotation previous_key_id")
        return cls(program, epoch, key, previous, signature, proof)


def statement(program: str, epoch: int, key: VerifyKey, previous_key_id: str) -> JsonObject:
    """The rotation statement: canonical JSON of it is what both keys sign."""
    return {
        "type": STATEMENT_TYPE,
        "program": program,
        "epoch": epoch,
        "key": encode_key(key),
        "previous_key_id": previous_key_id,
    }


def sign_rotation(program: str, epoch: int, old: SigningKey, new: SigningKey) -> KeyRotation:
    """The rotation from ``old`` (the key in force at ``epoch - 1``) to ``new``."""
    doc = statement(program, epoch, new.public_key, old.public_key.key_id)
    return KeyRotation(
        program,
        epoch,
        new.public_key,
        old.public_key.key_id,
        old.sign_object(doc),
        new.sign_object(doc),
    )


def rotation_of(body: JsonValue) -> KeyRotation | None:
    """The rotation a parsed entry carries (None: it is not a ``key-rotation`` entry);
    InvalidArgument when it is one whose ``rotation`` is malformed."""
    if not isinstance(body, dict) or body.get("kind") != ROTATION_KIND:
        return None
    program = body.get("program")
    if not isinstance(program, str):
        raise InvalidArgument("a key-rotation entry names no program")
    return KeyRotation.from_json(program, body.get(ROTATION_FIELD))


def rotations_in(bodies: Sequence[bytes], first_index: int) -> list[tuple[int, KeyRotation]]:
    """The rotations among a block's entry bytes, with their log indexes (the block
    starts at ``first_index``). Only bodies that mention the kind are parsed, so a
    block without one costs a substring search per entry. A body that does not parse
    or a malformed rotation raises VerificationError naming the log index."""
    found = []
    for n, data in enumerate(bodies):
        if _MARK not in data:
            continue
        try:
            rotation = rotation_of(parse_json(data))
        except CoalitionError as exc:
            raise VerificationError(f"log index {first_index + n}: {exc}") from None
        if rotation is not None:
            found.append((first_index + n, rotation))
    return found


class KeySchedule:
    """The keys of one program over its log: the first key, then each rotation.

    Rotations are applied in log order (``apply``); ``key`` is the key in force for the
    next block, ``key_for`` the key of any header at or before it (see the module's
    boundary). ``apply`` refuses, changing nothing, a rotation that is not the next epoch,
    not of this program, not from the key in force, or whose signature or proof fails.
    """

    __slots__ = ("_indexes", "_keys", "program")

    def __init__(self, program: str, first: VerifyKey) -> None:
        self.program = program
        self._keys: list[VerifyKey] = [first]
        self._indexes: list[int] = [-1]
        """``_indexes[e]``: the log index of the rotation to epoch ``e`` (-1: the first)."""

    @property
    def key(self) -> VerifyKey:
        """The key in force after the last rotation applied."""
        return self._keys[-1]

    @property
    def epoch(self) -> int:
        return len(self._keys) - 1

    @property
    def first(self) -> VerifyKey:
        return self._keys[0]

    @property
    def last_index(self) -> int:
        """The log index of the last rotation applied (-1: none)."""
        return self._indexes[-1]

    def epochs(self) -> list[tuple[int, VerifyKey]]:
        """Each epoch's key with the log index of the rotation that named it (-1: first)."""
        return list(zip(self._indexes, self._keys, strict=True))

    def check(self, rotation: KeyRotation) -> None:
        """VerificationError unless ``rotation`` may follow the key in force."""
        what = f"key rotation to epoch {rotation.epoch}"
        if rotation.program != self.program:
            raise VerificationError(f"{what} is of program {rotation.program!r}")
        if rotation.epoch != self.epoch + 1:
            raise VerificationError(f"{what} does not follow epoch {self.epoch}")
        if not hmac.compare_digest(rotation.previous_key_id, self.key.key_id):
            raise VerificationError(
                f"{what} names previous key {rotation.previous_key_id[:16]}, "
                f"not the key in force {self.key.key_id[:16]}"
            )
        if rotation.key == self.key:
            raise VerificationError(f"{what} names the key already in force")
        doc = rotation.statement()
        try:
            self.key.verify_object(doc, rotation.signature)
        except VerificationError as exc:
            raise VerificationError(f"{what} is not signed by the key in force: {exc}") from None
        try:
            rotation.key.verify_object(doc, rotation.proof)
        except VerificationError as exc:
            raise VerificationError(f"{what}: the new key's proof fails: {exc}") from None

    def apply(self, rotation: KeyRotation, log_index: int) -> None:
        """Check ``rotation`` (at ``log_index``, after the last one applied) and put its
        key in force from the next block on."""
        if log_index <= self._indexes[-1]:
            raise VerificationError(f"key rotation at log index {log_index} is out of order")
        self.check(rotation)
        self._keys.append(rotation.key)
        self._indexes.append(log_index)

    def apply_all(self, rotations: Iterable[tuple[int, KeyRotation]]) -> None:
        for log_index, rotation in rotations:
            self.apply(rotation, log_index)

    def key_at(self, first_index: int) -> VerifyKey:
        """The key that signs a block starting at log index ``first_index``: the key of
        the last rotation applied at an index below it. A caller MUST have applied every
        rotation below ``first_index`` (the schedule cannot know of rotations it was
        not given)."""
        return self._keys[bisect_left(self._indexes, first_index) - 1]

    def key_for(self, header: BlockHeader) -> VerifyKey:
        """The key that must have signed ``header`` (``key_at`` its ``first_index``)."""
        return self.key_at(header.first_index)

    def key_by_id(self, key_id: str) -> VerifyKey | None:
        """The key of this schedule with ``key_id`` (None: none of its epochs)."""
        return next((k for k in self._keys if k.key_id == key_id), None)

    def copy(self) -> KeySchedule:
        other = KeySchedule(self.program, self._keys[0])
        other._keys = list(self._keys)
        other._indexes = list(self._indexes)
        return other


HeaderKeys = VerifyKey | KeySchedule
"""What a verifier of signed headers takes: one key (a chain that never rotated, or a
key the caller knows to be in force) or the program's schedule."""


def header_key(keys: HeaderKeys, header: BlockHeader) -> VerifyKey:
    """The key that must have signed ``header``."""
    return keys.key_for(header) if isinstance(keys, KeySchedule) else keys
