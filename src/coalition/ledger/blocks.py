"""Signed, hash-chained block headers.

A header commits to its block's entries (the RFC 9162 §2.1.1 root of the block's own
leaves), to the whole log after the block (log size and root, RFC 9162 §2.1) and to the
previous header (SHA-256 of its RFC 8785 canonical bytes), so one trusted header pins all
history before it. The program's key signs the header's canonical bytes (Ed25519).

``BlockHeader`` checks only form (types, ranges, hex, time format); whether a header
follows its predecessor is ``ChainVerifier``'s job (``make_header`` refuses to build one
that does not).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256

from coalition.errors import InvalidArgument
from coalition.ledger.canonical import MAX_SAFE_INTEGER, JsonObject, JsonValue, canonical_json
from coalition.ledger.entries import check_time, parse_time
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.ledger.merkle import root

HEADER_TYPE = "coalition/block-header/v1"
GENESIS_PREV = "0" * 64
"""The ``prev_hash`` of the header at height 0."""

_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_HEADER_KEYS = frozenset(
    {
        "type",
        "program",
        "height",
        "prev_hash",
        "first_index",
        "entry_count",
        "block_root",
        "log_size",
        "log_root",
        "sealed_at",
    }
)
_SIGNED_KEYS = frozenset({"header", "signature"})


def check_hex32(value: object, what: str) -> str:
    """``value`` if it is 64 lowercase hex characters, else InvalidArgument."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise InvalidArgument(f"{what} must be 64 lowercase hex characters")
    return value


def check_count(value: object, what: str) -> int:
    """``value`` if it is an integer in [0, 2**53 - 1] (not a bool), else InvalidArgument."""
    if type(value) is not int or not 0 <= value <= MAX_SAFE_INTEGER:
        raise InvalidArgument(f"{what} must be an integer in [0, 2**53 - 1]")
    return value


def check_keys(obj: object, keys: frozenset[str], what: str) -> JsonObject:
    """``obj`` if it is a JSON object with exactly ``keys``, else InvalidArgument."""
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    if obj.keys() != keys:
        missing = sorted(keys - obj.keys())
        extra = sorted(obj.keys() - keys)
        raise InvalidArgument(f"{what}: missing keys {missing}, unexpected keys {extra}")
    return obj


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """One block's header. Hashes are lowercase hex; ``sealed_at`` is RFC 3339 UTC as
    ``format_time`` writes it."""

    program: str
    height: int
    prev_hash: str
    first_index: int
    entry_count: int
    block_root: str
    log_size: int
    log_root: str
    sealed_at: str

    def __post_init__(self) -> None:
        if not isinstance(self.program, str) or not self.program:
            raise InvalidArgument("header program must be a non-empty string")
        check_count(self.height, "header height")
        check_count(self.first_index, "header first_index")
        check_count(self.entry_count, "header entry_count")
        check_count(self.log_size, "header log_size")
        check_hex32(self.prev_hash, "header prev_hash")
        check_hex32(self.block_root, "header block_root")
        check_hex32(self.log_root, "header log_root")
        check_time(self.sealed_at, "header sealed_at")

    def to_json(self) -> JsonObject:
        return {
            "type": HEADER_TYPE,
            "program": self.program,
            "height": self.height,
            "prev_hash": self.prev_hash,
            "first_index": self.first_index,
            "entry_count": self.entry_count,
            "block_root": self.block_root,
            "log_size": self.log_size,
            "log_root": self.log_root,
            "sealed_at": self.sealed_at,
        }

    @classmethod
    def from_json(cls, obj: JsonValue) -> BlockHeader:
        """Strict parse: exactly the keys of ``to_json``, right types; else InvalidArgument."""
        o = check_keys(obj, _HEADER_KEYS, "block header")
        if o["type"] != HEADER_TYPE:
            raise InvalidArgument(f"block header type must be {HEADER_TYPE!r}")
        program, prev_hash, block_root = o["program"], o["prev_hash"], o["block_root"]
        log_root, sealed_at = o["log_root"], o["sealed_at"]
        if not (
            isinstance(program, str)
            and isinstance(prev_hash, str)
            and isinstance(block_root, str)
            and isinstance(log_root, str)
            and isinstance(sealed_at, str)
        ):
            raise InvalidArgument("block header program, hashes and sealed_at must be strings")
        return cls(
            program=program,
            height=check_count(o["height"], "header height"),
            prev_hash=prev_hash,
            first_index=check_count(o["first_index"], "header first_index"),
            entry_count=check_count(o["entry_count"], "header entry_count"),
            block_root=block_root,
            log_size=check_count(o["log_size"], "header log_size"),
            log_root=log_root,
            sealed_at=sealed_at,
        )

    def hash(self) -> str:
        """Hex SHA-256 of the header's canonical bytes: what the next ``prev_hash`` holds."""
        return sha256(canonical_json(self.to_json())).hexdigest()


