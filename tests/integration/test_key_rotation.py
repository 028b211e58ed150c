"""Rotation of a node's ledger key on SQLite and PostgreSQL: the rotation entry is sealed
by the old key, every later header by the new one, and the chain audit (from the
database and from a bundle) and the proofs follow the rotation; a process that cannot
load the key in force seals nothing until it can, and then seals with it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection

from coalition.api.http.app import create_app
from coalition.audit import DatabaseSource, audit_chain
from coalition.audit.bundle import BundleSource, export_bundle
from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.canonical import parse_json
from coalition.ledger.keys import SigningKey
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.ledger.rotation import rotation_of
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.node.config import SealerConfig
from coalition.node.ledger_keys import stored_schedule
from coalition.node.service import NodeService
from coalition.store import ledger as ledger_store

from support.nodes import temporary_node

PROGRAM = "testair"


def stored_entry_id(conn: Connection, index: int) -> str:
    rows = ledger_store.entry_bodies(conn, index, index + 1)
    body = parse_json(rows[0][1])
    assert isinstance(body, dict)
    return str(body["id"])


SEALER = SealerConfig(max_entries=4, max_delay_ms=20)


def write_some(service: NodeService, tag: str, members: int = 3) -> None:
    for n in range(members):
        member = f"{tag}{n}"
        service.points.enroll(member, idempotency_key=f"enroll-{member}")
        service.points.earn_reward(member, "signup", member, idempotency_key=f"signup-{member}")


def rotated(service: NodeService) -> tuple[int, SigningKey]:
    """Rotate to a fresh key: the rotation's log index and the key."""
    new = SigningKey.generate()
    entry = service.rotate_ledger_key(new)
    with service.sequencer.read() as conn:
        schedule = stored_schedule(conn, PROGRAM, service.public_key)
    assert rotation_of(entry) is not None
    return schedule.last_index, new


def test_headers_after_the_rotation_block_are_signed_by_the_new_key(
    database_url: str, tmp_path: Path
) -> None:
    first = SigningKey.generate()
    held: dict[str, SigningKey] = {}
    with temporary_node(database_url, sealer=SEALER, key=first, rotated_keys=held.get) as service:
        write_some(service, "a")
        index, new = rotated(service)
        held[new.public_key.key_id] = new
        write_some(service, "b")
        last = service.ledger.flush()
        assert last is not None
        headers = service.ledger.headers(0, 1000)
        for signed in headers:
            h = signed.header
            key = first if h.first_index <= index else new
            signed.verify(key.public_key)  # raises if signed by the other key
        assert any(s.header.first_index > index for s in headers)

        with service.sequencer.read() as conn:
            schedule = stored_schedule(conn, PROGRAM, first.public_key)
        assert schedule.epoch == 1 and schedule.key == new.public_key
        doc = service.ledger.consistency_proof(0, last.header.height)
        verify_consistency_document(doc, schedule)
        with pytest.raises(VerificationError, match="signature"):
            verify_consistency_document(doc, first.public_key)
        rotation_block = next(
            s for s in headers if s.header.first_index <= index < s.header.log_size
        )
        rotation_block.verify(first.public_key)
        with service.sequencer.read() as conn:
            rotation_id = stored_entry_id(conn, index)
        proof = service.ledger.inclusion_proof(rotation_id)
        verify_inclusion_document(proof, schedule)

    report = audit_chain(DatabaseSource(database_url), first.public_key, workers=0)
    assert report.ok, report.render()
    assert report.last_height == last.header.height

    bundle = tmp_path / "rotated.bundle"
    export_bundle(bundle, database_url, PROGRAM, first.public_key)
    with BundleSource(bundle) as source:
        report = audit_chain(source, first.public_key, workers=0)
    assert report.ok, report.render()


def test_the_audit_refuses_a_rotated_chain_checked_with_the_new_key_only(
    database_url: str,
) -> None:
    first = SigningKey.generate()
    held: dict[str, SigningKey] = {}
    with temporary_node(database_url, sealer=SEALER, key=first, rotated_keys=held.get) as node:
        write_some(node, "a")
        _, new = rotated(node)
        held[new.public_key.key_id] = new
        write_some(node, "b")
        node.ledger.flush()
    report = audit_chain(DatabaseSource(database_url), new.public_key, workers=0)
    assert not report.ok
    assert {f.kind for f in report.faults.items} >= {"header-signature"}


