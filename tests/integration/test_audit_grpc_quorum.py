"""The witness quorum of a coalition audited from live nodes over gRPC.

Three partner nodes (SQLite, mutual-TLS partner servers) run witnesses that cosign each
other's headers; each node serves its Ledger and ``coalition.v1.Witness`` on a
member-facing gRPC server. The coalition audit from those servers (``GrpcSource``,
which asks ``Witness/GetWitnesses`` for each height) finds every header witnessed.

A forged cosignature line planted in a node's ``witness_cosignatures`` table never
reaches a gRPC auditor: the node re-verifies its stored cosignatures on every read and
serves only those that verify. So over gRPC the forgery shows as one cosignature fewer
(a ``not-witnessed`` fault once the quorum is no longer met), while the node's database
(and a bundle), which carry the raw lines, name it ``cosignature-invalid``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import select, update

from coalition.audit import (
    DatabaseSource,
    GrpcSource,
    PartnersAudit,
    WitnessPolicy,
    audit_all,
)
from coalition.cli import main
from coalition.ledger.note import NoteSignature, parse_signature_line
from coalition.node.auth import Authenticator
from coalition.node.features.witness import Witness
from coalition.ops.tomlfiles import write_toml
from coalition.runtime.wiring import serve_member_api
from coalition.store.witness import witness_cosignatures
from coalition.verify.source import ChainSource
from coalition.verify.witness_quorum import cosigner_of

from support.coalition import RunningCoalition, coalition_nodes, wait_for
from support.databases import node_urls

A, B, C = "skyair", "staybright", "beanhouse"
PROGRAMS = (A, B, C)
BLOCKS = 2
"""Blocks each node seals: heights 0 and 1."""


@dataclass
class LiveCoalition:
    """The running nodes and the port of each one's member-facing gRPC server."""

    running: RunningCoalition
    ports: dict[str, int]
    api_key: str

    def target(self, program: str) -> str:
        return f"127.0.0.1:{self.ports[program]}"


def fully_cosigned(witness: Witness, heights: int) -> bool:
    """Whether both other partners' cosignatures of each of the node's headers arrived."""
    return all(len(witness.status(h).cosigners) == len(PROGRAMS) - 1 for h in range(heights))


