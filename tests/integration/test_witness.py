"""Witnessing for real: three nodes on real databases follow each other's headers over
mutual-TLS gRPC, cosign them in the C2SP format until a quorum witnessed each, and catch a
partner that signs two headers at one height or rebuilds its chain after being witnessed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from coalition.api.grpc.server import serve_grpc
from coalition.api.grpc.witness import add_witness_servicer
from coalition.api.http.app import create_app
from coalition.api.http.witness import witness_router
from coalition.errors import FailedPrecondition, InvalidArgument, VerificationError
from coalition.ledger.blocks import SignedHeader, sign_header
from coalition.ledger.canonical import JsonValue, canonical_json
from coalition.ledger.keys import SigningKey
from coalition.ledger.note import (
    SIG_COSIGNATURE_V1,
    checkpoint_of,
    cosign,
    note_verifier,
    origin_of,
    verify_note,
    witness_name,
)
from coalition.ledger.proofs import consistency_document
from coalition.node.auth import Authenticator
from coalition.node.features.witness import FORK, Fault, Witness
from coalition.node.manifest import Manifest
from coalition.node.partners import InMemoryNetwork, PartnerClient
from coalition.node.service import NodeService
from coalition.runtime.wiring import member_app, serve_member_api
from coalition.store import witness as witness_store
from coalition.v1 import witness_pb2, witness_pb2_grpc

from support.coalition import PartnerNode, RunningCoalition, coalition_nodes, write_manifest
from support.nodes import temporary_node
from support.private_postgres import binaries_missing as pg_binaries_missing
from support.private_postgres import private_postgres

PROGRAMS = ("skyair", "staybright", "beanhouse")
DEADLINE_S = 30.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def add_blocks(service: NodeService, count: int, tag: str) -> int:
    """``count`` new sealed blocks (two enrollments each); the newest height."""
    for n in range(count):
        for m in range(2):
            service.points.enroll(f"{tag}-{n}-{m}", idempotency_key=f"{tag}-{n}-{m}")
        service.ledger.flush()
    last = service.ledger.latest_header()
    assert last is not None
    return last.header.height


@pytest.fixture
def coalition(tmp_path: Path, database_url: str) -> Iterator[RunningCoalition]:
    """Three witnessing nodes; skyair on ``database_url`` (SQLite or PostgreSQL)."""
    urls = {p: f"sqlite:///{tmp_path / p}.db" for p in PROGRAMS} | {"skyair": database_url}
    with coalition_nodes(tmp_path, urls, witness=True, witness_quorum=2) as running:
        yield running


def witnessed(node: PartnerNode, height: int) -> bool:
    try:
        return node.witness.status(height).witnessed
    except Exception:
        return False


def witness_all(coalition: RunningCoalition, blocks: int = 3) -> dict[str, int]:
    """Seal ``blocks`` on every node and wait until a quorum witnessed each; the heights."""
    heights = {p: add_blocks(n.service, blocks, p) for p, n in coalition.nodes.items()}
    for program, node in coalition.nodes.items():
        for height in range(heights[program] + 1):
            wait_for(lambda n=node, h=height: witnessed(n, h), f"{program} at {height} witnessed")
    return heights


def verifiers(coalition: RunningCoalition, program: str) -> list[object]:
    """The C2SP note verifiers a client of ``program``'s log would configure."""
    found = [note_verifier(origin_of(program), coalition[program].key.public_key)]
    for other in PROGRAMS:
        if other != program:
            key = coalition[other].key.public_key
            found.append(note_verifier(witness_name(other), key, SIG_COSIGNATURE_V1))
    return found


