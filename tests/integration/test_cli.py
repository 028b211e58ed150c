"""The ``coalition`` command line: keygen, offline verify and the CSV bulk import.

``import-csv`` runs against a real gRPC server (``serve_grpc`` on 127.0.0.1, free port)
over a real NodeService on SQLite and PostgreSQL; each test checks the node's state
afterwards, not only what the command printed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coalition.api.grpc.server import serve_grpc
from coalition.audit import DatabaseSource, audit_chain
from coalition.cli import main
from coalition.errors import InvalidArgument
from coalition.ledger.keys import SigningKey
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.node.config import load_api_keys, load_config
from coalition.node.service import NodeService
from coalition.ops.keygen import read_api_secrets
from coalition.runtime.wiring import open_node

from support.nodes import temporary_node

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_KEY = "cli-test-operator-key"
RULES = load_config(ROOT / "nodes" / "skyair" / "node.toml").rules
"""SkyAir's own rules: partners earn 1/2 a point per euro, upgrades 3/2 (no promotion)."""


@pytest.fixture
def brand(tmp_path: Path) -> Path:
    folder = tmp_path / "skyair"
    folder.mkdir()
    shutil.copy(ROOT / "nodes" / "skyair" / "node.toml", folder / "node.toml")
    return folder / "node.toml"