def test_a_process_without_the_key_in_force_seals_nothing_until_it_has_it(
    database_url: str,
) -> None:
    first = SigningKey.generate()
    with temporary_node(database_url, sealer=SEALER, key=first) as node:
        write_some(node, "a")
        index, new = rotated(node)
        node.ledger.flush()
    # Another process of the node, without the new key's file: the rotation's own block
    # is sealed (by the old key), nothing after it.
    files: dict[str, SigningKey] = {}
    with temporary_node(
        database_url, sealer=SEALER, key=first, start=False, rotated_keys=files.get
    ) as other:
        write_some(other, "b")
        assert other.leadership.try_acquire()
        assert other.sealer.seal() is None  # holds the lease, and cannot sign
        assert other.sealer.log_size == index + 1
        assert other.sealer.pending > 0
        files[new.public_key.key_id] = new  # the file arrives
        last = other.ledger.flush()
        assert last is not None and last.header.log_size > index + 1
        last.verify(new.public_key)
    report = audit_chain(DatabaseSource(database_url), first.public_key, workers=0)
    assert report.ok, report.render()


def test_rotating_to_a_key_already_used_is_refused_and_changes_nothing(
    database_url: str,
) -> None:
    first = SigningKey.generate()
    with temporary_node(database_url, sealer=SEALER, key=first) as node:
        write_some(node, "a", members=1)
        before = node.sequencer.next_index
        with pytest.raises(InvalidArgument, match="already a ledger key"):
            node.rotate_ledger_key(first)
        assert node.sequencer.next_index == before
        _, new = rotated(node)
        with pytest.raises(InvalidArgument, match="already a ledger key"):
            node.rotate_ledger_key(new)
        with node.sequencer.read() as conn:
            schedule = stored_schedule(conn, PROGRAM, first.public_key)
        assert schedule.epoch == 1
        for _, key in schedule.epochs():
            assert key in (first.public_key, new.public_key)
    assert rotation_of({"kind": "earn"}) is None


def test_the_rest_api_serves_the_rotations_the_explorer_follows(database_url: str) -> None:
    first = SigningKey.generate()
    with temporary_node(database_url, sealer=SEALER, key=first) as node:
        write_some(node, "a", members=1)
        index, new = rotated(node)
        keys = Authenticator([ApiKey("audit", key_digest("k"), Role.AUDITOR)])
        with TestClient(create_app(node, keys)) as client:
            auth = {"Authorization": "Bearer k"}
            response = client.get("/v1/ledger/key-rotations", headers=auth)
            assert response.status_code == 200, response.text
            (served,) = response.json()
            assert served["log_index"] == index
            rotation = rotation_of(served["entry"])
            assert rotation is not None and rotation.key == new.public_key
            assert client.get("/v1/ledger/key-rotations").status_code == 401
            pem = client.get("/v1/ledger/public-key", headers=auth).text
            assert pem == first.public_key.to_pem().decode()  # the first key, as the manifest's


def test_concurrent_rotations_chain_epoch_after_epoch(database_url: str) -> None:
    first = SigningKey.generate()
    new = [SigningKey.generate() for _ in range(4)]
    held = {k.public_key.key_id: k for k in new}
    with temporary_node(database_url, sealer=SEALER, key=first, rotated_keys=held.get) as node:
        write_some(node, "a", members=1)
        with ThreadPoolExecutor(4) as pool:
            entries = list(pool.map(node.rotate_ledger_key, new))
        write_some(node, "b", members=1)
        node.ledger.flush()
        with node.sequencer.read() as conn:
            schedule = stored_schedule(conn, PROGRAM, first.public_key)
    assert schedule.epoch == 4
    assert sorted(rotation_of(e).epoch for e in entries) == [1, 2, 3, 4]  # type: ignore[union-attr]
    report = audit_chain(DatabaseSource(database_url), first.public_key, workers=0)
    assert report.ok, report.render()
