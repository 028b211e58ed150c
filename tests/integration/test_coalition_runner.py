"""A node's ``[coalition]`` configuration, ``coalition keygen --manifest`` and ``tls-init``,
and ``run_node`` running three coalition nodes in one process (threads, SQLite, real
mutual-TLS partner servers on free ports): the features' routes are served, partners
countersign, and every node stops cleanly with everything sealed.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from coalition.api.http.app import create_app
from coalition.cli import main
from coalition.demo.nodes import prepare_coalition
from coalition.demo.scenario import RATES, agreement_document
from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.ledger.keys import SigningKey
from coalition.node.auth import Authenticator, Role
from coalition.node.config import config_from_mapping, load_api_keys, load_config
from coalition.node.manifest import Manifest
from coalition.ops.keyfiles import read_signing_key
from coalition.ops.keygen import find_secret
from coalition.runtime.runner import run_node
from coalition.runtime.wiring import CoalitionNode, open_node

RAW: dict[str, Any] = {"program": {"id": "skyair"}}


def test_a_node_without_coalition_table_runs_alone(tmp_path: Path) -> None:
    assert config_from_mapping(RAW, tmp_path).coalition is None


def test_coalition_table_defaults_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = RAW | {"coalition": {"manifest": "../coalition.toml", "tls_key": "k.pem"}}
    settings = config_from_mapping(raw, tmp_path).coalition
    assert settings is not None
    assert settings.manifest_path == tmp_path / "../coalition.toml"
    assert settings.partner_grpc_address is None and settings.tls_cert_path is None
    assert settings.tls_key_path == tmp_path / "k.pem"
    assert settings.abort_after_s == 30.0 and settings.witness is True

    monkeypatch.setenv("COALITION_PARTNER_GRPC_ADDRESS", "0.0.0.0:50061")
    settings = config_from_mapping(raw, tmp_path).coalition
    assert settings is not None and settings.partner_grpc_address == "0.0.0.0:50061"

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COALITION_MANIFEST", "nodes/coalition.toml")
    settings = config_from_mapping(RAW, Path("/elsewhere")).coalition
    assert settings is not None
    assert settings.manifest_path == tmp_path / "nodes" / "coalition.toml"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "coalition.manifest"),
        ({"manifest": ""}, "coalition.manifest"),
        ({"manifest": "m.toml", "partner_grpc": "nowhere"}, "HOST:PORT"),
        ({"manifest": "m.toml", "abort_after_s": 0}, "abort_after_s"),
        ({"manifest": "m.toml", "abort_after_s": "30"}, "abort_after_s"),
        ({"manifest": "m.toml", "witness": "yes"}, "witness"),
        ({"manifest": "m.toml", "tls_cert": 3}, "tls_cert"),
        ({"manifest": "m.toml", "outbox": 1}, "unknown key .coalition.outbox."),
    ],
)
def test_bad_coalition_tables_are_refused(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        config_from_mapping(RAW | {"coalition": table}, tmp_path)


@pytest.fixture
def coalition(tmp_path: Path) -> Path:
    """The demo coalition copied into ``tmp_path`` with free ports, keys and TLS made with
    the CLI; the manifest's path."""
    manifest = prepare_coalition(tmp_path / "work")
    assert main(["keygen", "--manifest", str(manifest)]) == 0
    assert main(["tls-init", "--manifest", str(manifest)]) == 0
    return manifest


