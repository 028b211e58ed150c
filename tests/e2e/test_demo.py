"""``coalition demo`` end to end, and its evidence checked by a verifier that shares no
code with Coalition: RFC 9162 §2.1.3.2 / §2.1.4.2 proof verification and Ed25519 over
RFC 8785 canonical JSON, written here with hashlib and cryptography only.

The canonical form below is exact for what the ledger holds (objects, strings, integers,
booleans, no floats): sorted keys (ASCII keys sort the same by UTF-16 code units), no
whitespace, and json's escaping of control characters matches RFC 8785's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

ROOT = Path(__file__).resolve().parents[2]


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def inclusion_root(index: int, size: int, leaf_hash: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2."""
    assert 0 <= index < size
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        assert sn != 0, "proof too long"
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0, "proof too short"
    return r


def consistency_ok(size1: int, size2: int, root1: bytes, root2: bytes, path: list[bytes]) -> bool:
    """RFC 9162 §2.1.4.2 (with the size1 == size2 and size1 == 0 cases)."""
    if size1 == size2:
        return not path and root1 == root2
    if size1 == 0:
        return not path
    if not path:
        return False
    if size1 & (size1 - 1) == 0:  # an exact power of 2: the first root is a proof node
        path = [root1, *path]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == root1 and sr == root2


def check_signature(key: Ed25519PublicKey, header: dict[str, Any], signature: str) -> None:
    key.verify(base64.b64decode(signature, validate=True), canonical(header))


def hexes(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_the_independent_verifier_rejects_what_it_should() -> None:
    leaves = [leaf(bytes([n])) for n in range(5)]
    level1 = [node(leaves[0], leaves[1]), node(leaves[2], leaves[3])]
    root4 = node(*level1)
    root5 = node(root4, leaves[4])
    assert inclusion_root(2, 5, leaves[2], [leaves[3], level1[0], leaves[4]]) == root5
    assert inclusion_root(2, 5, leaves[3], [leaves[3], level1[0], leaves[4]]) != root5
    assert consistency_ok(4, 5, root4, root5, [leaves[4]])
    assert not consistency_ok(4, 5, root4, root5, [leaves[3]])
    assert not consistency_ok(4, 5, root5, root5, [leaves[4]])


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    done = subprocess.run(
        [sys.executable, "-m", "coalition.cli", "demo", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "audit         ok" in done.stdout
    return out


def test_demo_writes_the_evidence_files(evidence: Path) -> None:
    brand = evidence / "skyair"
    for name in ("public_key.pem", "headers.jsonl", "consistency.json"):
        assert (brand / name).is_file()
    assert (evidence / "audit.json").is_file()
    assert len(list((brand / "proofs").glob("*.json"))) > 3000


def test_every_header_is_signed_and_chained(evidence: Path) -> None:
    brand = evidence / "skyair"
    key = load_pem_public_key((brand / "public_key.pem").read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    lines = (brand / "headers.jsonl").read_text().splitlines()
    prev = "0" * 64
    size = 0
    for height, line in enumerate(lines):
        signed = json.loads(line)
        header = signed["header"]
        check_signature(key, header, signed["signature"])
        assert header["height"] == height and header["program"] == "skyair"
        assert header["prev_hash"] == prev
        assert header["first_index"] == size
        size = header["log_size"]
        assert size == header["first_index"] + header["entry_count"]
        prev = hashlib.sha256(canonical(header)).hexdigest()
    assert size == len(list((brand / "proofs").glob("*.json")))


def test_every_inclusion_proof_verifies_independently(evidence: Path) -> None:
    brand = evidence / "skyair"
    key = load_pem_public_key((brand / "public_key.pem").read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    signed_headers = {
        json.loads(line)["signature"] for line in (brand / "headers.jsonl").read_text().splitlines()
    }
    seen: set[int] = set()
    kinds: set[str] = set()
    for path in (brand / "proofs").glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["type"] == "coalition/inclusion-proof/v1"
        entry, header = doc["entry"], doc["header"]
        assert path.stem == entry["id"]
        assert doc["tree_size"] == header["log_size"]
        assert doc["signature"] in signed_headers
        check_signature(key, header, doc["signature"])
        computed = inclusion_root(
            doc["leaf_index"], doc["tree_size"], leaf(canonical(entry)), hexes(doc["path"])
        )
        assert computed.hex() == header["log_root"], path.name
        seen.add(doc["leaf_index"])
        kinds.add(entry["kind"])
    assert seen == set(range(len(seen)))
    assert {
        "enroll",
        "earn",
        "redeem",
        "transfer",
        "reverse",
        "revoke",
        "adjust",
        "expire",
    } <= kinds

    some = next((brand / "proofs").glob("*.json"))
    forged = json.loads(some.read_text())
    forged["entry"]["at"] = "2000-01-01T00:00:00Z"
    root = inclusion_root(
        forged["leaf_index"],
        forged["tree_size"],
        leaf(canonical(forged["entry"])),
        hexes(forged["path"]),
    )
    assert root.hex() != forged["header"]["log_root"]


def test_consistency_proof_verifies_independently(evidence: Path) -> None:
    brand = evidence / "skyair"
    key = load_pem_public_key((brand / "public_key.pem").read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    doc = json.loads((brand / "consistency.json").read_text())
    first, second = doc["first"], doc["second"]
    check_signature(key, first, doc["first_signature"])
    check_signature(key, second, doc["second_signature"])
    last = json.loads((brand / "headers.jsonl").read_text().splitlines()[-1])["header"]
    assert first["height"] == 0 and second == last
    args = (first["log_size"], second["log_size"])
    roots = (bytes.fromhex(first["log_root"]), bytes.fromhex(second["log_root"]))
    assert consistency_ok(*args, *roots, hexes(doc["path"]))
    with pytest.raises(InvalidSignature):
        check_signature(
            key, {**second, "log_size": second["log_size"] + 1}, doc["second_signature"]
        )


def test_audit_report_says_ok(evidence: Path) -> None:
    report = json.loads((evidence / "audit.json").read_text())
    assert report["ok"] is True
    assert report["fault_count"] == 0
    last = json.loads((evidence / "skyair" / "headers.jsonl").read_text().splitlines()[-1])
    assert report["log_size"] == last["header"]["log_size"]
    assert report["program"] == "skyair"