@pytest.fixture
def live(
    tmp_path: Path, authenticator: Authenticator, api_keys: dict[str, str]
) -> Iterator[LiveCoalition]:
    """Every node seals two blocks; the witnesses cosign every header of the others and
    are stopped once every cosignature arrived (so nothing changes the tables after);
    each node then serves its member API (Ledger and Witness over plaintext gRPC) on free
    ports."""
    with (
        node_urls("sqlite:///unused", tmp_path, PROGRAMS) as urls,
        coalition_nodes(tmp_path, urls, witness=True, start_features=False) as running,
        ExitStack() as stack,
    ):
        witnesses = {p: node.witness for p, node in running.nodes.items()}
        with ExitStack() as following:
            for witness in witnesses.values():
                witness.start()
                following.callback(witness.stop)
            for program, node in running.nodes.items():
                for n in range(BLOCKS):
                    node.service.points.enroll(f"{program}-{n}", idempotency_key=f"{program}-{n}")
                    node.service.ledger.flush()
            for program, witness in witnesses.items():
                wait_for(partial(fully_cosigned, witness, BLOCKS), what=f"{program} cosigned")
        ports: dict[str, int] = {}
        for program, node in running.nodes.items():
            servers = serve_member_api(node.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
            stack.callback(servers.stop, 0)
            ports[program] = servers.grpc_port
        yield LiveCoalition(running, ports, api_keys["auditor"])


def strict_policy(live: LiveCoalition) -> WitnessPolicy:
    """The manifest's quorum; every header sealed before now must already be witnessed."""
    now = datetime.now(UTC)
    manifest = live.running.manifest
    return WitnessPolicy(
        manifest.witness_quorum, manifest.programs, now, now + timedelta(minutes=5)
    )


def audit_with(sources: dict[str, ChainSource], live: LiveCoalition) -> PartnersAudit:
    try:
        return audit_all(sources, live.running.manifest.public_key, witnessing=strict_policy(live))
    finally:
        for source in sources.values():
            source.close()


def audit_grpc(live: LiveCoalition) -> PartnersAudit:
    sources: dict[str, ChainSource] = {
        p: GrpcSource(live.target(p), live.api_key) for p in PROGRAMS
    }
    return audit_with(sources, live)


def audit_databases(live: LiveCoalition) -> PartnersAudit:
    sources: dict[str, ChainSource] = {
        p: DatabaseSource(n.url) for p, n in live.running.nodes.items()
    }
    return audit_with(sources, live)


def served_cosigners(live: LiveCoalition, program: str) -> dict[int, list[str]]:
    """Who ``GetWitnesses`` says cosigned each of ``program``'s headers, by height."""
    with GrpcSource(live.target(program), live.api_key) as source:
        lines = source.cosignatures(0, BLOCKS)
    assert lines is not None
    return {
        height: sorted(cosigner_of(line) or f"unnamed {line!r}" for line in found)
        for height, found in lines.items()
    }


def forge_stored(live: LiveCoalition, program: str, height: int, witness: str) -> None:
    """Flip the last signature byte of ``witness``'s stored cosignature of ``program``'s
    header at ``height`` in ``program``'s own database."""
    c = witness_cosignatures.c
    where = (c.program == program, c.height == height, c.witness == witness)
    with live.running[program].service.sequencer.engine.begin() as conn:
        line = conn.execute(select(c.cosignature).where(*where)).scalar_one()
        sig = parse_signature_line(line)
        forged = NoteSignature(
            sig.name, sig.key_id, sig.signature[:-1] + bytes([sig.signature[-1] ^ 1])
        ).line()
        assert forged != line and parse_signature_line(forged).name == sig.name
        conn.execute(update(witness_cosignatures).where(*where).values(cosignature=forged))


def test_every_header_is_witnessed_by_the_audit_from_grpc(live: LiveCoalition) -> None:
    for program in PROGRAMS:
        others = sorted(p for p in PROGRAMS if p != program)
        assert served_cosigners(live, program) == {h: others for h in range(BLOCKS)}
    found = audit_grpc(live)
    assert found.ok, found.render()
    assert set(found.witnesses) == set(PROGRAMS)
    for program, quorum in found.witnesses.items():
        assert quorum.offered, program
        assert (quorum.headers, quorum.witnessed) == (BLOCKS, BLOCKS), quorum.render()
        assert quorum.pending == [] and quorum.faults == []


def test_a_forged_stored_cosignature_over_grpc_and_from_the_database(
    live: LiveCoalition, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge_stored(live, B, 1, A)

    # The node serves only the cosignature that still verifies (beanhouse's).
    assert served_cosigners(live, B) == {0: sorted([A, C]), 1: [C]}
    found = audit_grpc(live)
    assert found.ok, found.render()
    assert (found.witnesses[B].headers, found.witnesses[B].witnessed) == (BLOCKS, BLOCKS)

    # The database carries the raw line: the same audit from it names the forgery.
    found = audit_databases(live)
    assert not found.ok
    [fault] = found.faults
    assert (fault.kind, fault.program, fault.height, fault.witness) == (
        "cosignature-invalid",
        B,
        1,
        A,
    )

    # The other cosignature forged too: over gRPC the header at 1 is witnessed by
    # nobody, which the CLI's audit from the live nodes names.
    forge_stored(live, B, 1, C)
    assert served_cosigners(live, B) == {0: sorted([A, C])}
    manifest = live.running.folder / "coalition.toml"
    document = tomllib.loads(manifest.read_text())
    for partner in document["partners"]:
        partner["grpc"] = live.target(partner["program"])
    write_toml(manifest, document)
    out = tmp_path / "report.json"
    argv = ["audit", "--manifest", str(manifest), "--from", "grpc", "--witness-grace", "0"]
    argv += [arg for p in PROGRAMS for arg in ("--api-key", f"{p}={live.api_key}")]
    capsys.readouterr()
    code = main([*argv, "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    report = json.loads(out.read_text())
    assert [(f["kind"], f["program"], f["height"]) for f in report["faults"]] == [
        ("not-witnessed", B, 1)
    ]
    assert "0 valid cosignature(s) (none)" in report["faults"][0]["message"]
    assert report["witnesses"][B]["witnessed"] == BLOCKS - 1
    assert all(report["witnesses"][p]["witnessed"] == BLOCKS for p in (A, C))
    assert f"Witnessing of {B} (quorum 1): FAILED (1 faults)" in printed
