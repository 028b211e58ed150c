"""The auditor against real nodes on SQLite and PostgreSQL: a clean chain passes with the
right numbers; each kind of tampering with the database is caught and named."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from coalition.api.grpc.server import serve_grpc
from coalition.audit import (
    AuditReport,
    DatabaseSource,
    GrpcSource,
    audit_chain,
    check_database,
)
from coalition.cli.audit import add_commands as add_audit_commands
from coalition.ledger.blocks import BlockHeader, SignedHeader, sign_header
from coalition.ledger.keys import SigningKey
from coalition.node.auth import Authenticator
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.ops.tomlfiles import write_toml
from coalition.store.ledger import signed_header_from_row

from support.nodes import Clock, temporary_node

MEMBERS = ("alice", "bob", "carol")


class Node:
    """A started node with small blocks, its signing key, clock and database URL."""

    def __init__(self, service: NodeService, key: SigningKey, clock: Clock, url: str) -> None:
        self.service = service
        self.key = key
        self.clock = clock
        self.url = url

    def sql(self, statement: str, **params: object) -> list[tuple[object, ...]]:
        with self.service.sequencer.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []

    def audit(self, **kwargs: object) -> AuditReport:
        with DatabaseSource(self.url) as source:
            return audit_chain(source, self.key.public_key, **kwargs)  # type: ignore[arg-type]

    def header(self, height: int) -> SignedHeader:
        """The stored row, as it is (tampered or not)."""
        rows = self.sql("SELECT header, signature FROM blocks WHERE height = :h", h=height)
        return signed_header_from_row(str(rows[0][0]), str(rows[0][1]))

    def height_of(self, log_index: int) -> int:
        """From the stored rows (the node itself refuses to serve a header it cannot
        verify, and these tests tamper with headers)."""
        for (header,) in self.sql("SELECT header FROM blocks ORDER BY height"):
            h = BlockHeader.from_json(json.loads(str(header)))
            if h.first_index <= log_index < h.log_size:
                return h.height
        raise AssertionError(f"log index {log_index} is in no block")


def populate(node: Node) -> dict[str, int]:
    """Every kind of entry, with time moving so purchases clear and points expire.

    Everything is sealed before the clock moves, so the chain's shape (blocks of five,
    cut where the clock moves) and every ``sealed_at`` are the same on every run.
    Returns the points each member should hold at the end (worked out by hand).
    """
    svc, clock = node.service, node.clock
    for member in MEMBERS:
        svc.points.enroll(member, idempotency_key=f"enroll-{member}")
    svc.points.earn_reward("alice", "signup", "alice", idempotency_key="r-alice")  # alice 500
    bob_signup = svc.points.earn_reward("bob", "signup", "bob", idempotency_key="r-bob")  # bob 500
    svc.points.earn_purchase("alice", "order-1", 12_345, idempotency_key="p1")  # alice +123 pending
    svc.points.earn_purchase("carol", "order-2", 50_000, idempotency_key="p2")  # carol +500 pending
    svc.ledger.flush()
    clock.advance(days=31)
    svc.points.redeem("alice", 200, "gift-1", idempotency_key="x1")  # alice 423
    svc.points.transfer(
        "alice", "bob", 100, "for dinner", idempotency_key="t1"
    )  # alice 323, bob 600
    svc.points.adjust("carol", 300, "ops-1", "goodwill", idempotency_key="a1")  # carol 800
    svc.points.adjust("bob", -50, "ops-1", "correction", idempotency_key="a2")  # bob 550
    svc.points.reverse_purchase("carol", "order-2", idempotency_key="rv1")  # carol 300
    svc.points.revoke("bob", str(bob_signup.entry["id"]), "ops-2", "fraud", idempotency_key="rk1")
    # bob: 550 - 500 = 50 (the 50 left is the transferred lot, which kept alice's expiry)
    svc.ledger.flush()
    clock.advance(days=370)
    expired = svc.points.run_expiry()  # everything earned on day 0 or 31 has expired now
    assert expired.entries == 3
    svc.points.earn_reward("carol", "review", "carol-1", idempotency_key="r-carol")  # carol 50
    svc.ledger.flush()
    return {"alice": 0, "bob": 0, "carol": 50}


@pytest.fixture
def built(database_url: str) -> Iterator[tuple[Node, dict[str, int]]]:
    clock = Clock()
    key = SigningKey.generate()
    sealer = SealerConfig(max_entries=5, max_delay_ms=3_600_000)  # cut by count or flush only
    with temporary_node(database_url, sealer=sealer, clock=clock, key=key) as service:
        node = Node(service, key, clock, database_url)
        yield node, populate(node)


def entry_at(node: Node, log_index: int) -> tuple[str, str]:
    rows = node.sql("SELECT entry_id, body FROM entries WHERE log_index = :i", i=log_index)
    return str(rows[0][0]), str(rows[0][1])


def index_of(node: Node, kind: str, nth: int = 0) -> int:
    rows = node.sql("SELECT log_index FROM entries WHERE kind = :k ORDER BY log_index", k=kind)
    return int(str(rows[nth][0]))


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="coalition")
    add_audit_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


# --- a clean node --------------------------------------------------------------------


def test_clean_chain_audits_ok(built: tuple[Node, dict[str, int]]) -> None:
    node, holdings = built
    report = node.audit()
    assert report.ok, report.render()
    latest = node.service.ledger.latest_header()
    assert latest is not None
    assert report.entries == latest.header.log_size == 17
    assert report.blocks == latest.header.height + 1 >= 4  # blocks of at most 5 entries
    assert report.log_verified_height == latest.header.height
    assert report.log_root == latest.header.log_root
    assert report.accounts == len(MEMBERS)
    assert report.supply == sum(holdings.values()) == 50
    for member, points in holdings.items():
        assert node.service.points.balance(member).held == points
    assert report.points_by_kind == {
        "earn": 500 + 500 + 123 + 500 + 50,
        "redeem": 200,
        "transfer": 100,
        "adjust": 300 - 50,
        "reverse": 500,
        "revoke": 500,
        "expire": 323 + 50 + 300,  # alice, bob, carol: what was left on day 401
    }
    # supply = earned + adjustments - redeemed - clawed back - expired
    assert report.supply == 1673 + 250 - 200 - 1000 - 673
    assert report.consistency == f"proof from height 0 to {latest.header.height} verified"
    rendered = report.render()
    assert "OK" in rendered and "supply        50 points" in rendered
    doc = report.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["ok"] is True and doc["supply"] == 50 and doc["faults"] == []

    checked = check_database(node.url)
    assert checked.ok, checked.render()
    assert (checked.entries, checked.accounts, checked.supply) == (17, 3, 50)
    assert checked.lots == 7  # 5 earns, 1 transferred part, 1 positive adjustment


def test_a_trusted_header_pins_history(
    built: tuple[Node, dict[str, int]],
) -> None:
    node, _ = built
    pinned = node.header(2)
    report = node.audit(trusted=pinned)
    assert report.ok, report.render()
    assert report.trusted_height == 2
    assert report.consistency.startswith("proof from height 2 to ")

    forged = sign_header(
        replace(pinned.header, sealed_at=pinned.header.sealed_at[:-2] + "9Z"), node.key
    )
    report = node.audit(trusted=forged)
    assert [(f.kind, f.height) for f in report.faults.items] == [("trusted-mismatch", 2)]

    beyond = sign_header(replace(pinned.header, height=999), node.key)
    report = node.audit(trusted=beyond)
    assert ("trusted-missing", 999) in [(f.kind, f.height) for f in report.faults.items]


def test_cli_audit_and_check_exit_codes(built: tuple[Node, dict[str, int]], tmp_path: Path) -> None:
    node, _ = built
    pem = tmp_path / "ledger.pub.pem"
    pem.write_bytes(node.key.public_key.to_pem())
    out = tmp_path / "audit.json"
    saved = tmp_path / "last-header.json"
    argv = ["audit", "--database", node.url, "--public-key", str(pem), "--json", str(out)]
    assert run_cli([*argv, "--save-header", str(saved)]) == 0
    assert json.loads(out.read_text())["ok"] is True
    assert run_cli([*argv, "--trusted", str(saved)]) == 0
    assert run_cli(["check", "--database", node.url, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["supply"] == 50
    assert run_cli(["audit", "--database", node.url]) == 2  # no public key
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ledger.pem").write_bytes(node.key.to_pem())
    config = write_toml(
        tmp_path / "node.toml",
        {
            "program": {"id": "testair"},
            "node": {"database": node.url, "signing_key": "keys/ledger.pem"},
        },
    )
    # The auditor never opens the private key: without public_key.pem beside it the
    # audit stops (exit 2, naming the file); the check needs no key at all.
    assert run_cli(["audit", "--config", str(config)]) == 2
    assert run_cli(["check", "--config", str(config)]) == 0
    (tmp_path / "keys" / "public_key.pem").write_bytes(node.key.public_key.to_pem())
    (tmp_path / "keys" / "ledger.pem").unlink()
    assert run_cli(["audit", "--config", str(config)]) == 0
    assert run_cli(["check", "--database", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    other = tmp_path / "other.pem"
    other.write_bytes(SigningKey.generate().public_key.to_pem())
    assert run_cli(["audit", "--database", node.url, "--public-key", str(other)]) == 1


def test_check_replays_unsealed_entries(database_url: str) -> None:
    with temporary_node(database_url, start=False) as service:
        for member in MEMBERS:
            service.points.enroll(member, idempotency_key=f"enroll-{member}")
        service.points.adjust("alice", 70, "ops-1", "welcome", idempotency_key="a1")
        assert service.ledger.latest_header() is None
        checked = check_database(database_url)
        assert checked.ok, checked.render()
        assert (checked.entries, checked.accounts, checked.lots, checked.supply) == (4, 3, 1, 70)
        with DatabaseSource(database_url) as source:
            report = audit_chain(source, service.public_key)
        assert report.ok and report.blocks == 0 and report.last_height is None


# --- tampering -----------------------------------------------------------------------


def test_one_byte_of_an_entry_changed_is_named(
    built: tuple[Node, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node, _ = built
    index = index_of(node, "earn", 2)  # alice's purchase, not in the first block
    entry_id, body = entry_at(node, index)
    match = re.search(r'"amount":(\d)', body)
    assert match is not None
    digit = "1" if match.group(1) != "1" else "2"
    tampered = body[: match.start(1)] + digit + body[match.end(1) :]
    assert len(tampered) == len(body) and tampered != body
    node.sql("UPDATE entries SET body = :b WHERE log_index = :i", b=tampered, i=index)

    report = node.audit()
    assert not report.ok
    height = node.height_of(index)
    assert height > 0
    named = [f for f in report.faults.items if f.kind == "entry-tampered"]
    assert [(f.entry_id, f.height, f.log_index) for f in named] == [(entry_id, height, index)]
    # the stored hashes still give the signed leaves, so the log is verified to the end
    assert report.log_verified_height == report.last_height
    assert {f.kind for f in report.faults.items} == {"entry-tampered"}

    pem = tmp_path / "pub.pem"
    pem.write_bytes(node.key.public_key.to_pem())
    assert run_cli(["audit", "--database", node.url, "--public-key", str(pem)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and entry_id in printed and f"height {height}" in printed


def test_a_deleted_entry_row_is_named(built: tuple[Node, dict[str, int]]) -> None:
    node, _ = built
    index = index_of(node, "redeem")
    node.sql("DELETE FROM entries WHERE log_index = :i", i=index)

    report = node.audit()
    assert not report.ok
    missing = [f for f in report.faults.items if f.kind == "entry-missing"]
    assert [(f.log_index, f.height) for f in missing] == [(index, node.height_of(index))]
    assert report.entries == 16
    # without the leaf, no later log root can be recomputed
    assert report.log_verified_height is not None
    assert report.log_verified_height < node.height_of(index)

    checked = check_database(node.url)
    assert ("entry-missing", index) in [(f.kind, f.log_index) for f in checked.differences.items]


def test_a_forged_signature_and_a_changed_header_field_are_named(
    built: tuple[Node, dict[str, int]],
) -> None:
    node, _ = built
    other = node.header(1).signature
    node.sql("UPDATE blocks SET signature = :s WHERE height = 2", s=other)
    header3 = node.sql("SELECT header FROM blocks WHERE height = 3")[0][0]
    assert isinstance(header3, str)
    sealed = re.search(r'"sealed_at":"([^"]+)"', header3)
    assert sealed is not None
    later = sealed.group(1)[:-2] + ("8" if sealed.group(1)[-2] != "8" else "9") + "Z"
    # still in order with its neighbours: only the signature can tell
    assert node.header(2).header.sealed_at <= later < node.header(4).header.sealed_at
    node.sql(
        "UPDATE blocks SET header = :h WHERE height = 3",
        h=header3.replace(sealed.group(1), later),
    )

    report = node.audit()
    assert not report.ok
    assert [(f.kind, f.height) for f in report.faults.items] == [
        ("header-signature", 2),
        ("header-signature", 3),
    ]
    assert report.entries == 17 and report.supply == 50  # the replay still ran to the end


def test_a_changed_stored_leaf_hash_is_named(built: tuple[Node, dict[str, int]]) -> None:
    node, _ = built
    index = index_of(node, "adjust")
    entry_id, _ = entry_at(node, index)
    node.sql("UPDATE entries SET leaf_hash = :h WHERE log_index = :i", h=bytes(32), i=index)
    report = node.audit()
    named = [(f.kind, f.entry_id, f.height) for f in report.faults.items]
    assert ("stored-leaf-hash", entry_id, node.height_of(index)) in named
    assert report.log_verified_height == report.last_height  # bodies are intact


def test_a_changed_lot_is_named_by_check(built: tuple[Node, dict[str, int]]) -> None:
    node, _ = built
    rows = node.sql("SELECT id FROM lots WHERE remaining > 0")
    lot_id = str(rows[0][0])
    node.sql("UPDATE lots SET remaining = remaining - 1 WHERE id = :i", i=lot_id)

    checked = check_database(node.url)
    assert not checked.ok
    assert [(f.kind, f.entry_id) for f in checked.differences.items] == [("lot", lot_id)]
    assert (
        "remaining is 49 in the database, 50 in the replay" in checked.differences.items[0].message
    )
    assert node.audit().ok  # the chain itself is intact: only the state drifted


# --- over gRPC -----------------------------------------------------------------------


def test_audit_over_grpc(
    built: tuple[Node, dict[str, int]], authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    node, _ = built
    server, port = serve_grpc(node.service, authenticator, "127.0.0.1", 0)
    try:
        with GrpcSource(f"127.0.0.1:{port}", api_keys["auditor"]) as source:
            assert source.public_key() == node.key.public_key
            report = audit_chain(source, node.key.public_key)
            assert report.ok, report.render()
            assert (report.entries, report.supply) == (17, 50)
            assert report.consistency.startswith("proof from height 0 ")

            index = index_of(node, "transfer")
            _, body = entry_at(node, index)
            node.sql(
                "UPDATE entries SET body = :b WHERE log_index = :i",
                b=body.replace('"amount":100', '"amount":900'),
                i=index,
            )
            report = audit_chain(source, node.key.public_key)
            assert not report.ok
            # the node no longer serves a block its entries do not prove (node.integrity)
            height = node.height_of(index)
            refused = [f for f in report.faults.items if (f.kind, f.height) == ("source", height)]
            assert refused and "fails this node's own verification" in refused[0].message
    finally:
        server.stop(None).wait(10)