def test_three_nodes_witness_each_other_to_quorum(
    coalition: RunningCoalition, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    heights = witness_all(coalition)
    for program, node in coalition.nodes.items():
        others = sorted(p for p in PROGRAMS if p != program)
        for height in range(heights[program] + 1):
            status = node.witness.status(height)
            assert status.witnessed and status.quorum == 2
            assert sorted(c.witness for c in status.cosigners) == others
            # The C2SP note verifies with vkeys alone: the log's signature and each witness.
            opened = verify_note(status.note, verifiers(coalition, program))  # type: ignore[arg-type]
            assert opened.text == status.checkpoint
            assert len(opened.verified) == 3
        followers = {f.program: f for f in node.witness.followers()}
        assert set(followers) == set(others)
        for other in others:
            assert followers[other].verified_height == heights[other]
            assert not followers[other].halted
        assert node.witness.equivocations() == []

    skyair = coalition.nodes["skyair"]
    auditor = {"Authorization": f"Bearer {api_keys['auditor']}"}
    app = member_app(skyair.node, authenticator)
    with TestClient(app) as http:
        reply = http.get(f"/v1/blocks/{heights['skyair']}/witnesses", headers=auditor)
        assert reply.status_code == 200
        body = reply.json()
        assert body["witnessed"] and len(body["cosigners"]) == 2
        assert body["checkpoint"] == checkpoint_of(skyair.service.ledger.latest_header())  # type: ignore[arg-type]
        assert http.get("/v1/blocks/99/witnesses", headers=auditor).status_code == 404
        # The blocks view's one request per page: the same statuses as one call a block.
        one_by_one = [
            http.get(f"/v1/blocks/{h}/witnesses", headers=auditor).json()
            for h in range(1, heights["skyair"] + 1)
        ]
        page = http.get("/v1/blocks/witnesses?start=1&limit=1000", headers=auditor)
        assert page.status_code == 200 and page.json() == one_by_one
        assert http.get("/v1/blocks/witnesses?start=99", headers=auditor).json() == []
        assert http.get("/v1/blocks/witnesses?limit=0", headers=auditor).status_code == 422
        member = {"Authorization": f"Bearer {api_keys['member']}"}
        assert http.get("/v1/blocks/0/witnesses", headers=member).status_code == 403
        assert http.get("/v1/blocks/0/witnesses").status_code == 401
        assert http.get("/v1/equivocations", headers=auditor).json() == []
        listed = http.get("/v1/witness/followers", headers=auditor).json()
        assert {f["program"] for f in listed} == {"staybright", "beanhouse"}

    servers = serve_member_api(skyair.node, authenticator, "127.0.0.1:0", "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{servers.grpc_port}") as channel:
            stub = witness_pb2_grpc.WitnessStub(channel)
            metadata = (("authorization", f"Bearer {api_keys['auditor']}"),)
            got = stub.GetWitnesses(witness_pb2.GetWitnessesRequest(height=1), metadata=metadata)
            assert got.witnessed and len(got.cosigners) == 2
            listed_grpc = stub.ListEquivocations(
                witness_pb2.ListEquivocationsRequest(), metadata=metadata
            )
            assert list(listed_grpc.equivocations) == []
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetWitnesses(witness_pb2.GetWitnessesRequest(height=99), metadata=metadata)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        servers.stop(0)


def test_a_restarted_witness_resumes_from_its_last_verified_header(
    coalition: RunningCoalition,
) -> None:
    heights = witness_all(coalition, blocks=2)
    staybright, skyair = coalition.nodes["staybright"], coalition.nodes["skyair"]
    staybright.witness.stop()
    newest = add_blocks(skyair.service, 2, "later")
    wait_for(
        lambda: len(skyair.witness.status(newest).cosigners) >= 1,
        "beanhouse cosigns skyair's new blocks",
    )
    assert {c.witness for c in skyair.witness.status(newest).cosigners} == {"beanhouse"}
    # The node restarted on the same database: its witness resumes after the stored height.
    again = coalition.restart("staybright").witness
    wait_for(
        lambda: witnessed(skyair, newest) and len(skyair.witness.status(newest).cosigners) == 2,
        "skyair's new blocks cosigned by the restarted staybright",
    )
    follower = {f.program: f for f in again.followers()}["skyair"]
    assert follower.verified_height == newest > heights["skyair"]
    assert again.equivocations() == []


def test_tampered_or_misattributed_cosignatures_are_refused(coalition: RunningCoalition) -> None:
    heights = witness_all(coalition, blocks=1)
    skyair = coalition.nodes["skyair"]
    staybright, beanhouse = coalition.nodes["staybright"], coalition.nodes["beanhouse"]
    assert staybright.client is not None and beanhouse.client is not None
    signed = skyair.service.ledger.latest_header()
    assert signed is not None
    height = heights["skyair"]
    checkpoint = checkpoint_of(signed)
    before = skyair.witness.status(height).cosigners
    good = cosign(checkpoint, staybright.key, witness_name("staybright"), 1_800_000_000)
    prefix, encoded = good.rsplit(" ", 1)
    flipped = encoded[:-6] + ("A" if encoded[-6] != "A" else "B") + encoded[-5:]
    body = {"program": "skyair", "height": height, "header_hash": signed.header.hash()}
    with pytest.raises(InvalidArgument):  # VerificationError at skyair: INVALID_ARGUMENT
        staybright.client.call("skyair", "cosign", {**body, "cosignature": f"{prefix} {flipped}"})
    with pytest.raises(InvalidArgument):  # staybright's cosignature sent by beanhouse
        beanhouse.client.call("skyair", "cosign", {**body, "cosignature": good})
    with pytest.raises(FailedPrecondition):  # for another header
        staybright.client.call(
            "skyair", "cosign", {**body, "cosignature": good, "header_hash": "0" * 64}
        )
    future = cosign(checkpoint, staybright.key, witness_name("staybright"), int(time.time()) + 3600)
    with pytest.raises(InvalidArgument, match="future"):
        staybright.client.call("skyair", "cosign", {**body, "cosignature": future})
    with pytest.raises(InvalidArgument):  # for another program
        staybright.client.call("skyair", "cosign", {**body, "program": "beanhouse"})
    after = skyair.witness.status(height).cosigners
    assert after == before
    assert skyair.witness.equivocations() == []


def test_two_signed_headers_at_one_height_are_caught_and_reported(
    coalition: RunningCoalition, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    witness_all(coalition, blocks=2)
    skyair, staybright = coalition.nodes["skyair"], coalition.nodes["staybright"]
    beanhouse = coalition.nodes["beanhouse"]
    assert beanhouse.client is not None
    real = skyair.service.ledger.headers(1, 1)[0]
    # skyair's key signs a second, different header at height 1.
    forged = sign_header(replace(real.header, sealed_at="2030-01-01T00:00:00.000000Z"), skyair.key)
    kind, reply = beanhouse.client.call("staybright", "header-gossip", {"header": forged.to_json()})
    assert (kind, reply) == ("header-gossip-reply", {"status": "equivocation"})
    found = staybright.witness.equivocations()
    assert len(found) == 1
    evidence = found[0]
    assert (evidence.program, evidence.height, evidence.kind) == ("skyair", 1, "equivocation")
    assert {SignedHeader.from_json(evidence.first), SignedHeader.from_json(evidence.second)} == {
        real,
        forged,
    }
    for doc in (evidence.first, evidence.second):
        SignedHeader.from_json(doc).verify(skyair.key.public_key)
    # Forwarded to skyair itself, it is evidence against skyair's own key (both signed).
    kind, reply = beanhouse.client.call("skyair", "header-gossip", {"header": forged.to_json()})
    assert reply == {"status": "equivocation"}
    assert [(e.program, e.height) for e in skyair.witness.equivocations()] == [("skyair", 1)]
    # staybright no longer trusts skyair: new blocks get beanhouse's cosignature only.
    wait_for(
        lambda: {f.program: f for f in staybright.witness.followers()}["skyair"].halted,
        "staybright halts its skyair follower",
    )
    newest = add_blocks(skyair.service, 1, "after")
    wait_for(lambda: len(skyair.witness.status(newest).cosigners) == 1, "beanhouse cosigns")
    time.sleep(0.3)
    assert [c.witness for c in skyair.witness.status(newest).cosigners] == ["beanhouse"]
    assert not skyair.witness.status(newest).witnessed

    auditor = {"Authorization": f"Bearer {api_keys['auditor']}"}
    app = member_app(staybright.node, authenticator)
    with TestClient(app) as http:
        listed = http.get("/v1/equivocations", headers=auditor).json()
        assert [(e["program"], e["height"], e["kind"]) for e in listed] == [
            ("skyair", 1, "equivocation")
        ]
        assert listed[0]["second"] == forged.to_json() or listed[0]["first"] == forged.to_json()
        assert http.get("/v1/equivocations?program=beanhouse", headers=auditor).json() == []


def test_a_chain_rebuilt_after_being_witnessed_is_caught(
    coalition: RunningCoalition, tmp_path: Path
) -> None:
    heights = witness_all(coalition, blocks=2)
    old = coalition.nodes["beanhouse"]
    witnessed_height = heights["beanhouse"]
    old_headers = old.service.ledger.headers(0, 100)
    port = old.port
    # Same key, same address, a fresh database with other entries and a longer chain.
    rebuilt_url = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    fresh = coalition.restart("beanhouse", database_url=rebuilt_url, start_features=False)
    assert fresh.port == port
    add_blocks(fresh.service, witnessed_height + 3, "rewritten")
    fresh.coalition.start_features()
    for program in ("skyair", "staybright"):
        node = coalition.nodes[program]
        wait_for(lambda n=node: bool(n.witness.equivocations("beanhouse")), f"{program} catches it")
        evidence = node.witness.equivocations("beanhouse")[0]
        assert evidence.kind == "equivocation" and evidence.height == witnessed_height
        docs = {canonical(evidence.first), canonical(evidence.second)}
        assert canonical(old_headers[witnessed_height].to_json()) in docs
        rebuilt = fresh.service.ledger.headers(witnessed_height, 1)[0]
        assert canonical(rebuilt.to_json()) in docs
        follower = {f.program: f for f in node.witness.followers()}["beanhouse"]
        assert follower.halted and follower.verified_height == witnessed_height


def canonical(doc: JsonValue) -> str:
    assert isinstance(doc, dict)
    return canonical_json(doc).decode()


# --- forks, with an in-memory ledger source ----------------------------------------------


@dataclass
class ScriptedSource:
    """A partner's ledger reads served from a list: what a lying partner would send."""

    chain: list[SignedHeader]
    proof: Callable[[int, int], JsonValue]
    entries: Callable[[int], list[bytes]] | None = None
    """The blocks' entries (``partner_entries``; None: it serves none)."""

    def watch(self, after_height: int) -> Iterator[SignedHeader]:
        yield from (s for s in self.chain if s.header.height > after_height)

    def headers(self, start: int, limit: int) -> list[SignedHeader]:
        return [s for s in self.chain if start <= s.header.height < start + limit]

    def consistency(self, first_height: int, second_height: int) -> JsonValue:
        return self.proof(first_height, second_height)

    def block(self, height: int) -> list[bytes]:
        assert self.entries is not None, "this source serves no entries"
        return self.entries(height)

    def close(self) -> None:
        return None


def partner_entries(partner: NodeService) -> Callable[[int], list[bytes]]:
    """What the partner's GetBlock serves: its block's entries, canonical bytes."""
    return lambda height: [canonical_json(e) for e in partner.ledger.block(height)[1]]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeService, NodeService, Manifest]]:
    """skyair (the partner) and staybright (the witness), no network."""
    keys = {p: SigningKey.generate() for p in ("skyair", "staybright")}
    manifest = write_manifest(tmp_path, keys)
    with (
        temporary_node(f"sqlite:///{tmp_path}/a.db", program="skyair", key=keys["skyair"]) as a,
        temporary_node(
            f"sqlite:///{tmp_path}/b.db", program="staybright", key=keys["staybright"]
        ) as b,
    ):
        yield a, b, manifest


