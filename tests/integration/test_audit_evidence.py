"""The coalition audit and the witnesses' evidence, for real: two partner nodes on real
databases (SQLite and PostgreSQL) over mutual TLS; staybright's witness catches skyair
signing two headers at one height (forwarded to it over the partner API), and
``coalition audit-coalition`` (from the databases and from the live nodes' gRPC) fails
naming skyair and the height. Evidence that does not verify is a fault of its holder; a
clean coalition audits sound."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from coalition.api.grpc.server import serve_grpc
from coalition.api.grpc.witness import add_witness_servicer
from coalition.audit import (
    DatabaseSource,
    EvidenceFault,
    GrpcSource,
    audit_all,
    audit_partners,
)
from coalition.cli import main
from coalition.ledger.blocks import SignedHeader, sign_header
from coalition.node.auth import Authenticator
from coalition.node.features.witness import Witness
from coalition.store import witness as witness_store

from support.coalition import RunningCoalition, coalition_nodes
from support.databases import node_urls

PROGRAMS = ("skyair", "staybright")


@pytest.fixture
def coalition(tmp_path: Path, database_url: str) -> Iterator[tuple[RunningCoalition, Witness]]:
    """skyair and staybright, two sealed blocks each; staybright's witness (its partner
    messages registered; no follower threads, so the test decides what it sees)."""
    with (
        node_urls(database_url, tmp_path, PROGRAMS) as urls,
        coalition_nodes(tmp_path, urls, witness=True, start_features=False) as running,
    ):
        witness = running["staybright"].witness
        for program, node in running.nodes.items():
            for n in range(2):
                node.service.points.enroll(f"{program}-{n}", idempotency_key=f"{program}-{n}")
                node.service.ledger.flush()
        yield running, witness


def audit_cli(running: RunningCoalition, tmp_path: Path, *extra: str) -> tuple[int, Any]:
    """``coalition audit-coalition`` on the running coalition (from the databases unless
    ``extra`` says otherwise): its exit code and JSON report."""
    out = tmp_path / "report.json"
    out.unlink(missing_ok=True)
    argv = ["audit-coalition", "--manifest", str(running.folder / "coalition.toml")]
    if not extra:
        for program, node in running.nodes.items():
            argv += ["--database", f"{program}={node.url}"]
    code = main([*argv, *extra, "--json", str(out)])
    return code, json.loads(out.read_text())


def stop_server(server: grpc.Server) -> None:
    server.stop(None).wait(10)


def equivocate(running: RunningCoalition) -> tuple[SignedHeader, SignedHeader]:
    """skyair's key signs a second header at height 1; skyair's real header and then the
    other one reach staybright's witness as partner gossip. Both signed headers."""
    skyair = running["skyair"]
    assert skyair.client is not None
    real = skyair.service.ledger.headers(1, 1)[0]
    other = sign_header(replace(real.header, sealed_at="2030-01-01T00:00:00.000000Z"), skyair.key)
    for signed, status in ((real, "unknown"), (other, "equivocation")):
        _, reply = skyair.client.call("staybright", "header-gossip", {"header": signed.to_json()})
        assert reply == {"status": status}
    return real, other


