"""The structure of ``docker-compose.yml`` against ``nodes/``: no Docker engine runs in the
tests, so this checks what a wrong edit would break. The file is YAML written in its
JSON-compatible subset (YAML 1.2 is a superset of JSON), so ``json`` reads it without a
YAML dependency.

Every brand folder has a node service built from the repository's Dockerfile, its own
PostgreSQL service and database, health checks, and the ports the manifest names;
nodes get only their own secrets; a one-shot ``scenario`` service waits for every node.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / "nodes"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = json.loads((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return tomllib.loads((NODES / "coalition.toml").read_text())


def brand_programs() -> list[str]:
    programs = []
    for config in sorted(NODES.glob("*/node.toml")):
        programs.append(tomllib.loads(config.read_text())["program"]["id"])
    return programs


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def published(services: dict[str, Any], service: dict[str, Any]) -> set[int]:
    """Container ports published for ``service`` (by the namespace it shares, if any)."""
    mode = service.get("network_mode", "")
    owner = services[mode.removeprefix("service:")] if mode.startswith("service:") else service
    found = set()
    for mapping in owner.get("ports", []):
        host, _, container = str(mapping).rpartition(":")
        assert host == container, f"{mapping}: the host port must equal the manifest's"
        found.add(int(container))
    return found


def test_the_manifest_lists_every_brand_folder(manifest: dict[str, Any]) -> None:
    assert sorted(p["program"] for p in manifest["partners"]) == sorted(brand_programs())
    assert len(brand_programs()) >= 3


@pytest.mark.parametrize("program", brand_programs())
def test_every_brand_has_a_node_a_database_health_checks_and_ports(
    compose: dict[str, Any], manifest: dict[str, Any], program: str
) -> None:
    partner = next(p for p in manifest["partners"] if p["program"] == program)
    node = compose[program]
    assert node["build"] == "."
    assert node["command"] == ["run", "--config", f"nodes/{program}/node.toml"]
    assert (NODES / program / "node.toml").is_file()
    assert node["healthcheck"]["test"][0] == "CMD"
    assert f":{port(partner['http'])}/healthz" in " ".join(node["healthcheck"]["test"])

    env = node["environment"]
    assert env["COALITION_MANIFEST"] == "nodes/coalition.toml"
    for key, name in (
        ("COALITION_GRPC_ADDRESS", "grpc"),
        ("COALITION_PARTNER_GRPC_ADDRESS", "partner_grpc"),
        ("COALITION_HTTP_ADDRESS", "http"),
    ):
        assert port(env[key]) == port(partner[name]), key
    assert {port(partner[n]) for n in ("grpc", "partner_grpc", "http")} <= published(compose, node)

    url = urlsplit(env["COALITION_DATABASE_URL"])
    assert url.scheme == "postgresql"
    database = compose[f"{program}-db"]
    assert database["image"].startswith("postgres:")
    assert database["environment"]["POSTGRES_DB"] == url.path.lstrip("/") == program
    assert database["command"][-2:] == ["-p", str(url.port)]
    assert str(url.port) in database["healthcheck"]["test"]
    assert database["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert node["depends_on"][f"{program}-db"] == {"condition": "service_healthy"}
    assert node.get("network_mode") == database.get("network_mode")


def test_each_node_has_its_own_database(compose: dict[str, Any]) -> None:
    urls = [compose[p]["environment"]["COALITION_DATABASE_URL"] for p in brand_programs()]
    assert len({urlsplit(u).port for u in urls}) == len(urls)


@pytest.mark.parametrize("program", brand_programs())
def test_a_node_gets_only_its_own_secrets(compose: dict[str, Any], program: str) -> None:
    mounts = [v.split(":")[0] for v in compose[program]["volumes"]]
    assert all(v.endswith(":ro") for v in compose[program]["volumes"])
    for mount in mounts:
        assert not mount.endswith(("/keys", "secret.toml", "ca.key", "/tls")), mount
        if mount.endswith((".key", "ledger.pem", "account-secret")):
            assert f"/{program}" in mount, f"{program} gets another's secret {mount}"
    for needed in ("ledger.pem", "account-secret", "api-keys.toml", f"{program}.key"):
        assert any(m.endswith(needed) for m in mounts), needed
    for other in brand_programs():
        assert f"./nodes/{other}/keys/public_key.pem" in mounts


def test_keys_never_enter_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("nodes/*/keys", "nodes/tls", "nodes/*/data"):
        assert pattern in ignored


def test_the_scenario_runs_once_after_every_node_is_healthy(compose: dict[str, Any]) -> None:
    scenario = compose["scenario"]
    assert scenario["restart"] == "no"
    assert scenario["command"][0] == "scenario"
    assert scenario["depends_on"] == {p: {"condition": "service_healthy"} for p in brand_programs()}