def _witness(service: NodeService, manifest: Manifest, source: ScriptedSource) -> Witness:
    network = InMemoryNetwork()  # nobody listens: cosign deliveries fail and are retried
    key = service.signing_key
    client = PartnerClient(
        service.program, manifest, key, transport=network.transport(service.program)
    )
    return Witness(service, manifest, client, key=key, sources=lambda _: source)


def test_forks_are_recorded_and_stop_the_follower(
    pair: tuple[NodeService, NodeService, Manifest],
) -> None:
    partner, us, manifest = pair
    add_blocks(partner, 2, "real")
    h0, h1 = partner.ledger.headers(0, 2)
    key = partner.signing_key

    def honest(first: int, second: int) -> JsonValue:
        return partner.ledger.consistency_proof(first, second)

    # Bad link: a header 1 signed by the partner whose prev_hash is not header 0's hash.
    bad_link = sign_header(replace(h1.header, prev_hash="1" * 64), key)

    def proof_to(target: SignedHeader) -> Callable[[int, int], JsonValue]:
        def make(first: int, second: int) -> JsonValue:
            doc = partner.ledger.consistency_proof(first, second)
            assert isinstance(doc, dict)
            path = [bytes.fromhex(h) for h in doc["path"]]  # type: ignore[union-attr]
            return consistency_document(partner.ledger.headers(first, 1)[0], target, path)

        return make

    witness = _witness(
        us, manifest, ScriptedSource([h0, bad_link], proof_to(bad_link), partner_entries(partner))
    )
    assert witness.accept("skyair", h0, ScriptedSource([h0], honest, partner_entries(partner)))
    with pytest.raises(Fault, match="prev_hash"):
        witness.accept(
            "skyair",
            bad_link,
            ScriptedSource([h0, bad_link], proof_to(bad_link), partner_entries(partner)),
        )
    found = witness.equivocations()
    assert [(e.kind, e.height) for e in found] == [(FORK, 1)]
    assert SignedHeader.from_json(found[0].first) == h0
    assert SignedHeader.from_json(found[0].second) == bad_link
    # Halted: even the honest header 1 is no longer accepted or cosigned.
    with pytest.raises(Fault):
        witness.accept("skyair", h1, ScriptedSource([h0, h1], honest, partner_entries(partner)))
    assert witness.last_verified("skyair") == h0
    assert {f.program: f.halted for f in witness.followers()} == {"skyair": True}


