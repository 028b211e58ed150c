"""Write tests/vectors/rotation/: chains with a ledger key rotation, valid and broken.

Keys come from fixed seeds and Ed25519 signs deterministically, so running this again
writes the same bytes (tests/unit/test_rotation_vectors.py checks the files against a
fresh run and verifies each one). Each vector is one JSON file:

    {"description", "program", "first_key" (base64 raw key, epoch 0),
     "blocks": [{"header": {...}, "signature", "entries": [entry, ...]}, ...],
     "valid": bool, "error": null | {"height": int, "contains": "text"}}
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coalition.ledger.blocks import BlockHeader, make_header, sign_header
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import entry_leaf_hash, format_time
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import CompactRange
from coalition.ledger.rotation import KeyRotation, encode_key, sign_rotation, statement
from coalition.points import operations
from coalition.points.operations import EntryContext

OUT = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "rotation"
PROGRAM = "skyair"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def seeded(n: int) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


OLD, NEW, OTHER = seeded(1), seeded(2), seeded(3)


def entries(start: int, count: int, rotation: KeyRotation | None = None) -> list[JsonObject]:
    """``count`` enrolments from log index ``start``; the rotation (if any) second."""
    out: list[JsonObject] = []
    for n in range(start, start + count):
        ctx = EntryContext(PROGRAM, f"{n:032x}", T0 + timedelta(seconds=n))
        if rotation is not None and n == start + 1:
            out.append(dict(operations.key_rotation_entry(ctx, rotation)))
        else:
            out.append(dict(operations.enroll(ctx, f"member-{n}")))
    return out


def chain(blocks: list[tuple[list[JsonObject], SigningKey]]) -> list[JsonObject]:
    tree = CompactRange(stride=None)
    prev: BlockHeader | None = None
    out: list[JsonObject] = []
    for height, (block, key) in enumerate(blocks):
        leaves = [entry_leaf_hash(e) for e in block]
        first = tree.size
        tree.extend(leaves)
        sealed = format_time(T0 + timedelta(minutes=height + 1))
        header = make_header(PROGRAM, prev, first, leaves, tree.size, tree.root(), sealed)
        signed = sign_header(header, key)
        listed: list[JsonValue] = list(block)
        out.append({"header": header.to_json(), "signature": signed.signature, "entries": listed})
        prev = header
    return out


def vector(description: str, blocks: list[JsonObject], error: tuple[int, str] | None) -> JsonObject:
    return {
        "description": description,
        "program": PROGRAM,
        "first_key": encode_key(OLD.public_key),
        "blocks": list[JsonValue](blocks),
        "valid": error is None,
        "error": None if error is None else {"height": error[0], "contains": error[1]},
    }


def forged(rotation: KeyRotation, **changes: object) -> KeyRotation:
    fields = {
        "program": rotation.program,
        "epoch": rotation.epoch,
        "key": rotation.key,
        "previous_key_id": rotation.previous_key_id,
        "signature": rotation.signature,
        "proof": rotation.proof,
    }
    fields.update(changes)
    return KeyRotation(**fields)  # type: ignore[arg-type]


def vectors() -> dict[str, JsonObject]:
    good = sign_rotation(PROGRAM, 1, OLD, NEW)
    doc = statement(PROGRAM, 1, NEW.public_key, OLD.public_key.key_id)
    by_other = forged(good, signature=OTHER.sign_object(doc))
    unsigned = forged(good, signature="")
    bad_proof = forged(good, proof=OTHER.sign_object(doc))
    epoch_2 = sign_rotation(PROGRAM, 2, OLD, NEW)

    def three(
        rotation: KeyRotation, keys: tuple[SigningKey, SigningKey, SigningKey]
    ) -> list[JsonObject]:
        return chain(
            [
                (entries(0, 3), keys[0]),
                (entries(3, 3, rotation), keys[1]),
                (entries(6, 2), keys[2]),
            ]
        )

    return {
        "valid-rotation": vector(
            "block 1 holds the rotation (log index 4) and is signed by the old key; "
            "block 2 is signed by the new key",
            three(good, (OLD, OLD, NEW)),
            None,
        ),
        "old-key-after-rotation": vector(
            "block 2 comes after the rotation but is signed by the old key",
            three(good, (OLD, OLD, OLD)),
            (2, "bad signature"),
        ),
        "new-key-too-early": vector(
            "block 1, which holds the rotation, is signed by the new key: the new key is "
            "in force only from the next block",
            three(good, (OLD, NEW, NEW)),
            (1, "bad signature"),
        ),
        "rotation-signed-by-another-key": vector(
            "the rotation's signature is by a key that is not in force",
            three(by_other, (OLD, OLD, NEW)),
            (1, "not signed by the key in force"),
        ),
        "rotation-unsigned": vector(
            "the rotation carries no signature",
            three(unsigned, (OLD, OLD, NEW)),
            (1, "not signed by the key in force"),
        ),
        "rotation-bad-proof": vector(
            "the new key's proof is by another key",
            three(bad_proof, (OLD, OLD, NEW)),
            (1, "proof fails"),
        ),
        "rotation-skips-an-epoch": vector(
            "the first rotation names epoch 2",
            three(epoch_2, (OLD, OLD, NEW)),
            (1, "does not follow epoch 0"),
        ),
    }


def render(doc: JsonObject) -> bytes:
    return json.dumps(doc, indent=1, ensure_ascii=False).encode() + b"\n"


def main() -> int:
    argparse.ArgumentParser(
        description="Write the key-rotation test vectors (a chain with a rotation and its "
        "negatives) to tests/vectors/rotation."
    ).parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, doc in vectors().items():
        (OUT / f"{name}.json").write_bytes(render(doc))
    print(f"wrote {len(vectors())} vectors to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
