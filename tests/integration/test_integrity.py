"""A node checks its own ledger (issue 11, class 12): rows tampered in the database of a
stopped node stop its start, naming them; damage older than the start window is found by
the scrub, which then refuses that block's proofs; a proof the node serves never fails
the verifier; ``coalition check`` and ``coalition audit`` report the same faults.
On SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from coalition.api.grpc.client import NodeClient, TransportError
from coalition.api.grpc.server import serve_grpc
from coalition.api.http.app import create_app
from coalition.audit import DatabaseSource, audit_chain, check_database
from coalition.cli.audit import add_commands as add_audit_commands
from coalition.errors import LedgerDamaged
from coalition.ledger.keys import SigningKey
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.node.auth import Authenticator
from coalition.node.config import SealerConfig
from coalition.node.integrity import Scrub
from coalition.node.service import NodeService
from coalition.points.rules import ProgramRules
from coalition.runtime.wiring import open_service
from coalition.store.db import make_engine
from coalition.verify.block_checks import Fault

from support.nodes import temporary_node

MEMBERS = 20
"""Each member is enrolled and rewarded: 40 entries in 20 blocks of 2 (heights 0..19), so
the stored tree has level-4 nodes (4, 0) (completed at height 7) and (4, 1) (height 15)."""
SEALER = SealerConfig(max_entries=2, max_delay_ms=3_600_000)
RULES = ProgramRules(rewards={"signup": 500})
SECRET = b"test-account-secret-0123456789"


@dataclass
class Stopped:
    """The database of a stopped node, its key, and the way to start it again."""

    url: str
    key: SigningKey

    def sql(self, statement: str, **params: object) -> list[tuple[object, ...]]:
        engine = make_engine(self.url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def open(self, verify_at_start_blocks: int) -> NodeService:
        return open_service(
            self.url,
            "testair",
            self.key,
            SECRET,
            RULES,
            SEALER,
            sqlite_synchronous="NORMAL",
            verify_at_start_blocks=verify_at_start_blocks,
        )

    def entry(self, log_index: int) -> tuple[str, str]:
        rows = self.sql("SELECT entry_id, body FROM entries WHERE log_index = :i", i=log_index)
        return str(rows[0][0]), str(rows[0][1])

    def tamper_entry(self, log_index: int) -> str:
        """Backdate an entry to 1999 (same length, still a valid entry); its id."""
        entry_id, body = self.entry(log_index)
        match = re.search(r'"at":"(\d{4})-', body)
        assert match is not None and match.group(1) != "1999"
        tampered = body[: match.start(1)] + "1999" + body[match.end(1) :]
        self.sql("UPDATE entries SET body = :b WHERE log_index = :i", b=tampered, i=log_index)
        return entry_id


@pytest.fixture
def stopped(database_url: str) -> Stopped:
    key = SigningKey.generate()
    # Not started: no sealer thread, so only the flushes cut blocks and the chain has the
    # shape the heights below assume (a background seal on a loaded machine once cut a
    # block of one entry).
    with temporary_node(database_url, sealer=SEALER, rules=RULES, key=key, start=False) as service:
        for n in range(MEMBERS):
            member = f"member-{n:02d}"
            service.points.enroll(member, idempotency_key=f"enroll-{member}")
            service.points.earn_reward(member, "signup", member, idempotency_key=f"r-{member}")
            service.ledger.flush()
    node = Stopped(database_url, key)
    assert node.sql("SELECT max(height), max(log_size) FROM blocks") == [(19, 40)]
    return node


def _refusal(node: Stopped, blocks: int) -> str:
    with pytest.raises(LedgerDamaged) as refused:
        node.open(blocks).close()
    return str(refused.value)


# --- the start check -------------------------------------------------------------------


def test_a_sound_node_starts_after_verifying_its_newest_blocks(stopped: Stopped) -> None:
    service = stopped.open(5)
    try:
        found = service.integrity.to_json()
        assert found["status"] == "ok"
        assert found["start_check"] == {**found["start_check"], "status": "ok", "blocks": 5}
        assert found["start_check"]["entries"] == 10
    finally:
        service.close()


def test_start_refuses_a_tampered_entry_naming_it(stopped: Stopped) -> None:
    entry_id = stopped.tamper_entry(37)  # height 18
    message = _refusal(stopped, 10)
    assert "does not start" in message
    assert f"[entry-tampered] (height 18, log index 37, entry {entry_id})" in message


def test_start_refuses_a_tampered_tree_node_in_the_window(stopped: Stopped) -> None:
    stopped.sql("UPDATE tree_nodes SET hash = :h WHERE level = 4 AND idx = 1", h=bytes(32))
    message = _refusal(stopped, 10)
    assert "[tree-node] (height 15) the stored tree node (4, 1) is not the hash" in message


def test_start_refuses_a_tampered_tree_node_below_the_window(stopped: Stopped) -> None:
    """(4, 0) was stored at height 7, before a window of heights 10..19, but it is part
    of the stored frontier the window starts from: checked against height 9's log root."""
    stopped.sql("UPDATE tree_nodes SET hash = :h WHERE level = 4 AND idx = 0", h=bytes(32))
    message = _refusal(stopped, 10)
    assert "[tree-node] (height 9)" in message and "(4, 0)" in message