def test_keygen_writes_matching_keys_and_refuses_to_overwrite(
    brand: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--config", str(brand), "--member", "M0001"]) == 0
    config = load_config(brand)
    digests = {k.name: k for k in load_api_keys(config.api_keys_path)}
    secrets = read_api_secrets(config.api_keys_path.with_name("api-keys.secret.toml"))
    assert {s.role for s in secrets} == {Role.OPERATOR, Role.AUDITOR, Role.MEMBER}
    for secret in secrets:
        assert digests[secret.name].digest == key_digest(secret.secret)
        assert digests[secret.name].role is secret.role
    assert digests["member-M0001"].member_id == "M0001"
    digest_text = config.api_keys_path.read_text()
    assert all(s.secret not in digest_text for s in secrets)
    assert (config.signing_key_path.stat().st_mode & 0o777) == 0o600
    key = SigningKey.from_pem(config.signing_key_path.read_bytes())
    public = (config.signing_key_path.parent / "public_key.pem").read_bytes()
    assert key.public_key.to_pem() == public
    before = config.signing_key_path.read_bytes()
    capsys.readouterr()

    assert main(["keygen", "--config", str(brand)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: keys already exist") and "--force" in err
    assert config.signing_key_path.read_bytes() == before
    assert main(["keygen", "--config", str(brand), "--member", "M0002"]) == 1
    assert "use 'coalition keys issue'" in capsys.readouterr().err

    assert main(["keygen", "--config", str(brand), "--force"]) == 0
    assert config.signing_key_path.read_bytes() != before


def test_keygen_encrypts_the_signing_key_with_a_password(
    brand: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKY_PW", "correct horse battery staple")
    assert main(["keygen", "--config", str(brand), "--password-env", "SKY_PW"]) == 0
    pem = load_config(brand).signing_key_path.read_bytes()
    assert b"ENCRYPTED" in pem
    with pytest.raises(InvalidArgument, match=r"[Pp]assword"):
        SigningKey.from_pem(pem)
    SigningKey.from_pem(pem, b"correct horse battery staple")


@pytest.fixture
def service(database_url: str) -> Iterator[NodeService]:
    """A node on SQLite and on PostgreSQL (the ``database_url`` fixture)."""
    with temporary_node(database_url, program="skyair", rules=RULES) as s:
        yield s


def _verify(path: Path, key: Path) -> int:
    return main(["verify", str(path), "--public-key", str(key)])


def test_verify_accepts_good_proofs_and_rejects_tampered_ones(
    service: NodeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service.points.enroll("alice", idempotency_key="e1")
    earn = service.points.earn_purchase("alice", "PNR-1", 45_000, "flights", idempotency_key="k1")
    first = service.ledger.flush()
    service.points.enroll("bob", idempotency_key="e2")
    last = service.ledger.flush()
    assert first is not None and last is not None
    key = tmp_path / "public_key.pem"
    key.write_bytes(service.public_key.to_pem())
    proof = service.ledger.inclusion_proof(str(earn.entry["id"]))
    good = tmp_path / "proof.json"
    good.write_text(json.dumps(proof))
    consistency = tmp_path / "consistency.json"
    consistency.write_text(
        json.dumps(service.ledger.consistency_proof(first.header.height, last.header.height))
    )

    assert _verify(good, key) == 0
    assert _verify(consistency, key) == 0
    out = capsys.readouterr().out
    assert f"entry {earn.entry['id']} (earn) is leaf 1" in out
    assert "extends the log" in out

    tampered = json.loads(good.read_text())
    tampered["entry"]["amount"] += 1
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    assert _verify(bad, key) == 1
    assert "FAILED" in capsys.readouterr().err

    forged_root = json.loads(good.read_text())
    forged_root["header"]["log_root"] = "0" * 64
    bad.write_text(json.dumps(forged_root))
    assert _verify(bad, key) == 1

    other_key = tmp_path / "other.pem"
    other_key.write_bytes(SigningKey.generate().public_key.to_pem())
    assert _verify(good, other_key) == 1
    assert _verify(consistency, other_key) == 1

    bad.write_text(json.dumps({"type": "something-else"}))
    assert _verify(bad, key) == 1
    assert "not a proof document" in capsys.readouterr().err


@pytest.fixture
def grpc_target(service: NodeService) -> Iterator[str]:
    auth = Authenticator([ApiKey("ops", key_digest(OPERATOR_KEY), Role.OPERATOR)])
    server, port = serve_grpc(service, auth, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait(10)


def _import(path: Path, target: str, *extra: str) -> int:
    return main(["import-csv", str(path), "--grpc", target, "--api-key", OPERATOR_KEY, *extra])


def _state(service: NodeService, members: list[str]) -> tuple[int, int]:
    latest = service.ledger.flush()
    assert latest is not None
    return latest.header.log_size, sum(service.points.balance(m).held for m in members)


@pytest.mark.slow
def test_import_csv_of_20000_rows_then_a_reimport_is_all_replayed(
    service: NodeService, grpc_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members = [f"M{n:04d}" for n in range(1, 201)]
    for m in members:
        service.points.enroll(m, idempotency_key=f"enroll:{m}")
    csv_file = tmp_path / "purchases.csv"
    script = ROOT / "scripts" / "make_purchases_csv.py"
    args = ["20000", "--members", "200", "--out", str(csv_file)]
    subprocess.run([sys.executable, script, *args], check=True)
    size_before, held_before = _state(service, members)
    assert held_before == 0

    assert _import(csv_file, grpc_target, "--chunk-rows", "7000") == 0
    assert capsys.readouterr().out.startswith("accepted 20000, replayed 0, rejected 0")
    size_after, held_after = _state(service, members)
    assert size_after == size_before + 20_000
    assert held_after > 0
    history = [e.entry for e in service.points.history("M0001", 1000)]
    earned = [e["reason"] for e in history if e["kind"] == "earn"]
    assert earned and all(str(r["reference"]).startswith("CSV-") for r in earned)  # type: ignore[index,call-overload]

    assert _import(csv_file, grpc_target) == 0
    assert capsys.readouterr().out.startswith("accepted 0, replayed 20000, rejected 0")
    assert _state(service, members) == (size_after, held_after)


def test_import_csv_reports_bad_rows_by_line_and_accepts_the_others(
    service: NodeService, grpc_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service.points.enroll("alice", idempotency_key="e1")
    service.points.enroll("bob", idempotency_key="e2")
    csv_file = tmp_path / "mixed.csv"
    csv_file.write_text(
        "member_id,reference,spend_minor,category,idempotency_key\n"
        "alice,R-1,10000,upgrades,k1\n"  # line 2: 100 EUR x 3/2 = 150 points
        "bob,R-2,twelve,partners,k2\n"  # line 3: not an integer
        "carol,R-3,5000,,k3\n"  # line 4: unknown member
        "bob,R-4,5000,cruises,k4\n"  # line 5: unknown category
        "bob,R-5,7000\n"  # line 6: missing columns
        "bob,R-1,9000,,k6\n"  # line 7: reference already earned
        "bob,R-7,30000,partners,k7\n"  # line 8: 300 EUR x 1/2 = 150 points
    )
    assert _import(csv_file, grpc_target, "--chunk-rows", "2") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "accepted 2, replayed 0, rejected 5"
    assert [line.split(" (")[0].strip() for line in out[1:]] == [
        f"line {n}" for n in (3, 4, 5, 6, 7)
    ]
    assert "not an integer" in out[1]
    assert "unknown member carol" in out[2]
    assert "unknown category 'cruises'" in out[3]
    assert "columns" in out[4]
    assert "already earned" in out[5]
    assert service.points.balance("alice").pending == 150
    assert service.points.balance("bob").pending == 150


def test_import_csv_refuses_a_file_without_the_columns(
    service: NodeService, grpc_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "wrong.csv"
    csv_file.write_text("member,amount\nalice,100\n")
    assert _import(csv_file, grpc_target) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "spend_minor" in err


def test_client_commands_need_a_node_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["balance", "alice", "--api-key", "x"]) == 1
    assert "--grpc" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["earn"])
    assert usage.value.code == 2


def test_ledger_rotate_key_writes_the_key_file_and_the_rotation(
    brand: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKY_PW", "rotate me")
    assert main(["keygen", "--config", str(brand), "--password-env", "SKY_PW"]) == 0
    text = brand.read_text().replace("[node]\n", '[node]\nsigning_key_password_env = "SKY_PW"\n', 1)
    brand.write_text(text)
    config = load_config(brand)
    first = SigningKey.from_pem(config.signing_key_path.read_bytes(), b"rotate me")
    capsys.readouterr()
    for epoch in (1, 2):
        assert main(["ledger", "rotate-key", "--config", str(brand)]) == 0
        out = capsys.readouterr().out
        assert f"(epoch {epoch})" in out and "keys/rotated/" in out
    files = sorted((config.signing_key_path.parent / "rotated").glob("*.pem"))
    private = [p for p in files if not p.name.endswith(".pub.pem")]
    assert len(private) == 2
    for path in private:
        assert (path.stat().st_mode & 0o777) == 0o600 and b"ENCRYPTED" in path.read_bytes()
    report = audit_chain(DatabaseSource(config.database_url), first.public_key, workers=0)
    assert report.ok, report.render()
    assert report.key_schedule is not None and report.key_schedule.epoch == 2

    # While a node holds the SQLite database, the command is refused and changes nothing.
    node = open_node(config)
    try:
        assert main(["ledger", "rotate-key", "--config", str(brand)]) == 1
        assert "error:" in capsys.readouterr().err
    finally:
        node.close()
    assert len([p for p in (config.signing_key_path.parent / "rotated").glob("*.pem")]) == 4