def test_keygen_for_a_manifest_keys_every_partner_once(
    coalition: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = Manifest.load(coalition)
    keys = {p.program: p.public_key for p in manifest.partners}
    assert len(set(keys.values())) == 3
    assert main(["keygen", "--manifest", str(coalition)]) == 1
    assert "already exist" in capsys.readouterr().err
    assert {p.program: p.public_key for p in Manifest.load(coalition).partners} == keys


def test_the_coalition_node_refuses_a_key_the_manifest_does_not_name(coalition: Path) -> None:
    config = load_config(coalition.parent / "skyair" / "node.toml")
    service = open_node(config)
    try:
        with pytest.raises(InvalidArgument, match="signing key"):
            CoalitionNode(config, service, SigningKey.generate())
        public_key = coalition.parent / "skyair" / "keys" / "public_key.pem"
        public_key.write_bytes(SigningKey.generate().public_key.to_pem())
        with pytest.raises(FailedPrecondition, match="public key"):
            CoalitionNode(config, service, read_signing_key(config))
    finally:
        service.close()


def test_a_program_missing_from_the_manifest_cannot_join(coalition: Path) -> None:
    config = load_config(coalition.parent / "skyair" / "node.toml")
    stranger = dataclasses.replace(config, program="stranger")
    service = open_node(config)
    try:
        with pytest.raises(InvalidArgument, match="different programs"):
            CoalitionNode(stranger, service, read_signing_key(config))
    finally:
        service.close()


FEATURE_OPERATIONS = [
    (
        "post",
        "/v1/members/{member_id}/conversions",
        "convert_v1_members__member_id__conversions_post",
    ),
    (
        "get",
        "/v1/members/{member_id}/conversions/quote",
        "quote_v1_members__member_id__conversions_quote_get",
    ),
    (
        "get",
        "/v1/members/{member_id}/conversions/{conversion_id}",
        "status_v1_members__member_id__conversions__conversion_id__get",
    ),
    ("post", "/v1/agreements", "propose_v1_agreements_post"),
    ("get", "/v1/agreements", "agreements_v1_agreements_get"),
    ("post", "/v1/partner-redemptions", "authorize_v1_partner_redemptions_post"),
    (
        "post",
        "/v1/partner-redemptions/{hold_id}/capture",
        "capture_v1_partner_redemptions__hold_id__capture_post",
    ),
    (
        "post",
        "/v1/partner-redemptions/{hold_id}/void",
        "void_v1_partner_redemptions__hold_id__void_post",
    ),
    ("get", "/v1/partner-redemptions/{hold_id}", "get_v1_partner_redemptions__hold_id__get"),
    ("post", "/v1/jobs/hold-expiry", "release_expired_v1_jobs_hold_expiry_post"),
    ("get", "/v1/settlement/statements", "statements_v1_settlement_statements_get"),
    ("post", "/v1/settlement/statements", "propose_v1_settlement_statements_post"),
    ("get", "/v1/settlement/netting", "netting_v1_settlement_netting_get"),
    ("get", "/v1/blocks/{height}/witnesses", "witnesses_v1_blocks__height__witnesses_get"),
    ("get", "/v1/blocks/witnesses", "witnesses_from_v1_blocks_witnesses_get"),
    ("get", "/v1/equivocations", "equivocations_v1_equivocations_get"),
    ("get", "/v1/witness/followers", "followers_v1_witness_followers_get"),
    ("get", "/v1/explorer/about", "about_v1_explorer_about_get"),
    ("get", "/v1/explorer/kinds", "entry_kinds_v1_explorer_kinds_get"),
    ("get", "/v1/explorer/flows", "flows_v1_explorer_flows_get"),
]
"""A coalition node's operations after the single node's, in document order, with the
operation ids that clients generated from the OpenAPI document call."""


def test_a_coalition_node_documents_its_feature_routes(coalition: Path) -> None:
    config = load_config(coalition.parent / "skyair" / "node.toml")
    service = open_node(config)
    try:
        node = CoalitionNode(config, service, read_signing_key(config))
        authenticator = Authenticator(load_api_keys(config.api_keys_path))
        schema = create_app(service, authenticator, node.routers(authenticator), node).openapi()
        node.stop()
    finally:
        service.close()
    operations = [
        (method, path, operation["operationId"])
        for path, ops in schema["paths"].items()
        for method, operation in ops.items()
    ]
    last_of_one_node = operations.index(
        ("post", "/v1/operator/keys/{name}/revoke", "revoke_v1_operator_keys__name__revoke_post")
    )
    assert operations[last_of_one_node + 1 :] == FEATURE_OPERATIONS
    for method, path in (
        ("post", "/v1/agreements"),
        ("get", "/v1/members/{member_id}/conversions/quote"),
    ):
        refusal = schema["paths"][path][method]["responses"]["409"]["content"]
        assert refusal["application/json"]["schema"]["$ref"].endswith("/ErrorOut")


def _post(url: str, key: str, body: dict[str, Any], retry_s: float = 20) -> Any:
    """POST, retrying while the node answers 503: a partner that started after it is
    reached once its channel reconnects."""
    deadline = time.monotonic() + retry_s
    while True:
        request = urllib.request.Request(  # noqa: S310 (a local test server)
            url, data=json.dumps(body).encode(), method="POST"
        )
        request.add_header("Authorization", f"Bearer {key}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def _get(url: str, key: str) -> Any:
    request = urllib.request.Request(url)  # noqa: S310 (a local test server)
    request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        return json.loads(reply.read())


@pytest.fixture
def running(coalition: Path) -> Iterator[Manifest]:
    """The three nodes served by ``run_node`` in threads until the test ends."""
    manifest = Manifest.load(coalition)
    stop = threading.Event()
    threads = []
    for partner in manifest.partners:
        assert partner.config is not None
        config = load_config(partner.config)
        thread = threading.Thread(target=run_node, args=(config, stop), daemon=True)
        thread.start()
        threads.append(thread)
    try:
        for partner in manifest.partners:
            _wait_http(f"http://{partner.http}/healthz")
        yield manifest
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (a local test server)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_run_node_serves_the_coalition_features(running: Manifest) -> None:
    manifest = running
    keys = {
        p.program: find_secret(load_config(p.config), Role.OPERATOR)  # type: ignore[arg-type]
        for p in manifest.partners
    }
    (a, b), (rate, value) = next(iter(RATES.items()))
    base = f"http://{manifest.partner(a).http}"
    signed = _post(
        base + "/v1/agreements", keys[a], agreement_document(a, b, rate, value, datetime.now(UTC))
    )
    assert set(signed["signatures"]) == {a, b}
    listed = _get(f"http://{manifest.partner(b).http}/v1/agreements", keys[b])
    assert [x["id"] for x in listed] == [f"{a}-{b}"]
    followers = _get(base + "/v1/witness/followers", keys[a])
    assert sorted(f["program"] for f in followers) == sorted(p.program for p in manifest.others(a))
    assert _get(base + "/v1/settlement/statements", keys[a]) == []
    openapi = _get(base + "/openapi.json", keys[a])
    for path in ("/v1/members/{member_id}/conversions", "/v1/partner-redemptions"):
        assert path in openapi["paths"]