def test_start_refuses_a_forged_header_signature(stopped: Stopped) -> None:
    other = stopped.sql("SELECT signature FROM blocks WHERE height = 3")[0][0]
    stopped.sql("UPDATE blocks SET signature = :s WHERE height = 19", s=other)
    message = _refusal(stopped, 3)
    assert "[header-signature] (height 19) signature does not verify" in message


def test_a_changed_leaf_hash_is_named(stopped: Stopped) -> None:
    stopped.sql("UPDATE entries SET leaf_hash = :h WHERE log_index = 39", h=bytes(32))
    message = _refusal(stopped, 1)
    assert "[stored-leaf-hash] (height 19, log index 39" in message


# --- the scrub, and what is served ---------------------------------------------------


def test_the_scrub_finds_damage_beyond_the_start_window_and_stops_serving_it(
    stopped: Stopped, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    entry_id = stopped.tamper_entry(5)  # height 2, outside a start window of 5 blocks
    service = stopped.open(5)
    try:
        assert service.integrity.to_json()["status"] == "ok"
        scrub = Scrub(
            service.sequencer.read,
            service.public_key,
            service.program,
            service.integrity,
            entries_per_second=0,
            pause_s=3600,
        )
        walk = scrub.run_pass()
        assert [(f.kind, f.height, f.log_index) for f in walk.faults.items] == [
            ("entry-tampered", 2, 5)
        ]
        with pytest.raises(LedgerDamaged, match="block 2 of this node's ledger is damaged"):
            service.ledger.inclusion_proof(entry_id)
        with pytest.raises(LedgerDamaged):
            service.ledger.block(2)
        served = service.ledger.inclusion_proof(stopped.entry(30)[0])  # the rest still is
        verify_inclusion_document(served, service.public_key)
        with TestClient(create_app(service, authenticator)) as client:
            health = client.get("/healthz").json()
            assert health["status"] == "damaged"
            integrity = health["integrity"]
            assert integrity["damaged_heights"] == [2]
            assert integrity["scrub"]["passes_completed"] == 1
            assert integrity["scrub"]["blocks_checked"] == 20
            assert integrity["faults_found_total"] == 1
            assert integrity["faults"][0]["entry_id"] == entry_id
            auth = {"Authorization": f"Bearer {api_keys['auditor']}"}
            refused = client.get(f"/v1/ledger/entries/{entry_id}/proof", headers=auth)
            assert refused.status_code == 503
            assert "damaged" in refused.json()["message"]
            assert client.get("/healthz").json()["integrity"]["answers_refused_total"] == 3
        server, port = serve_grpc(service, authenticator, "127.0.0.1", 0)
        try:
            with (
                NodeClient(f"127.0.0.1:{port}", api_keys["auditor"]) as grpc_client,
                pytest.raises(TransportError) as caught,
            ):
                grpc_client.inclusion_proof(entry_id)
            assert caught.value.code == grpc.StatusCode.DATA_LOSS
            assert "damaged" in str(caught.value)
        finally:
            server.stop(None).wait(10)
    finally:
        service.close()


def test_the_scrub_keeps_to_its_rate(stopped: Stopped) -> None:
    service = stopped.open(0)
    try:
        scrub = Scrub(
            service.sequencer.read,
            service.public_key,
            service.program,
            service.integrity,
            entries_per_second=100,
            pause_s=3600,
        )
        began = time.monotonic()
        walk = scrub.run_pass()
        assert walk.entries == 40 and not walk.faults.items
        assert time.monotonic() - began >= 0.38  # 40 entries at 100 a second
    finally:
        service.close()


@pytest.mark.parametrize(
    "tampering",
    [
        "UPDATE entries SET leaf_hash = :zero WHERE log_index = 12",
        "UPDATE blocks SET signature = (SELECT signature FROM blocks WHERE height = 0)"
        " WHERE height = 11",
        "entry",
    ],
    ids=["leaf-hash", "header-signature", "entry-body"],
)
def test_a_served_proof_never_fails_the_verifier(stopped: Stopped, tampering: str) -> None:
    """Every inclusion and consistency proof the node gives verifies; what would not is
    refused with LedgerDamaged (and at least one is). (A changed tree node below 256
    leaves is in the stored frontier, which the sealer refuses at start:
    ``test_the_sealer_never_signs_on_a_damaged_frontier``.)"""
    if tampering == "entry":
        stopped.tamper_entry(12)
    else:
        stopped.sql(tampering, zero=bytes(32))
    service = stopped.open(0)  # no start check: the node serves what it has
    try:
        refused = _every_proof_verifies_or_is_refused(stopped, service)
        assert refused > 0
        assert service.integrity.to_json()["answers_refused_total"] == refused
    finally:
        service.close()


def test_a_tree_node_changed_while_serving_gives_no_bad_proof(stopped: Stopped) -> None:
    service = stopped.open(0)
    try:
        stopped.sql("UPDATE tree_nodes SET hash = :h WHERE level = 4 AND idx = 0", h=bytes(32))
        refused = _every_proof_verifies_or_is_refused(stopped, service)
        assert service.integrity.to_json()["answers_refused_total"] == refused
    finally:
        service.close()


def _every_proof_verifies_or_is_refused(stopped: Stopped, service: NodeService) -> int:
    """Ask for every entry's inclusion proof and a spread of consistency proofs; each one
    served MUST verify. How many were refused."""
    ids = [row[0] for row in stopped.sql("SELECT entry_id FROM entries ORDER BY log_index")]
    refused = 0
    for entry_id in ids:
        try:
            doc = service.ledger.inclusion_proof(str(entry_id))
        except LedgerDamaged:
            refused += 1
            continue
        verify_inclusion_document(doc, service.public_key)
    for first in range(0, 20, 3):
        for second in range(first, 20, 4):
            try:
                doc = service.ledger.consistency_proof(first, second)
            except LedgerDamaged:
                refused += 1
                continue
            verify_consistency_document(doc, service.public_key)
    return refused


def test_a_header_page_with_a_forged_header_is_not_served(stopped: Stopped) -> None:
    other = stopped.sql("SELECT signature FROM blocks WHERE height = 0")[0][0]
    stopped.sql("UPDATE blocks SET signature = :s WHERE height = 4", s=other)
    service = stopped.open(0)
    try:
        assert len(service.ledger.headers(5, 10)) == 10
        with pytest.raises(LedgerDamaged, match="header at height 4"):
            service.ledger.headers(0, 10)
        assert service.ledger.latest_header() is not None
    finally:
        service.close()


# --- check and audit -----------------------------------------------------------------


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="coalition")
    add_audit_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