def test_a_failing_consistency_proof_is_a_fork(
    pair: tuple[NodeService, NodeService, Manifest],
) -> None:
    partner, us, manifest = pair
    add_blocks(partner, 2, "real")
    h0, h1 = partner.ledger.headers(0, 2)
    key = partner.signing_key
    # Header 1 links to header 0, but its log is not an extension of header 0's log.
    rewritten = sign_header(replace(h1.header, log_root="2" * 64), key)

    def proof(first: int, second: int) -> JsonValue:
        doc = partner.ledger.consistency_proof(first, second)
        assert isinstance(doc, dict)
        path = [bytes.fromhex(h) for h in doc["path"]]  # type: ignore[union-attr]
        return consistency_document(h0, rewritten, path)

    source = ScriptedSource([h0, rewritten], proof, partner_entries(partner))
    witness = _witness(us, manifest, source)
    assert witness.accept("skyair", h0, source)
    with pytest.raises(Fault, match="consistency proof"):
        witness.accept("skyair", rewritten, source)
    assert [(e.kind, e.height) for e in witness.equivocations()] == [(FORK, 1)]


def test_headers_that_prove_nothing_are_refused_without_evidence(
    pair: tuple[NodeService, NodeService, Manifest],
) -> None:
    partner, us, manifest = pair
    add_blocks(partner, 1, "real")
    (h0,) = partner.ledger.headers(0, 1)
    source = ScriptedSource([h0], partner.ledger.consistency_proof, partner_entries(partner))
    witness = _witness(us, manifest, source)
    unsigned = SignedHeader(h0.header, SigningKey.generate().sign_object(h0.header.to_json()))
    with pytest.raises(VerificationError):
        witness.accept("skyair", unsigned, source)
    with pytest.raises(VerificationError):
        witness.accept("staybright", h0, source)  # skyair's header on staybright's stream
    assert witness.equivocations() == []
    assert witness.last_verified("skyair") is None
    assert witness.accept("skyair", h0, source)
    assert not witness.accept("skyair", h0, source)  # already verified: nothing new


