"""``coalition audit --manifest``: one command proves a whole coalition consistent.

A real coalition of three nodes (SQLite, mutual-TLS partner gRPC, witnesses cosigning
each other's headers) converts points, captures a hold and agrees a settlement
statement; it audits sound and the auditor's state file is written. Then faults are
planted the way a dishonest node would (entries edited in a copy of its database, its
chain rebuilt and re-signed with its own key so the chain audits sound on its own) or
the way a tampered file would, and each is named by kind, program, height and entry: a
changed amount, a missing convert-in, a rate other than the agreement's, a statement
off by one, a rewritten older block (by the state file and the cosignatures), a forged
cosignature, a header nobody cosigned. Bundles exported from the databases audit the
same. One PostgreSQL variant of the clean audit covers the other storage.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from coalition.cli import main
from coalition.ledger.blocks import BlockHeader, make_header, sign_header
from coalition.ledger.canonical import JsonObject, canonical_json, parse_json
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import CompactRange, leaf_hash
from coalition.ledger.note import NoteSignature, parse_signature_line
from coalition.points.statements import sign_statement
from coalition.store.db import make_engine
from coalition.store.ledger import TREE_STRIDE, blocks, entries, tree_nodes
from coalition.store.witness import witness_cosignatures
from coalition.verify.state import STATE_TYPE

from support.coalition import RunningCoalition, agreement_doc, coalition_nodes, wait_for
from support.databases import node_urls, postgres_schema

A, B, C = "skyair", "staybright", "beanhouse"
PROGRAMS = (A, B, C)
Edit = Callable[[JsonObject], "JsonObject | None"]


@dataclass
class Built:
    """The stopped coalition: its manifest, each node's SQLite file and ledger key."""

    folder: Path
    manifest: Path
    databases: dict[str, Path]
    keys: dict[str, SigningKey]


def run_coalition(running: RunningCoalition) -> None:
    """Agreement skyair -> staybright; a conversion and a captured hold skyair owes
    staybright for; their statement signed by both; witnesses cosign every header."""
    start = datetime.now(UTC) - timedelta(seconds=1)
    a, b, c = running[A], running[B], running[C]
    a.agr.propose(agreement_doc(A, B))
    a.service.points.enroll("alice", idempotency_key="enroll-alice")
    a.service.points.adjust("alice", 10_000, "ops", "opening", idempotency_key="seed-alice")
    b.service.points.enroll("bob", idempotency_key="enroll-bob")
    c.service.points.enroll("carol", idempotency_key="enroll-carol")
    view = a.conv.convert("alice", B, "bob", 1000, idempotency_key="conv-1")
    wait_for(
        lambda: a.conv.status("alice", view.id).status == "completed",
        what="the conversion to complete",
    )
    held = b.redemptions.authorize(A, "alice", 300, "ref-1", 600, idempotency_key="h-1")
    assert b.redemptions.capture(held.hold_id).status == "captured"
    time.sleep(0.01)
    end = datetime.now(UTC)
    time.sleep(0.01)
    a.settlement.propose(B, start, end)
    for node in running.nodes.values():
        node.service.ledger.flush()
    for program, node in running.nodes.items():
        last = node.service.ledger.latest_header()
        assert last is not None
        for height in range(last.header.height + 1):
            wait_for(
                lambda n=node, h=height: cosigned(n, h), what=f"{program} at {height} cosigned"
            )


def cosigned(node: Any, height: int) -> bool:
    """Whether a partner's cosignature of the node's header at ``height`` reached it."""
    with node.service.sequencer.read() as conn:
        rows = conn.execute(
            select(witness_cosignatures.c.witness).where(
                witness_cosignatures.c.program == node.program,
                witness_cosignatures.c.height == height,
            )
        ).all()
    return len(rows) >= 1


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    folder = tmp_path_factory.mktemp("coalition")
    with (
        node_urls("sqlite:///unused", folder, PROGRAMS) as urls,
        coalition_nodes(folder, urls, witness=True) as running,
    ):
        run_coalition(running)
        keys = {p: n.key for p, n in running.nodes.items()}
    databases = {p: folder / f"{p}.db" for p in PROGRAMS}
    return Built(folder, folder / "coalition.toml", databases, keys)


# --- planting faults ---------------------------------------------------------------------