ONLY_THE_AUDIT_SEES = {"replay", "supply", "consistency", "trusted-missing", "trusted-mismatch"}
ONLY_THE_NODE_SEES = {"tree-node"}


def _shared(faults: list[Fault], leave_out: set[str]) -> set[Fault]:
    return {fault for fault in faults if fault.kind not in leave_out}


def test_check_and_audit_give_the_same_findings(
    stopped: Stopped, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry_id = stopped.tamper_entry(9)
    other = stopped.sql("SELECT signature FROM blocks WHERE height = 0")[0][0]
    stopped.sql("UPDATE blocks SET signature = :s WHERE height = 13", s=other)
    stopped.sql("DELETE FROM entries WHERE log_index = 33")
    stopped.sql("UPDATE tree_nodes SET hash = :h WHERE level = 4 AND idx = 0", h=bytes(32))

    checked = check_database(stopped.url, key=stopped.key.public_key)
    with DatabaseSource(stopped.url) as source:
        audited = audit_chain(source, stopped.key.public_key, workers=0)
    shared = _shared(checked.ledger_faults.items, ONLY_THE_NODE_SEES)
    assert shared == _shared(audited.faults.items, ONLY_THE_AUDIT_SEES)
    assert {(f.kind, f.height) for f in shared} >= {
        ("entry-tampered", 4),
        ("header-signature", 13),
        ("entry-missing", 16),
    }
    assert any(f.kind == "tree-node" and f.height == 7 for f in checked.ledger_faults.items)
    # what only the database holds: the lot the backdated entry opened, the deleted one's
    kinds = [(f.kind, f.entry_id) for f in checked.differences.items]
    assert ("lot", entry_id) in kinds
    assert "entry-missing" not in {kind for kind, _ in kinds}  # named once, with its block

    pem = tmp_path / "pub.pem"
    pem.write_bytes(stopped.key.public_key.to_pem())
    capsys.readouterr()
    argv = ["check", "--database", stopped.url, "--public-key", str(pem), "--audit"]
    assert _run_cli(argv) == 1
    printed = capsys.readouterr().out
    assert "Database check" in printed and "Audit of program testair" in printed
    line = f"[entry-tampered] (height 4, log index 9, entry {entry_id})"
    assert printed.count(line) == 2  # once in each report, in the same words


def test_check_audit_needs_a_key(stopped: Stopped, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["check", "--database", stopped.url, "--audit"]) == 2
    assert "--audit with --database needs --public-key" in capsys.readouterr().err


def test_a_sound_database_checks_and_audits_ok(stopped: Stopped, tmp_path: Path) -> None:
    pem = tmp_path / "pub.pem"
    pem.write_bytes(stopped.key.public_key.to_pem())
    assert _run_cli(["check", "--database", stopped.url, "--public-key", str(pem), "--audit"]) == 0
    report = check_database(stopped.url, key=stopped.key.public_key)
    assert report.ok and report.ledger_checked and report.blocks == 20


def test_the_sealer_never_signs_on_a_damaged_frontier(stopped: Stopped) -> None:
    """With the start check off, the sealer still refuses the frontier it would build the
    next block on: (4, 1) is part of the frontier at log size 40."""
    stopped.sql("UPDATE tree_nodes SET hash = :h WHERE level = 4 AND idx = 1", h=bytes(32))
    with pytest.raises(LedgerDamaged, match="do not give the log root signed at height 19"):
        stopped.open(0).close()
    assert stopped.sql("SELECT max(height) FROM blocks") == [(19,)]