def test_a_forwarded_header_is_compared_with_the_one_verified_later(
    pair: tuple[NodeService, NodeService, Manifest],
) -> None:
    partner, us, manifest = pair
    add_blocks(partner, 2, "real")
    h0, h1 = partner.ledger.headers(0, 2)
    other = sign_header(
        replace(h1.header, sealed_at="2031-01-01T00:00:00.000000Z"), partner.signing_key
    )
    source = ScriptedSource([h0, h1], partner.ledger.consistency_proof, partner_entries(partner))
    witness = _witness(us, manifest, source)
    assert witness.on_gossip("skyair", {"header": h0.to_json()}) == (
        "header-gossip-reply",
        {"status": "unknown"},
    )
    assert witness.on_gossip("skyair", {"header": other.to_json()})[1] == {"status": "unknown"}
    assert witness.accept("skyair", h0, source)
    with pytest.raises(Fault, match="forwarded"):
        witness.accept("skyair", h1, source)
    found = witness.equivocations()
    assert [(e.kind, e.height) for e in found] == [("equivocation", 1)]
    assert {SignedHeader.from_json(found[0].first), SignedHeader.from_json(found[0].second)} == {
        h1,
        other,
    }
    with pytest.raises(InvalidArgument):
        witness.on_gossip("skyair", {"header": h0.to_json(), "extra": 1})


