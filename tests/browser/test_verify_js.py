"""verify.js, the explorer's verifier, run in Chromium as a second implementation of the
proof formats: the published RFC 9162 vectors (inclusion and consistency, negatives
rejected), the worked example of docs/proofs.md, and real proof documents from a running
node, accepted as served and rejected after any one change.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coalition.api.http.app import create_app
from coalition.api.http.server import serve_http
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import SigningKey
from coalition.ledger.rotation import decode_key
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService

from support.nodes import temporary_node

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "merkle"
PROOFS_DOC = ROOT / "docs" / "proofs.md"

RUN_VERIFY = """
const [args, done] = arguments;
import("/explorer/verify.js")
  .then(async (v) => { %s })
  .then((value) => done({ value }), (err) => done({ error: String((err && err.stack) || err) }));
"""
"""Wraps a test's async JS body (given ``v``, the verify.js module, and ``args``); the
page's CSP forbids eval, so the body is part of the injected script itself."""


class Node:
    def __init__(self, service: NodeService, base_url: str) -> None:
        self.service = service
        self.base_url = base_url


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node with three sealed blocks, its REST app (and explorer) on a free port. Blocks
    are cut by ``flush`` only (no count or timer seal), so the chain's shape does not
    depend on how loaded the machine is."""
    url = f"sqlite:///{tmp_path_factory.mktemp('verify') / 'node.db'}"
    sealer = SealerConfig(max_entries=10_000, max_delay_ms=3_600_000)
    with temporary_node(url, program="skyair", sealer=sealer) as service:
        for block in range(3):
            for n in range(block + 2):
                member = f"m{block}-{n}"
                service.points.enroll(member, idempotency_key=f"e-{member}")
                service.points.adjust(
                    member, 100 + n, "ops", "opening", idempotency_key=f"a-{member}"
                )
            service.ledger.flush()
        keys = Authenticator([ApiKey("audit", key_digest("k"), Role.AUDITOR)])
        server, thread, port = serve_http(create_app(service, keys))
        try:
            yield Node(service, f"http://127.0.0.1:{port}")
        finally:
            server.should_exit = True
            thread.join(10)


@pytest.fixture
def verify(browser: Any, node: Node) -> Any:
    """Run an async JS body with ``v`` (the verify.js module) and ``args``; its value."""
    browser.get(f"{node.base_url}/explorer/")

    def run(script: str, args: Any = None) -> Any:
        result = browser.execute_async_script(RUN_VERIFY % script, args)
        assert "error" not in result, result.get("error")
        return result["value"]

    return run


def _vectors(kind: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted((VECTORS / kind).rglob("*.json")):
        vector = json.loads(path.read_text())
        vector["name"] = str(path.relative_to(VECTORS))
        vector["proof"] = vector.get("proof") or []
        found.append(vector)
    return found


CHECK_VECTORS = """
const b = (s) => v.base64ToBytes(s);
const out = [];
for (const t of args.vectors) {
  try {
    if (args.kind === "inclusion") {
      await v.verifyInclusion(b(t.leafHash), t.leafIdx, t.treeSize, t.proof.map(b), b(t.root));
    } else {
      await v.verifyConsistency(t.size1, t.size2, t.proof.map(b), b(t.root1), b(t.root2));
    }
    out.push({ name: t.name, accepted: true });
  } catch (err) {
    if (!(err instanceof v.VerificationError)) throw err;
    out.push({ name: t.name, accepted: false, why: err.message });
  }
}
return out;
"""


@pytest.mark.parametrize("kind", ["inclusion", "consistency"])
def test_rfc9162_vectors(verify: Any, kind: str) -> None:
    vectors = _vectors(kind)
    assert len(vectors) > 50
    results = verify(CHECK_VECTORS, {"kind": kind, "vectors": vectors})
    wrong = [
        r["name"]
        for r, vec in zip(results, vectors, strict=True)
        if r["accepted"] == vec["wantErr"]
    ]
    assert wrong == []
    assert sum(not v["wantErr"] for v in vectors) > 5 and sum(v["wantErr"] for v in vectors) > 5


VERIFY_DOCS = """
const key = await v.importPublicKey(args.pem);
const out = [];
for (const doc of args.docs) {
  const report = await v.verifyInclusionDocument(doc, key);
  const failed = report.checks.filter((c) => c.ok === false);
  out.push({ ok: report.ok, leaf: report.leafHash, header: report.headerHash,
             failed: failed.map((c) => c.id + ": " + c.detail) });
}
return out;
"""


def test_the_worked_example_of_proofs_md_verifies(verify: Any) -> None:
    text = PROOFS_DOC.read_text(encoding="utf-8")
    pem = re.search(r"-----BEGIN PUBLIC KEY-----\n\s*(\S+)\n\s*-----END PUBLIC KEY-----", text)
    example = re.search(r"### Inclusion proof of entry 2.*?```json\n(.*?)```", text, re.S)
    assert pem is not None and example is not None
    key = f"-----BEGIN PUBLIC KEY-----\n{pem.group(1)}\n-----END PUBLIC KEY-----\n"
    (report,) = verify(VERIFY_DOCS, {"pem": key, "docs": [json.loads(example.group(1))]})
    assert report["ok"], report["failed"]
    assert report["leaf"].startswith("c18af2fe")
    assert report["header"] == "809e8987c2aad74e5697df0a497e570c0f3041a44c0d8795aec8ab4e0dc56c83"


def _tampered(proof: JsonObject) -> dict[str, JsonObject]:
    """One change each: the verifier must reject every one."""

    def changed(edit: Any) -> JsonObject:
        doc = copy.deepcopy(proof)
        edit(doc)
        return doc

    def flip_signature(doc: Any) -> None:
        raw = bytearray(base64.b64decode(doc["signature"]))
        raw[10] ^= 0x01
        doc["signature"] = base64.b64encode(bytes(raw)).decode()

    def flip_path(doc: Any) -> None:
        doc["path"][-1] = ("0" if doc["path"][-1][0] != "0" else "1") + doc["path"][-1][1:]

    return {
        "amount": changed(lambda d: d["entry"].update(amount=d["entry"]["amount"] + 1)),
        "path": changed(flip_path),
        "signature": changed(flip_signature),
        "extra-path": changed(lambda d: d["path"].append(d["header"]["log_root"])),
        "short-path": changed(lambda d: d["path"].pop()),
        "leaf-index": changed(lambda d: d.update(leaf_index=d["leaf_index"] ^ 1)),
        "log-root": changed(lambda d: d["header"].update(log_root="0" * 64)),
        "header-height": changed(lambda d: d["header"].update(height=d["header"]["height"] + 1)),
        "tree-size": changed(lambda d: d.update(tree_size=d["tree_size"] + 1)),
        "extra-key": changed(lambda d: d.update(note="x")),
        "float": changed(lambda d: d["entry"].update(amount=d["entry"]["amount"] + 0.5)),
        "signature-not-canonical": changed(
            lambda d: d.update(signature=d["signature"][:-3] + "B==")
        ),
    }


def test_real_proofs_verify_and_tampered_ones_are_rejected(verify: Any, node: Node) -> None:
    service = node.service
    latest = service.ledger.latest_header()
    assert latest is not None and latest.header.height == 2
    ids = [e["id"] for h in range(3) for e in service.ledger.block(h)[1]]
    proofs = [service.ledger.inclusion_proof(str(i), None) for i in ids]
    pem = service.public_key.to_pem().decode()
    reports = verify(VERIFY_DOCS, {"pem": pem, "docs": proofs})
    assert [r["failed"] for r in reports] == [[] for _ in proofs]
    assert all(r["ok"] for r in reports)

    adjust = next(p for p in proofs if p["entry"]["kind"] == "adjust" and len(p["path"]) > 1)
    tampered = _tampered(adjust)
    reports = verify(VERIFY_DOCS, {"pem": pem, "docs": list(tampered.values())})
    for (name, _), report in zip(tampered.items(), reports, strict=True):
        assert not report["ok"], f"{name} was accepted"
    failed = dict(zip(tampered, (r["failed"][0] for r in reports), strict=True))
    assert failed["amount"].startswith("inclusion:")
    assert failed["path"].startswith("inclusion:")
    assert failed["signature"].startswith("signature:")
    assert failed["header-height"].startswith("signature:")
    assert failed["float"].startswith("leaf:")
    assert failed["extra-key"].startswith("shape:")


CONSISTENCY = """
const key = await v.importPublicKey(args.pem);
const h = (x) => v.hexToBytes(x);
const out = [];
for (const doc of args.docs) {
  try {
    await v.verifyHeaderSignature(doc.first, doc.first_signature, key);
    await v.verifyHeaderSignature(doc.second, doc.second_signature, key);
    await v.verifyConsistency(doc.first.log_size, doc.second.log_size, doc.path.map(h),
                              h(doc.first.log_root), h(doc.second.log_root));
    out.push(null);
  } catch (err) {
    out.push(err.message);
  }
}
return out;
"""


def test_real_consistency_proofs_verify(verify: Any, node: Node) -> None:
    service = node.service
    docs = [service.ledger.consistency_proof(a, b) for a in range(3) for b in range(a, 3)]
    pem = service.public_key.to_pem().decode()
    assert verify(CONSISTENCY, {"pem": pem, "docs": docs}) == [None] * len(docs)
    bad = copy.deepcopy(docs[1])  # heights 0 -> 1
    bad["path"][0] = "f" * 64
    assert "does not match" in verify(CONSISTENCY, {"pem": pem, "docs": [bad]})[0]


# --- key rotations (docs/proofs.md §11) ------------------------------------------------

ROTATION_VECTORS = ROOT / "tests" / "vectors" / "rotation"

CHECK_ROTATIONS = """
const out = [];
for (const t of args.cases) {
  try {
    const schedule = await v.verifyKeyRotations(t.pem, t.rotations);
    out.push({ name: t.name, accepted: true, epochs: schedule.length - 1 });
  } catch (err) {
    if (!(err instanceof v.VerificationError)) throw err;
    out.push({ name: t.name, accepted: false, why: err.message });
  }
}
return out;
"""


def _rotation_cases() -> list[dict[str, Any]]:
    """Each rotation vector as what the explorer fetches: the first key's PEM and the
    rotations with their log indexes."""
    cases = []
    for path in sorted(ROTATION_VECTORS.glob("*.json")):
        vector = json.loads(path.read_text())
        rotations, index = [], 0
        for block in vector["blocks"]:
            for entry in block["entries"]:
                if entry["kind"] == "key-rotation":
                    rotations.append({"log_index": index, "entry": entry})
                index += 1
        pem = decode_key(vector["first_key"]).to_pem().decode()
        cases.append({"name": path.stem, "pem": pem, "rotations": rotations})
    return cases


def test_verify_js_checks_the_rotation_vectors(verify: Any) -> None:
    results = {r["name"]: r for r in verify(CHECK_ROTATIONS, {"cases": _rotation_cases()})}
    rotation_faults = {
        "rotation-signed-by-another-key": "not signed by the key in force",
        "rotation-unsigned": "not signed by the key in force",
        "rotation-bad-proof": "proof does not verify",
        "rotation-skips-an-epoch": "names epoch 2, not 1",
    }
    for name, result in results.items():
        if name in rotation_faults:
            assert not result["accepted"] and rotation_faults[name] in result["why"], result
        else:  # the header faults of the other vectors are the signature check's
            assert result["accepted"] and result["epochs"] == 1, result


VERIFY_ROTATED = """
const schedule = await v.verifyKeyRotations(args.pem, args.rotations);
const first = await v.importPublicKey(args.pem);
const out = [];
for (const doc of args.docs) {
  const withSchedule = await v.verifyInclusionDocument(doc, schedule);
  const withFirst = await v.verifyInclusionDocument(doc, first);
  out.push({ schedule: withSchedule.ok, first: withFirst.ok,
             detail: withSchedule.checks.find((c) => c.id === "signature").detail });
}
return out;
"""


def test_proofs_after_a_rotation_verify_with_the_key_in_force(verify: Any, tmp_path: Path) -> None:
    sealer = SealerConfig(max_entries=10_000, max_delay_ms=3_600_000)
    with temporary_node(f"sqlite:///{tmp_path / 'r.db'}", sealer=sealer) as service:
        service.points.enroll("before", idempotency_key="before")
        service.ledger.flush()
        service.rotate_ledger_key(SigningKey.generate())
        service.ledger.flush()
        service.points.enroll("after", idempotency_key="after")
        last = service.ledger.flush()
        assert last is not None
        history = [service.ledger.block(h)[1] for h in range(last.header.height + 1)]
        before, after = history[0][0], history[-1][0]
        docs = [
            service.ledger.inclusion_proof(str(e["id"]), last.header.log_size)
            for e in (before, after)
        ]
        rotations = [{"log_index": i, "entry": e} for i, e in service.ledger.key_rotations()]
        pem = service.public_key.to_pem().decode()
    results = verify(VERIFY_ROTATED, {"pem": pem, "rotations": rotations, "docs": docs})
    # Both proofs are at the newest header (after the rotation): the schedule verifies
    # them, the first key alone does not.
    assert [(r["schedule"], r["first"]) for r in results] == [(True, False), (True, False)]
    assert "epoch 1" in results[1]["detail"]
