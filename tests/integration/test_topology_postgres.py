"""The demo coalition's topology for real on PostgreSQL: three ``coalition run`` processes,
one database each (what docker-compose.yml runs), partners over mutual TLS.

Members enroll and earn in every program, the partners sign rate agreements, members
convert points between programs; once every conversion completed the nodes stop (and
seal), and each chain is audited from its own database, each database is checked
against the replay of its chain, and the three chains are reconciled with each other.
In CI (``CI=true``) an unreachable PostgreSQL fails this test (``postgres_available``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coalition.audit.db_check import check_database
from coalition.audit.sources import DatabaseSource
from coalition.demo.nodes import (
    load_brands,
    prepare_coalition,
    start_brands,
    stop_brands,
    wait_connected,
)
from coalition.demo.scenario import Scenario
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.node.manifest import Manifest
from coalition.ops.keygen import generate_coalition_keys
from coalition.ops.tls import generate_tls
from coalition.verify.chain_audit import audit_chain
from coalition.verify.cross_chain import audit_coalition

from support.databases import postgres_databases

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PROGRAMS = ("skyair", "staybright", "beanhouse")


@pytest.fixture
def databases(postgres_available: None) -> Iterator[dict[str, str]]:
    """A fresh database per node on the test server, dropped afterwards."""
    with postgres_databases(PROGRAMS) as urls:
        yield urls


def _chain(url: str) -> list[JsonObject]:
    with DatabaseSource(url) as source:
        latest = source.latest_header()
        assert latest is not None
        header = parse_json(latest.header.encode())
        assert isinstance(header, dict)
        size = int(header["log_size"])  # type: ignore[call-overload]
        entries = [parse_json(raw.body) for raw in source.block_entries(0, 0, size)]
    assert len(entries) == size
    return [e for e in entries if isinstance(e, dict)]


def test_three_nodes_on_postgresql_convert_and_audit(
    tmp_path: Path, databases: dict[str, str]
) -> None:
    manifest_path = prepare_coalition(tmp_path / "work")
    generate_coalition_keys(manifest_path)
    manifest = Manifest.load(manifest_path)
    generate_tls(manifest)
    assert manifest.programs == PROGRAMS
    (tmp_path / "logs").mkdir()
    env = {p: {"COALITION_DATABASE_URL": url} for p, url in databases.items()}
    brands = load_brands(manifest, tmp_path / "logs", env)
    members = [f"M{n:04d}" for n in range(1, 5)]
    try:
        start_brands(brands)
        scenario = Scenario({b.program: b for b in brands}, members, member_keys=False)
        scenario.onboard(20)
        wait_connected(brands)
        scenario.agree()
        scenario.convert(24, victim=None)
        counts = scenario.wait_conversions(timeout=60)
        stop_brands(brands)
    finally:
        for brand in brands:
            brand.close()
            if brand.node is not None:
                brand.node.kill()

    assert len(scenario.conversions) >= 12, scenario.refused
    # one conversion names a member the target does not know: enrolled on arrival, credited
    assert counts == {"completed": len(scenario.conversions)}
    chains = {}
    for brand in brands:
        url = databases[brand.program]
        with DatabaseSource(url) as source:
            report = audit_chain(source, brand.public_key, program=brand.program)
        assert report.ok, report.render()
        check = check_database(url)
        assert check.ok, check.render()
        chains[brand.program] = _chain(url)
        kinds = {str(e["kind"]) for e in chains[brand.program]}
        assert {"agreement", "convert-out", "convert-in", "convert-complete"} <= kinds
    assert not any(e["kind"] == "convert-refund" for e in chains["skyair"])
    assert not any(e["kind"] == "convert-reject" for e in chains["staybright"])
    cross = audit_coalition(chains, manifest.public_key, pending_before=datetime.now(UTC))
    assert cross.ok, cross.render()
    assert cross.conversions == len(scenario.conversions)