# --- the equivocations list, a page at a time ---------------------------------------------


@pytest.fixture
def evidence_node(
    tmp_path: Path, database_url: str
) -> Iterator[tuple[NodeService, Witness, list[int]]]:
    """staybright on ``database_url`` holding seven pieces of evidence against skyair and
    beanhouse (skyair's own headers, re-signed with a bad link); their ids, oldest first."""
    keys = {p: SigningKey.generate() for p in PROGRAMS}
    manifest = write_manifest(tmp_path, keys)
    with (
        temporary_node(f"sqlite:///{tmp_path}/a.db", program="skyair", key=keys["skyair"]) as a,
        temporary_node(database_url, program="staybright", key=keys["staybright"]) as us,
    ):
        add_blocks(a, 7, "e")
        witness = _witness(us, manifest, ScriptedSource([], lambda first, second: None))

        def record(tx: Any) -> None:
            for n, signed in enumerate(a.ledger.headers(0, 7)):
                program = "skyair" if n % 3 else "beanhouse"
                forged = replace(signed.header, program=program, prev_hash=f"{n:x}" * 64)
                lying = sign_header(forged, keys["skyair"])
                witness_store.save_evidence(tx.conn, FORK, f"bad link {n}", lying, lying, n)

        us.sequencer.run(record)
        ids = [e.id for e in witness.equivocations()]
        assert len(ids) == 7
        yield us, witness, ids


