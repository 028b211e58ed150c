"""The key-rotation test vectors (tests/vectors/rotation, written by
scripts/make_rotation_vectors.py): each chain is verified by ``ChainVerifier`` and by
the chain audit (from a stream, as a bundle hands it, and as lines); the valid one
passes, each broken one fails at the height and for the reason it names."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coalition.errors import VerificationError
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.chain import ChainVerifier
from coalition.ledger.entries import entry_leaf_hash
from coalition.ledger.keys import VerifyKey
from coalition.ledger.rotation import decode_key, rotations_in
from coalition.verify.chain_audit import audit_chain
from coalition.verify.source import BlockLines, RawEntry, RawHeader

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "rotation"
NAMES = sorted(p.stem for p in VECTORS.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    doc = json.loads((VECTORS / f"{name}.json").read_text())
    assert isinstance(doc, dict)
    return doc


def verify_chain(doc: dict[str, Any]) -> ChainVerifier:
    verifier = ChainVerifier(decode_key(doc["first_key"]), doc["program"])
    for block in doc["blocks"]:
        signed = SignedHeader.from_json(
            {"header": block["header"], "signature": block["signature"]}
        )
        bodies = [canonical_json(e) for e in block["entries"]]
        verifier.feed(
            signed,
            [entry_leaf_hash(e) for e in block["entries"]],
            rotations_in(bodies, signed.header.first_index),
        )
    return verifier


class _Lines:
    """The vector's blocks as a bundle hands them to the audit."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self._doc = doc

    def blocks(self) -> Iterator[tuple[RawHeader, BlockLines]]:
        index = 0
        for height, block in enumerate(self._doc["blocks"]):
            lines = [canonical_json(e) + b"\n" for e in block["entries"]]
            text = canonical_json(block["header"]).decode()
            yield (
                RawHeader(height, text, block["signature"]),
                BlockLines(index, lines, b"".join(lines)),
            )
            index += len(lines)

    def public_key(self) -> VerifyKey | None:
        return None

    def latest_header(self) -> RawHeader | None:
        return None

    def headers(self, start: int, limit: int) -> list[RawHeader]:
        raise AssertionError("read with blocks()")

    def block_entries(self, height: int, first_index: int, count: int) -> list[RawEntry]:
        raise AssertionError("read with blocks()")

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject | None:
        return None

    def close(self) -> None:
        return None


def test_there_is_a_valid_vector_and_the_negatives_the_format_promises() -> None:
    assert "valid-rotation" in NAMES
    assert {"old-key-after-rotation", "rotation-signed-by-another-key", "rotation-unsigned"} <= set(
        NAMES
    )


@pytest.mark.parametrize("name", NAMES)
def test_chain_verifier_follows_the_rotation_vector(name: str) -> None:
    doc = load(name)
    if doc["valid"]:
        verifier = verify_chain(doc)
        assert verifier.schedule.epoch == 1
        assert verifier.last is not None and verifier.last.height == len(doc["blocks"]) - 1
        return
    error = doc["error"]
    with pytest.raises(VerificationError) as caught:
        verify_chain(doc)
    message = str(caught.value)
    assert message.startswith(f"block at height {error['height']}"), message
    assert error["contains"] in message, message


@pytest.mark.parametrize("name", NAMES)
def test_chain_audit_follows_the_rotation_vector(name: str) -> None:
    doc = load(name)
    report = audit_chain(_Lines(doc), decode_key(doc["first_key"]), workers=0)
    if doc["valid"]:
        assert report.ok, report.render()
        return
    assert not report.ok
    heights = {f.height for f in report.faults.items}
    # The fault is named where it is: a bad rotation at its block (and the new key's
    # headers after it, now signed by a key not in force), a bad header at its height.
    assert doc["error"]["height"] in heights, report.render()
    kinds = {f.kind for f in report.faults.items}
    assert kinds <= {"key-rotation", "header-signature"}, report.render()


def test_the_vector_files_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_rotation_vectors", ROOT / "scripts" / "make_rotation_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, doc in module.vectors().items():
        assert (VECTORS / f"{name}.json").read_bytes() == module.render(doc), name