def copy_databases(built: Built, into: Path) -> dict[str, str]:
    """A copy of every node's database (SQLite's backup API); program -> URL."""
    into.mkdir(parents=True, exist_ok=True)
    urls: dict[str, str] = {}
    for program, path in built.databases.items():
        target = into / f"{program}.db"
        with sqlite3.connect(path) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
        urls[program] = f"sqlite:///{target}"
    return urls


def rewrite_chain(url: str, key: SigningKey, edit: Edit) -> int | None:
    """What a dishonest node does: apply ``edit`` to every entry body (None drops the
    entry), rebuild the blocks from the edited bodies (roots, tree nodes, links) and
    re-sign every header with the node's own key. The first height that changed."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            rows = [
                dict(r)
                for r in conn.execute(select(entries).order_by(entries.c.log_index)).mappings()
            ]
            old = [
                BlockHeader.from_json(parse_json(r.header))
                for r in conn.execute(select(blocks).order_by(blocks.c.height))
            ]
            assert old and old[-1].log_size == len(rows), "every entry is sealed"
            tree = CompactRange(stride=TREE_STRIDE)
            prev: BlockHeader | None = None
            kept: list[dict[str, Any]] = []
            new_blocks: list[dict[str, Any]] = []
            nodes: list[tuple[tuple[int, int], bytes]] = []
            first_changed: int | None = None
            for h in old:
                block: list[dict[str, Any]] = []
                for row in rows[h.first_index : h.first_index + h.entry_count]:
                    body = edit(parse_json(row["body"]))  # type: ignore[arg-type]
                    if body is None:
                        continue
                    data = canonical_json(body)
                    block.append({**row, "body": data.decode(), "leaf_hash": leaf_hash(data)})
                if not block:
                    continue
                leaves = [r["leaf_hash"] for r in block]
                first = tree.size
                nodes += tree.extend(leaves)
                header = make_header(
                    h.program, prev, first, leaves, tree.size, tree.root(), h.sealed_at
                )
                if header != h and first_changed is None:
                    first_changed = header.height
                signed = sign_header(header, key)
                new_blocks.append(
                    {
                        "height": header.height,
                        "header": canonical_json(header.to_json()).decode(),
                        "signature": signed.signature,
                        "log_size": header.log_size,
                    }
                )
                for n, row in enumerate(block):
                    kept.append({**row, "log_index": first + n})
                prev = header
            for table in (entries, blocks, tree_nodes):
                conn.execute(delete(table))
            conn.execute(insert(entries), kept)
            conn.execute(insert(blocks), new_blocks)
            if nodes:
                conn.execute(
                    insert(tree_nodes),
                    [{"level": lv, "idx": ix, "hash": digest} for (lv, ix), digest in nodes],
                )
    finally:
        engine.dispose()
    return first_changed


def entries_of(url: str, kind: str) -> list[JsonObject]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                select(entries.c.body).where(entries.c.kind == kind).order_by(entries.c.log_index)
            ).all()
    finally:
        engine.dispose()
    return [parse_json(row.body) for row in found]  # type: ignore[misc]


def height_of_entry(url: str, entry_id: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            index = conn.execute(
                select(entries.c.log_index).where(entries.c.entry_id == entry_id)
            ).scalar_one()
            for row in conn.execute(select(blocks).order_by(blocks.c.height)):
                h = BlockHeader.from_json(parse_json(row.header))
                if h.first_index <= index < h.log_size:
                    return h.height
    finally:
        engine.dispose()
    raise AssertionError(f"entry {entry_id} is in no block")


def when(kind: str, change: Callable[[JsonObject], None]) -> Edit:
    """An edit changing (in place, on a copy) each entry of ``kind``."""

    def edit(body: JsonObject) -> JsonObject | None:
        if body.get("kind") == kind:
            body = json.loads(json.dumps(body))
            change(body)
        return body

    return edit


# --- the audit ---------------------------------------------------------------------------


def audit(
    built: Built, tmp_path: Path, urls: dict[str, str], *extra: str
) -> tuple[int, dict[str, Any], str]:
    """``coalition audit --manifest`` on the databases ``urls``: exit code, JSON report
    and printed report."""
    out = tmp_path / "report.json"
    out.unlink(missing_ok=True)
    argv = ["audit", "--manifest", str(built.manifest), "--json", str(out)]
    for program, url in urls.items():
        argv += ["--database", f"{program}={url}"]
    code = main([*argv, *extra])
    report = json.loads(out.read_text()) if out.exists() else {}
    return code, report, ""


def faults(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in report["faults"] if f["kind"] == kind]


def test_the_clean_coalition_audits_sound_and_writes_the_state(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = copy_databases(built, tmp_path / "db")
    state = tmp_path / "state.json"
    code, report, _ = audit(built, tmp_path, urls, "--state", str(state), "--witness-grace", "0")
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert report["type"] == "coalition/coalition-audit/v1" and report["ok"] is True
    assert report["faults"] == [] and report["state"]["advanced"] == sorted(
        PROGRAMS, key=PROGRAMS.index
    )
    assert report["settlement"]["statements"] == 1
    [(currency, netting)] = report["settlement"]["netting"].items()
    # skyair owes staybright 990 (the conversion's value) + 300 (the captured hold).
    assert currency == "EUR" and netting["positions"] == {A: -1290, B: 1290}
    assert netting["payments"] == [{"payer": A, "payee": B, "amount": 1290}]
    for program in PROGRAMS:
        witnessing = report["witnesses"][program]
        assert witnessing["ok"] and witnessing["witnessed"] == witnessing["headers"] > 0
    assert report["cross_chain"]["conversions"] == 1 and report["cross_chain"]["holds"] == 1
    assert f"Coalition audit of {', '.join(PROGRAMS)}: OK" in printed

    saved = json.loads(state.read_text())
    assert saved["type"] == STATE_TYPE and set(saved["programs"]) == set(PROGRAMS)
    for program, pinned in saved["programs"].items():
        assert pinned["signed_header"]["header"]["program"] == program
    # Again with the state: still sound; audit-coalition is the same command.
    argv = ["audit-coalition", "--manifest", str(built.manifest), "--state", str(state)]
    for program, url in urls.items():
        argv += ["--database", f"{program}={url}"]
    assert main(argv) == 0


def test_bad_usage_exits_2(built: Built, tmp_path: Path) -> None:
    manifest = str(built.manifest)
    assert main(["audit"]) == 2
    assert main(["audit", "--manifest", manifest, "--database", "nonsense"]) == 2
    assert main(["audit", "--manifest", manifest, "--witness-grace", "-1"]) == 2
    assert main(["audit", "--database", "sqlite:///x.db", "--state", "s.json"]) == 2
    broken = tmp_path / "state.json"
    broken.write_text("{}")
    urls = copy_databases(built, tmp_path / "db")
    code, _, _ = audit(built, tmp_path, urls, "--state", str(broken))
    assert code == 2 and broken.read_text() == "{}"  # never overwritten


def test_a_changed_amount_is_named(built: Built, tmp_path: Path) -> None:
    urls = copy_databases(built, tmp_path / "db")
    [credit] = entries_of(urls[B], "convert-in")

    def more(body: JsonObject) -> None:
        body["amount"] = int(body["amount"]) + 1  # type: ignore[arg-type]

    rewrite_chain(urls[B], built.keys[B], when("convert-in", more))
    code, report, _ = audit(built, tmp_path, urls)
    assert code == 1
    assert report["chains"][B]["ok"] is True  # re-signed: sound on its own
    [found] = [f for f in faults(report, "convert-in-mismatch") if "credits" in f["message"]]
    assert (found["program"], found["entry_id"]) == (B, credit["id"])
    assert found["height"] == height_of_entry(urls[B], str(credit["id"]))
    assert "log_index" in found


def test_a_missing_convert_in_is_named(built: Built, tmp_path: Path) -> None:
    urls = copy_databases(built, tmp_path / "db")
    [complete] = entries_of(urls[A], "convert-complete")
    rewrite_chain(urls[B], built.keys[B], lambda b: None if b["kind"] == "convert-in" else b)
    code, report, _ = audit(built, tmp_path, urls)
    assert code == 1 and report["chains"][B]["ok"] is True
    [found] = faults(report, "convert-in-missing")
    assert (found["program"], found["entry_id"]) == (A, complete["id"])
    assert found["height"] == height_of_entry(urls[A], str(complete["id"]))
    # staybright's chain no longer gives the obligation its statement records.
    assert any(f["program"] == B for f in faults(report, "statement-mismatch"))


def test_a_rate_other_than_the_agreement_is_named(built: Built, tmp_path: Path) -> None:
    urls = copy_databases(built, tmp_path / "db")
    [out] = entries_of(urls[A], "convert-out")

    def rate(body: JsonObject) -> None:
        body["conversion"]["rate"] = [2, 1]  # type: ignore[index]

    rewrite_chain(urls[A], built.keys[A], when("convert-out", rate))
    code, report, _ = audit(built, tmp_path, urls)
    assert code == 1 and report["chains"][A]["ok"] is True
    [found] = faults(report, "quote-mismatch")
    assert (found["program"], found["entry_id"]) == (A, out["id"])
    assert found["height"] == height_of_entry(urls[A], str(out["id"]))
    assert "rate [2, 1]" in found["message"]


def test_a_statement_off_by_one_is_named(built: Built, tmp_path: Path) -> None:
    urls = copy_databases(built, tmp_path / "db")
    direction = f"{A}->{B}"

    def off_by_one(body: JsonObject) -> None:
        doc = body["statement"]["statement"]  # type: ignore[index]
        doc["owed"][direction] += 1  # type: ignore[index]
        body["statement"]["signatures"] = {  # type: ignore[index]
            p: sign_statement(doc, built.keys[p])  # type: ignore[arg-type]
            for p in (A, B)
        }

    for program in (A, B):  # both parties sign and record it: only the chains disagree
        rewrite_chain(urls[program], built.keys[program], when("statement", off_by_one))
    code, report, _ = audit(built, tmp_path, urls)
    assert code == 1 and report["chains"][A]["ok"] and report["chains"][B]["ok"]
    found = faults(report, "statement-mismatch")
    assert {f["program"] for f in found} == {A, B}
    for fault in found:
        [statement] = entries_of(urls[fault["program"]], "statement")
        assert fault["entry_id"] == statement["id"]
        assert fault["height"] == height_of_entry(urls[fault["program"]], str(statement["id"]))
        assert "the statement says 1291" in fault["message"]


def test_a_rewritten_older_block_is_caught_by_the_state_and_the_cosignatures(
    built: Built, tmp_path: Path
) -> None:
    urls = copy_databases(built, tmp_path / "db")
    state = tmp_path / "state.json"
    assert audit(built, tmp_path, urls, "--state", str(state))[0] == 0
    pinned = json.loads(state.read_text())["programs"][A]["signed_header"]["header"]["height"]

    def more(body: JsonObject) -> None:
        body["amount"] = 20_000

    changed = rewrite_chain(urls[A], built.keys[A], when("adjust", more))
    assert changed is not None and changed < pinned
    code, report, _ = audit(built, tmp_path, urls, "--state", str(state))
    assert code == 1 and report["state"]["advanced"] == [B, C]
    [rewritten] = faults(report, "history-rewritten")
    assert (rewritten["program"], rewritten["height"]) == (A, pinned)
    invalid = [f for f in faults(report, "cosignature-invalid") if f["program"] == A]
    assert min(f["height"] for f in invalid) == changed
    assert all(f["witness"] in (B, C) for f in invalid)
    # The state keeps skyair's old header: the next audit still fails.
    saved = json.loads(state.read_text())["programs"][A]["signed_header"]["header"]["height"]
    assert saved == pinned
    assert audit(built, tmp_path, urls, "--state", str(state))[0] == 1


def forge(line: str) -> str:
    sig = parse_signature_line(line)
    flipped = sig.signature[:-1] + bytes([sig.signature[-1] ^ 1])
    return NoteSignature(sig.name, sig.key_id, flipped).line()


def test_a_forged_cosignature_is_named(built: Built, tmp_path: Path) -> None:
    urls = copy_databases(built, tmp_path / "db")
    engine = make_engine(urls[B])
    with engine.begin() as conn:
        row = conn.execute(
            select(witness_cosignatures).where(
                witness_cosignatures.c.program == B, witness_cosignatures.c.height == 1
            )
        ).first()
        assert row is not None
        conn.execute(
            update(witness_cosignatures)
            .where(
                witness_cosignatures.c.program == B,
                witness_cosignatures.c.height == 1,
                witness_cosignatures.c.witness == row.witness,
            )
            .values(cosignature=forge(row.cosignature))
        )
    engine.dispose()
    code, report, _ = audit(built, tmp_path, urls)
    assert code == 1 and report["chains"][B]["ok"] is True
    [found] = faults(report, "cosignature-invalid")
    assert (found["program"], found["height"], found["witness"]) == (B, 1, row.witness)


def test_a_header_nobody_cosigned_is_pending_then_not_witnessed(
    built: Built, tmp_path: Path
) -> None:
    urls = copy_databases(built, tmp_path / "db")
    engine = make_engine(urls[C])
    with engine.begin() as conn:
        conn.execute(
            delete(witness_cosignatures).where(
                witness_cosignatures.c.program == C, witness_cosignatures.c.height == 0
            )
        )
    engine.dispose()
    code, report, _ = audit(built, tmp_path, urls, "--witness-grace", "3600")
    assert code == 0 and report["witnesses"][C]["pending"] == [0]
    code, report, _ = audit(built, tmp_path, urls, "--witness-grace", "0")
    assert code == 1
    [found] = faults(report, "not-witnessed")
    assert (found["program"], found["height"]) == (C, 0)


# --- bundles -----------------------------------------------------------------------------


def export_bundles(built: Built, urls: dict[str, str], folder: Path) -> Path:
    from coalition.audit.bundle import export_bundle

    folder.mkdir(parents=True, exist_ok=True)
    for program, url in urls.items():
        export_bundle(folder / f"{program}.bundle.gz", url, program, built.keys[program].public_key)
    return folder


def test_bundles_audit_the_same(built: Built, tmp_path: Path) -> None:
    urls = copy_databases(built, tmp_path / "db")
    clean = export_bundles(built, urls, tmp_path / "clean")
    out = tmp_path / "bundles.json"
    argv = ["audit", "--manifest", str(built.manifest), "--bundle-dir", str(clean)]
    assert main([*argv, "--witness-grace", "0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["settlement"]["statements"] == 1
    one = str(clean / f"{A}.bundle.gz")
    pem = tmp_path / "skyair.pem"
    pem.write_bytes(built.keys[A].public_key.to_pem())
    assert main(["audit", "--bundle", one, "--public-key", str(pem)]) == 0
    assert main(["audit", "--bundle", one]) == 0  # the bundle's own key, with a warning
    other = tmp_path / "other.pem"
    other.write_bytes(built.keys[B].public_key.to_pem())
    assert main(["audit", "--bundle", one, "--public-key", str(other)]) == 1

    def more(body: JsonObject) -> None:
        body["amount"] = int(body["amount"]) + 1  # type: ignore[arg-type]

    [credit] = entries_of(urls[B], "convert-in")
    rewrite_chain(urls[B], built.keys[B], when("convert-in", more))
    tampered = export_bundles(built, {B: urls[B]}, tmp_path / "tampered")
    argv += ["--bundle", f"{B}={tampered / f'{B}.bundle.gz'}", "--json", str(out)]
    assert main(argv) == 1
    report = json.loads(out.read_text())
    [found] = [f for f in faults(report, "convert-in-mismatch") if "credits" in f["message"]]
    assert (found["program"], found["entry_id"]) == (B, credit["id"])
    assert found["height"] == height_of_entry(urls[B], str(credit["id"]))
    # The witnesses' cosignatures, carried by the bundle, were made over the old history.
    assert any(f["program"] == B for f in faults(report, "cosignature-invalid"))


# --- PostgreSQL --------------------------------------------------------------------------


@pytest.mark.postgres
def test_the_clean_coalition_audits_sound_on_postgresql(
    postgres_available: None, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        url = stack.enter_context(postgres_schema())
        urls = stack.enter_context(node_urls(url, tmp_path, PROGRAMS))
        with coalition_nodes(tmp_path, urls, witness=True) as running:
            run_coalition(running)
        argv = ["audit", "--manifest", str(tmp_path / "coalition.toml")]
        for program, db in urls.items():
            argv += ["--database", f"{program}={db}"]
        out = tmp_path / "report.json"
        state = tmp_path / "state.json"
        code = main([*argv, "--witness-grace", "0", "--state", str(state), "--json", str(out)])
        report = json.loads(out.read_text())
        assert code == 0, report["faults"]
        assert report["settlement"]["statements"] == 1
        assert set(json.loads(state.read_text())["programs"]) == set(PROGRAMS)