def test_equivocation_pages_have_no_gap_or_duplicate(
    evidence_node: tuple[NodeService, Witness, list[int]],
    authenticator: Authenticator,
    api_keys: dict[str, str],
) -> None:
    us, witness, ids = evidence_node
    skyair = [e.id for e in witness.equivocations("skyair")]
    assert len(skyair) == 4 and set(skyair) < set(ids)
    for program, expected in ((None, ids), ("skyair", skyair)):
        walked, after = [], None
        while True:
            page = witness.equivocations(program, 3, after)
            walked += [e.id for e in page]
            if len(page) < 3:
                break
            after = page[-1].id
        assert walked == expected
    with pytest.raises(InvalidArgument, match="limit"):
        witness.equivocations(None, 1001)

    op = {"Authorization": f"Bearer {api_keys['auditor']}"}
    app = create_app(us, authenticator, [witness_router(witness, authenticator)])
    with TestClient(app) as http:
        walked_rest: list[int] = []
        url = "/v1/equivocations?program=skyair&limit=2"
        while url:
            reply = http.get(url, headers=op)
            assert reply.status_code == 200, reply.text
            walked_rest += [x["id"] for x in reply.json()]
            link = reply.headers.get("link")
            url = link[1 : link.index(">")] if link else ""
        assert walked_rest == skyair

    def add(server: grpc.Server) -> None:
        add_witness_servicer(server, witness, authenticator)

    server, port = serve_grpc(us, authenticator, "127.0.0.1", 0, extra=[add])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = witness_pb2_grpc.WitnessStub(channel)
            meta = (("authorization", f"Bearer {api_keys['auditor']}"),)
            walked_grpc: list[int] = []
            token = ""
            while True:
                request = witness_pb2.ListEquivocationsRequest(page_size=3, page_token=token)
                reply = stub.ListEquivocations(request, metadata=meta)
                walked_grpc += [e.id for e in reply.equivocations]
                token = reply.next_page_token
                if not token:
                    break
            assert walked_grpc == ids
            bad = witness_pb2.ListEquivocationsRequest(page_token="-1")
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListEquivocations(bad, metadata=meta)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(None).wait(10)