@dataclass(frozen=True, slots=True)
class SignedHeader:
    """A header and the program key's standard-base64 Ed25519 signature over it."""

    header: BlockHeader
    signature: str

    def to_json(self) -> JsonObject:
        return {"header": self.header.to_json(), "signature": self.signature}

    @classmethod
    def from_json(cls, obj: JsonValue) -> SignedHeader:
        o = check_keys(obj, _SIGNED_KEYS, "signed header")
        signature = o["signature"]
        if not isinstance(signature, str):
            raise InvalidArgument("signed header signature must be a string")
        return cls(BlockHeader.from_json(o["header"]), signature)

    def verify(self, key: VerifyKey) -> None:
        """Raises VerificationError unless ``key`` signed this header."""
        key.verify_object(self.header.to_json(), self.signature)


def make_header(
    program: str,
    prev: BlockHeader | None,
    first_index: int,
    block_leaf_hashes: Sequence[bytes],
    log_size: int,
    log_root: bytes,
    sealed_at: str,
) -> BlockHeader:
    """The header following ``prev`` (None: the genesis header) for a block of leaves.

    Raises InvalidArgument unless the block continues ``prev``: same program,
    ``first_index == prev.log_size``, ``log_size == first_index + len(leaves)`` and
    ``sealed_at`` not earlier than ``prev.sealed_at``.
    """
    expected_first = 0 if prev is None else prev.log_size
    if first_index != expected_first:
        raise InvalidArgument(f"first_index {first_index} != previous log size {expected_first}")
    if log_size != first_index + len(block_leaf_hashes):
        raise InvalidArgument("log_size must be first_index + the number of block entries")
    if prev is not None:
        if prev.program != program:
            raise InvalidArgument("a header must follow a header of the same program")
        if check_time(sealed_at, "sealed_at") < check_time(prev.sealed_at, "sealed_at"):
            raise InvalidArgument("sealed_at is earlier than the previous header's")
    return BlockHeader(
        program=program,
        height=0 if prev is None else prev.height + 1,
        prev_hash=GENESIS_PREV if prev is None else prev.hash(),
        first_index=first_index,
        entry_count=len(block_leaf_hashes),
        block_root=root(block_leaf_hashes).hex(),
        log_size=log_size,
        log_root=log_root.hex(),
        sealed_at=sealed_at,
    )


def sign_header(header: BlockHeader, key: SigningKey) -> SignedHeader:
    return SignedHeader(header, key.sign_object(header.to_json()))


def header_problem(h: BlockHeader) -> str | None:
    """Why one header alone is impossible for an honest program (None: it is not): its
    range does not add up, or at height 0 it is not a genesis header. The witness and the
    auditor judge fork evidence by this same rule."""
    if h.log_size != h.first_index + h.entry_count:
        return f"its log_size {h.log_size} is not first_index + entry_count at height {h.height}"
    if h.height == 0 and (
        h.prev_hash != GENESIS_PREV
        or h.first_index != 0
        or not hmac.compare_digest(h.log_root, h.block_root)
    ):
        return "its header at height 0 is not a genesis header"
    return None


def link_problem(prev: BlockHeader, h: BlockHeader) -> str | None:
    """Why ``h`` cannot follow ``prev``, the header one height below it (None: it can):
    ``prev_hash``, ``first_index`` or ``sealed_at`` does not continue ``prev``."""
    if not hmac.compare_digest(h.prev_hash, prev.hash()):
        return (
            f"its header at height {h.height} does not link to its header at {prev.height}: "
            "prev_hash is not that header's hash"
        )
    if h.first_index != prev.log_size:
        return (
            f"its header at height {h.height} starts at log index {h.first_index}, "
            f"not at the previous log size {prev.log_size}"
        )
    if parse_time(h.sealed_at) < parse_time(prev.sealed_at):
        return f"its header at height {h.height} is sealed before the one at {prev.height}"
    return None
