"""Bundles from a live node: ``GET /v1/ledger/bundle`` (who may read it, and that the
stream is the file ``export_bundle`` writes for the same snapshot) and ``coalition
bundle`` from a config, a database and a live node's URL."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coalition.api.http.app import create_app
from coalition.api.http.server import serve_http
from coalition.audit import audit_chain
from coalition.audit.bundle import BundleSource, export_bundle
from coalition.cli import main
from coalition.ledger.keys import SigningKey
from coalition.node.auth import Authenticator
from coalition.node.config import SealerConfig, load_config
from coalition.node.service import NodeService
from coalition.runtime.wiring import open_node

from support.nodes import Clock, temporary_node

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = "testair"


def populate(service: NodeService, members: int = 6) -> None:
    for n in range(members):
        service.points.enroll(f"m{n}", idempotency_key=f"enroll-{n}")
        service.points.earn_reward(f"m{n}", "signup", f"m{n}", idempotency_key=f"signup-{n}")
    service.ledger.flush()


@pytest.fixture
def node(database_url: str) -> Iterator[tuple[NodeService, str, SigningKey]]:
    """A node with a fixed clock (so two exports of one snapshot are equal bytes)."""
    key = SigningKey.generate()
    sealer = SealerConfig(max_entries=4, max_delay_ms=20)
    with temporary_node(database_url, sealer=sealer, clock=Clock(), key=key) as service:
        populate(service)
        yield service, database_url, key


@pytest.fixture
def server(
    node: tuple[NodeService, str, SigningKey], authenticator: Authenticator
) -> Iterator[str]:
    server, thread, port = serve_http(create_app(node[0], authenticator))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_route_streams_the_bundle_export_writes_for_the_snapshot(
    node: tuple[NodeService, str, SigningKey],
    server: str,
    api_keys: dict[str, str],
    tmp_path: Path,
) -> None:
    service, url, key = node
    written = tmp_path / "exported.bundle"
    export_bundle(written, url, PROGRAM, key.public_key, exported_at=service.now())
    with httpx.stream(
        "GET", f"{server}/v1/ledger/bundle", headers=bearer(api_keys["auditor"]), timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert "testair.bundle" in response.headers["content-disposition"]
        body = b"".join(response.iter_bytes())
    assert body == written.read_bytes()

    operator = httpx.get(
        f"{server}/v1/ledger/bundle", headers=bearer(api_keys["operator"]), timeout=10
    )
    assert operator.status_code == 200 and operator.content == body
    member = httpx.get(f"{server}/v1/ledger/bundle", headers=bearer(api_keys["member"]))
    assert member.status_code == 403, member.text
    assert httpx.get(f"{server}/v1/ledger/bundle").status_code == 401


def test_coalition_bundle_downloads_checks_and_audits(
    node: tuple[NodeService, str, SigningKey],
    server: str,
    api_keys: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, _, key = node
    for name in ("live.bundle", "live.bundle.gz"):
        out = tmp_path / name
        argv = ["bundle", "--url", server, "--api-key", api_keys["auditor"], "--out", str(out)]
        assert main(argv) == 0
        said = capsys.readouterr().out
        assert said.startswith(f"wrote {out}: program testair, ") and "12 entries" in said
        with BundleSource(out) as bundle:
            assert audit_chain(bundle, key.public_key).ok
    assert (
        gzip.decompress((tmp_path / "live.bundle.gz").read_bytes())
        == (tmp_path / "live.bundle").read_bytes()
    )

    refused = tmp_path / "refused.bundle"
    argv = ["bundle", "--url", server, "--api-key", api_keys["member"], "--out", str(refused)]
    assert main(argv) == 1
    assert "403" in capsys.readouterr().err and not refused.exists()
    gone = ["bundle", "--url", "http://127.0.0.1:9", "--out", str(refused), "--timeout", "2"]
    assert main(gone) == 2
    assert "cannot download" in capsys.readouterr().err


def test_coalition_bundle_from_a_database_url(
    node: tuple[NodeService, str, SigningKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, url, key = node
    pem = tmp_path / "public_key.pem"
    pem.write_bytes(key.public_key.to_pem())
    out = tmp_path / "db.bundle"
    argv = ["bundle", "--database", url, "--public-key", str(pem), "--program", PROGRAM]
    assert main([*argv, "--out", str(out)]) == 0
    assert "12 entries" in capsys.readouterr().out
    with BundleSource(out) as bundle:
        assert bundle.public_key() == key.public_key
        assert audit_chain(bundle, key.public_key).ok

    assert main(["bundle", "--database", url, "--out", str(out)]) == 2
    assert "--public-key and --program" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main([*argv[:1], "--database", missing, *argv[3:], "--out", str(out)]) == 2
    with pytest.raises(SystemExit) as usage:
        main(["bundle", "--out", str(out)])
    assert usage.value.code == 2


def test_coalition_bundle_from_a_node_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "skyair"
    folder.mkdir()
    config_path = folder / "node.toml"
    shutil.copy(ROOT / "nodes" / "skyair" / "node.toml", config_path)
    assert main(["keygen", "--config", str(config_path)]) == 0
    config = load_config(config_path)
    service = open_node(config)
    service.start()
    try:
        populate(service, members=3)
    finally:
        service.close()
    out = tmp_path / "skyair.bundle.gz"
    capsys.readouterr()
    assert main(["bundle", "--config", str(config_path), "--out", str(out)]) == 0
    assert "program skyair" in capsys.readouterr().out
    public = (folder / "keys" / "public_key.pem").read_bytes()
    with BundleSource(out) as bundle:
        assert bundle.public_key() is not None
        assert bundle.public_key().to_pem() == public  # type: ignore[union-attr]
        assert bundle.check_framing().entries == 6
    # The public key comes from public_key.pem (or --public-key), never from the
    # signing key: without the file the export stops, naming it, and writes nothing.
    pinned = tmp_path / "skyair.pub.pem"
    (folder / "keys" / "public_key.pem").rename(pinned)
    again = tmp_path / "again.bundle"
    assert main(["bundle", "--config", str(config_path), "--out", str(again)]) == 2
    assert "public_key.pem" in capsys.readouterr().err and not again.exists()
    argv = ["bundle", "--config", str(config_path), "--public-key", str(pinned)]
    assert main([*argv, "--out", str(again)]) == 0
    with BundleSource(again) as bundle:
        assert bundle.public_key().to_pem() == public  # type: ignore[union-attr]