def test_a_followers_unexpected_failure_shows_ledger_readers_no_internal_detail(
    coalition: RunningCoalition, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, class 9: the followers' ``last_error`` (``GET /v1/witness/followers``,
    read by auditors) gave an unexpected exception's text, such as a database's address."""
    staybright = coalition["staybright"]
    secret = "connection to server at 10.1.2.3, port 5432 failed for user coalition"

    def failing(*_: Any, **__: Any) -> None:
        raise RuntimeError(secret)

    monkeypatch.setattr(staybright.witness, "accept", failing)
    add_blocks(coalition["skyair"].service, 1, "boom")

    def reported() -> str | None:
        return {f.program: f for f in staybright.witness.followers()}["skyair"].last_error

    wait_for(lambda: "RuntimeError" in str(reported()), "the follower to report its failure")
    assert reported() == "internal error (RuntimeError); see the node log"


# --- key rotation --------------------------------------------------------------------------


def test_the_witness_follows_a_key_rotation_from_the_chain_itself(
    pair: tuple[NodeService, NodeService, Manifest],
) -> None:
    partner, us, manifest = pair
    add_blocks(partner, 2, "before")
    new = SigningKey.generate()
    partner.rotate_ledger_key(new)
    partner.ledger.flush()
    last = add_blocks(partner, 2, "after")
    chain = partner.ledger.headers(0, last + 1)
    source = ScriptedSource(chain, partner.ledger.consistency_proof, partner_entries(partner))
    witness = _witness(us, manifest, source)
    for signed in chain:
        assert witness.accept("skyair", signed, source)
    assert witness.schedule("skyair").key == new.public_key
    assert chain[-1].header.first_index > witness.schedule("skyair").last_index
    # After a restart (a new Witness on the same database) the rotation is remembered.
    again = _witness(us, manifest, source)
    assert again.schedule("skyair").epoch == 1

    # A next header signed by the retired key (stolen, say) proves nothing: refused,
    # no evidence, nothing cosigned.
    partner.points.enroll("late", idempotency_key="late")
    following = partner.ledger.flush()
    assert following is not None
    forged = sign_header(following.header, partner.signing_key)
    with pytest.raises(VerificationError, match="not signed by its key in force"):
        again.accept("skyair", forged, source)
    assert again.equivocations() == []
    assert again.accept("skyair", following, source)


def test_a_rotation_the_block_does_not_commit_to_is_refused_by_the_witness(
    pair: tuple[NodeService, NodeService, Manifest],
) -> None:
    partner, us, manifest = pair
    add_blocks(partner, 1, "before")
    partner.rotate_ledger_key(SigningKey.generate())
    head = partner.ledger.flush()
    assert head is not None
    chain = partner.ledger.headers(0, head.header.height + 1)

    def tampered(height: int) -> list[bytes]:
        bodies = partner_entries(partner)(height)
        return [b.replace(b'"epoch":1', b'"epoch":2') for b in bodies]

    source = ScriptedSource(chain, partner.ledger.consistency_proof, tampered)
    witness = _witness(us, manifest, source)
    for signed in chain[:-1]:  # the rotation is in the last block
        assert witness.accept("skyair", signed, source)
    with pytest.raises(VerificationError, match="does not commit to"):
        witness.accept("skyair", chain[-1], source)
    assert witness.schedule("skyair").epoch == 0
    assert witness.last_verified("skyair") == chain[-2]


def test_our_checkpoint_note_is_signed_by_the_key_in_force(
    pair: tuple[NodeService, NodeService, Manifest],
) -> None:
    partner, _, manifest = pair
    add_blocks(partner, 1, "before")
    new = SigningKey.generate()
    partner.rotate_ledger_key(new)
    partner.ledger.flush()
    last = add_blocks(partner, 1, "after")
    ours = _witness(partner, manifest, ScriptedSource([], lambda first, second: None))
    origin = "coalition/skyair"
    old_note = ours.status(0).note
    new_note = ours.status(last).note
    verify_note(old_note, [note_verifier(origin, partner.public_key)])
    verify_note(new_note, [note_verifier(origin, new.public_key)])
    with pytest.raises(VerificationError):
        verify_note(new_note, [note_verifier(origin, partner.public_key)])


def test_a_witness_keeps_following_through_an_outage_of_its_own_database(tmp_path: Path) -> None:
    """Regression (found by scripts/hammer.py --postgres): the follower read its evidence
    table outside its retry, so a database outage killed the follower thread and the node
    never witnessed that partner again until it restarted (every later header short of
    the quorum). Here staybright's own PostgreSQL crashes while skyair keeps sealing; once
    it is back, staybright's witness cosigns skyair's newer headers without a restart."""
    missing = pg_binaries_missing()
    if missing is not None:
        pytest.skip(missing)
    with private_postgres() as postgres:
        urls = {p: f"sqlite:///{tmp_path / p}.db" for p in PROGRAMS}
        urls["staybright"] = postgres.create_database("staybright")
        with coalition_nodes(tmp_path, urls, witness=True, witness_quorum=2) as running:
            witness_all(running, blocks=1)
            skyair = running.nodes["skyair"]
            postgres.crash()
            try:
                add_blocks(skyair.service, 2, "outage")  # staybright fails to store them
                time.sleep(3)  # the follower retries while its lease is still valid
            finally:
                postgres.start()
            newest = add_blocks(skyair.service, 2, "after")
            wait_for(
                lambda: (
                    "staybright" in {c.witness for c in skyair.witness.status(newest).cosigners}
                ),
                "staybright to cosign skyair's header sealed after its database came back",
                timeout=60,
            )
            assert witnessed(skyair, newest)