def test_a_clean_coalition_audits_sound(
    coalition: tuple[RunningCoalition, Witness],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, _ = coalition
    code, report = audit_cli(running, tmp_path)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert report["ok"] is True
    assert report["evidence"]["ok"] is True
    assert report["evidence"]["held"] == {"skyair": 0, "staybright": 0}
    assert "Equivocation and fork evidence held by the nodes: OK" in printed


def test_equivocation_evidence_held_by_a_witness_fails_the_audit(
    coalition: tuple[RunningCoalition, Witness],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    authenticator: Authenticator,
    api_keys: dict[str, str],
) -> None:
    running, witness = coalition
    real, other = equivocate(running)
    assert [(e.program, e.height, e.kind) for e in witness.equivocations()] == [
        ("skyair", 1, "equivocation")
    ]
    hashes = sorted([real.header.hash(), other.header.hash()])

    # From the databases, through the library call.
    sources = {p: DatabaseSource(n.url) for p, n in running.nodes.items()}
    try:
        reports, cross = audit_partners(sources, running.manifest.public_key)
    finally:
        for source in sources.values():
            source.close()
    assert all(r.ok for r in reports.values())
    assert not cross.ok
    (fault,) = cross.faults
    assert isinstance(fault, EvidenceFault)
    assert (fault.kind, fault.program, fault.height) == ("equivocation", "skyair", 1)
    assert fault.holders == ("staybright",) and list(fault.headers) == hashes

    # From the databases, through the CLI: readable and JSON reports, exit code 1.
    capsys.readouterr()
    code, report = audit_cli(running, tmp_path)
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "[equivocation] (skyair, height 1, held by staybright #" in printed
    assert report["ok"] is False and report["cross_chain"]["ok"] is True
    (found,) = report["evidence"]["faults"]
    assert (found["kind"], found["program"], found["height"]) == ("equivocation", "skyair", 1)
    assert found["holders"] == ["staybright"] and found["headers"] == hashes

    # From the live nodes' gRPC (staybright serves Witness, skyair runs no witness).
    with ExitStack() as stack:
        ports: dict[str, int] = {}

        def serve_witness(server: grpc.Server) -> None:
            add_witness_servicer(server, witness, authenticator)

        for program, node in running.nodes.items():
            extra = [serve_witness] if program == "staybright" else []
            server, ports[program] = serve_grpc(node.service, authenticator, extra=extra)
            stack.callback(stop_server, server)
        grpc_sources = {
            p: stack.enter_context(GrpcSource(f"127.0.0.1:{port}", api_keys["auditor"]))
            for p, port in ports.items()
        }
        found_grpc = audit_all(grpc_sources, running.manifest.public_key)
        assert not found_grpc.ok and found_grpc.cross_chain.ok
        assert found_grpc.evidence.held == {"skyair": None, "staybright": 1}
        (fault,) = found_grpc.evidence.faults
        assert (fault.kind, fault.program, fault.height) == ("equivocation", "skyair", 1)

        # The CLI with --from grpc, on a manifest naming the live gRPC addresses.
        manifest = running.folder / "coalition.toml"
        text = manifest.read_text()
        for n, program in enumerate(PROGRAMS):
            text = text.replace(
                f'grpc = "127.0.0.1:{41000 + n}"', f'grpc = "127.0.0.1:{ports[program]}"'
            )
        manifest.write_text(text)
        capsys.readouterr()
        code, report = audit_cli(
            running,
            tmp_path,
            "--from",
            "grpc",
            "--api-key",
            f"skyair={api_keys['auditor']}",
            "--api-key",
            f"staybright={api_keys['auditor']}",
        )
        printed = capsys.readouterr().out
        assert code == 1, printed
        assert "skyair        offers no evidence (no witness)" in printed
        assert [(f["kind"], f["program"], f["height"]) for f in report["evidence"]["faults"]] == [
            ("equivocation", "skyair", 1)
        ]


def test_evidence_that_does_not_verify_is_a_fault_of_its_holder(
    coalition: tuple[RunningCoalition, Witness],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, _ = coalition
    staybright, skyair = running["staybright"], running["skyair"]
    real = staybright.service.ledger.headers(1, 1)[0]
    # skyair's database claims staybright signed another header 1: the signature is a copy.
    claimed = SignedHeader(
        replace(real.header, sealed_at="2030-01-01T00:00:00.000000Z"), real.signature
    )
    with skyair.service.sequencer.engine.begin() as conn:
        assert witness_store.save_evidence(conn, "equivocation", "planted", real, claimed, 0)
    code, report = audit_cli(running, tmp_path)
    printed = capsys.readouterr().out
    assert code == 1, printed
    (fault,) = report["evidence"]["faults"]
    assert (fault["kind"], fault["program"], fault["accused"], fault["height"]) == (
        "bogus-evidence",
        "skyair",
        "staybright",
        1,
    )
    assert "not signed by staybright" in fault["message"]
    assert "[bogus-evidence] (skyair, height 1, held by skyair #" in printed


def test_a_fork_found_by_a_consistency_proof_is_proven_by_the_accused_chain(
    coalition: tuple[RunningCoalition, Witness],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, _ = coalition
    skyair, staybright = running["skyair"], running["staybright"]
    h0, h1 = skyair.service.ledger.headers(0, 2)
    # What a witness stores when skyair's header 1 links to header 0 but its log does not
    # extend header 0's: the two headers alone are compatible; skyair's chain is not.
    rewritten = sign_header(replace(h1.header, log_root="4" * 64), skyair.key)
    with staybright.service.sequencer.engine.begin() as conn:
        assert witness_store.save_evidence(conn, "fork", "consistency", h0, rewritten, 0)
    code, report = audit_cli(running, tmp_path)
    printed = capsys.readouterr().out
    assert code == 1, printed
    (fault,) = report["evidence"]["faults"]
    assert (fault["kind"], fault["program"], fault["height"]) == ("equivocation", "skyair", 1)
    assert fault["headers"] == sorted([h1.header.hash(), rewritten.header.hash()])
    assert "in its own chain" in fault["message"]
