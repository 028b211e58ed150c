"""The partner transport for real: mutual TLS with certificates made by ``ops/tls.py``, gRPC on
127.0.0.1, signed envelopes checked by ``PartnerInbox`` with its replay guard on SQLite
and PostgreSQL.

Every refusal is checked twice: the caller gets the right CoalitionError, and the
handler never ran (``calls`` stays empty), so a refused message changed nothing.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine, func, select

from coalition.api.grpc.ledger_source import GrpcLedgerSource
from coalition.api.grpc.partner import GrpcTransport, serve_partner_grpc
from coalition.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PartnerUnavailable,
    PermissionDenied,
    VerificationError,
)
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.ledger.envelope import SignedMessage, open_message, sign_message
from coalition.ledger.keys import SigningKey, VerifyKey
from coalition.node.config import SealerConfig
from coalition.node.features.witness import LedgerSourceFailed
from coalition.node.limits import DEFAULT_LIMITS, Limits
from coalition.node.manifest import Manifest
from coalition.node.partners import (
    SEEN_WINDOW,
    InMemoryNetwork,
    PartnerClient,
    PartnerInbox,
    PartnerTransport,
)
from coalition.node.sequencer import Sequencer
from coalition.ops.tls import TlsFiles, generate_tls
from coalition.ops.tomlfiles import partner_table, write_toml
from coalition.store.db import make_engine
from coalition.store.partners import SeenMessageRow
from coalition.store.schema import upgrade_schema
from coalition.v1 import ledger_pb2, ledger_pb2_grpc, partner_pb2, partner_pb2_grpc

from support.coalition import write_manifest
from support.databases import at_current_schema
from support.nodes import Clock, temporary_node

PROGRAMS = ("skyair", "staybright", "beanhouse")


def write_coalition(folder: Path, programs: tuple[str, ...] = PROGRAMS) -> dict[str, SigningKey]:
    """A manifest in ``folder`` with a fresh ledger key per program and its TLS material."""
    keys = {p: SigningKey.generate() for p in programs}
    write_manifest(folder, keys)
    return keys


@dataclass
class Node:
    """One program's partner side: its inbox behind a real mTLS server."""

    program: str
    key: SigningKey
    inbox: PartnerInbox
    engine: Engine
    tls: TlsFiles
    server: grpc.Server
    port: int
    calls: list[tuple[str, JsonObject]] = field(default_factory=list)

    def seen(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(SeenMessageRow)).scalar_one())


def _sequencer(engine: Engine, program: str, key: SigningKey) -> Sequencer:
    """The writer an inbox records seen messages through (no entries in these tests)."""
    return Sequencer(engine, program, key, SealerConfig())


@dataclass
class Coalition:
    manifest: Manifest
    """The manifest with each partner's partner_grpc at its real bound port."""
    nodes: dict[str, Node]
    clock: Clock
    folder: Path
    closing: list[PartnerClient | GrpcTransport] = field(default_factory=list)

    def client(
        self,
        program: str,
        tls: TlsFiles | None = None,
        transport: PartnerTransport | None = None,
    ) -> PartnerClient:
        node = self.nodes[program]
        transport = transport or GrpcTransport(self.manifest, tls or node.tls)
        client = PartnerClient(program, self.manifest, node.key, transport)
        self.closing.append(client)
        return client

    def transport(self, tls: TlsFiles) -> GrpcTransport:
        transport = GrpcTransport(self.manifest, tls)
        self.closing.append(transport)
        return transport

    def send_raw(self, msg: SignedMessage, to: str, over: str) -> partner_pb2.SignedMessage:
        """Send ``msg`` to ``to`` as it is, over ``over``'s TLS certificate."""
        stub = partner_pb2_grpc.PartnerStub(self.transport(self.nodes[over].tls).channel(to))
        request = partner_pb2.SignedMessage(envelope=msg.envelope, signature=msg.signature)
        return stub.Call(request, timeout=5)

    def message(
        self,
        sender: str,
        to: str,
        *,
        key: SigningKey | None = None,
        at: datetime | None = None,
        kind: str = "echo",
    ) -> SignedMessage:
        signer = key or self.nodes[sender].key
        return sign_message(signer, kind, sender, to, {"n": 1}, at or self.clock())


@pytest.fixture
def coalition(tmp_path: Path, database_url: str) -> Iterator[Coalition]:
    """Three nodes; skyair's replay guard lives on ``database_url`` (SQLite or PostgreSQL)."""
    keys = write_coalition(tmp_path)
    manifest = Manifest.load(tmp_path / "coalition.toml")
    clock = Clock(datetime.now(UTC))
    nodes: dict[str, Node] = {}
    closing: list[PartnerClient | GrpcTransport] = []
    try:
        for program, key in keys.items():
            url = database_url if program == "skyair" else f"sqlite:///{tmp_path / program}.db"
            at_current_schema(url)
            engine = make_engine(url, sqlite_synchronous="NORMAL")
            upgrade_schema(engine)
            inbox = PartnerInbox(program, manifest, _sequencer(engine, program, key), key, clock)
            tls = TlsFiles.for_program(manifest, program)
            server, port = serve_partner_grpc(inbox, tls, "127.0.0.1", 0)
            node = Node(program, key, inbox, engine, tls, server, port)
            nodes[program] = node

            def echo(sender: str, body: JsonObject, node: Node = node) -> tuple[str, JsonObject]:
                node.calls.append((sender, body))
                return "echo-reply", {"echo": body, "sender": sender, "by": node.program}

            inbox.register("echo", echo)
        bound = manifest.with_partner_grpc({p: f"127.0.0.1:{n.port}" for p, n in nodes.items()})
        yield Coalition(bound, nodes, clock, tmp_path, closing)
    finally:
        for item in closing:
            item.close()
        for node in nodes.values():
            node.server.stop(None).wait(10)
            node.engine.dispose()


def test_round_trip_between_two_programs(coalition: Coalition) -> None:
    client = coalition.client("staybright")
    kind, body = client.call("skyair", "echo", {"n": 1, "text": "héllo"})
    assert kind == "echo-reply"
    assert body == {"echo": {"n": 1, "text": "héllo"}, "sender": "staybright", "by": "skyair"}
    assert coalition.nodes["skyair"].calls == [("staybright", {"n": 1, "text": "héllo"})]
    assert coalition.nodes["skyair"].seen() == 1

    # The raw reply verifies offline with the manifest alone (as an auditor would).
    envelope, raw = client.call_signed("skyair", "echo", {"n": 2})
    reopened = open_message(SignedMessage.from_json(raw.to_json()), coalition.manifest.public_key)
    assert reopened == envelope
    assert (reopened.sender, reopened.to, reopened.kind) == ("skyair", "staybright", "echo-reply")

    # The other direction, over the other node's server and certificate.
    back = coalition.client("skyair")
    assert back.call("staybright", "echo", {})[1]["by"] == "staybright"


def _refused(
    coalition: Coalition, msg: SignedMessage, to: str, over: str
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        coalition.send_raw(msg, to, over)
    return raised.value.code(), raised.value.details() or ""


def test_a_message_from_a_program_outside_the_manifest_is_refused(
    coalition: Coalition, caplog: pytest.LogCaptureFixture
) -> None:
    intruder = SigningKey.generate()
    msg = sign_message(intruder, "echo", "intruder", "skyair", {"n": 1}, coalition.clock())
    with caplog.at_level(logging.WARNING, logger="coalition.partners"):
        code, details = _refused(coalition, msg, "skyair", over="staybright")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "'intruder' is not in the manifest" in details
    assert coalition.nodes["skyair"].calls == []
    assert coalition.nodes["skyair"].seen() == 0
    assert any("refused echo message" in r.getMessage() for r in caplog.records)


def test_a_message_signed_with_a_key_the_manifest_does_not_hold_is_refused(
    coalition: Coalition,
) -> None:
    msg = coalition.message("staybright", "skyair", key=SigningKey.generate())
    code, details = _refused(coalition, msg, "skyair", over="staybright")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "not signed by staybright's key" in details
    assert coalition.nodes["skyair"].calls == []
    assert coalition.nodes["skyair"].seen() == 0


def test_a_bad_signature_or_an_edited_envelope_is_refused(coalition: Coalition) -> None:
    msg = coalition.message("staybright", "skyair")
    flipped = SignedMessage(msg.envelope, bytes([msg.signature[0] ^ 1]) + msg.signature[1:])
    edited = SignedMessage(msg.envelope.replace(b'"n":1', b'"n":9'), msg.signature)
    short = SignedMessage(msg.envelope, msg.signature[:63])
    for bad in (flipped, edited, short):
        code, _ = _refused(coalition, bad, "skyair", over="staybright")
        assert code == grpc.StatusCode.UNAUTHENTICATED
    not_canonical = SignedMessage(msg.envelope.replace(b",", b", ", 1), msg.signature)
    code, details = _refused(coalition, not_canonical, "skyair", over="staybright")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "canonical" in details
    assert coalition.nodes["skyair"].calls == []
    # The untouched message still goes through: nothing above consumed its id.
    coalition.send_raw(msg, "skyair", over="staybright")
    assert len(coalition.nodes["skyair"].calls) == 1


def test_a_partner_message_sent_over_another_partners_certificate_is_refused(
    coalition: Coalition,
) -> None:
    msg = coalition.message("beanhouse", "skyair")  # validly signed by beanhouse ...
    code, details = _refused(coalition, msg, "skyair", over="staybright")  # ... sent by staybright
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "signed by beanhouse but sent over staybright's TLS certificate" in details
    assert coalition.nodes["skyair"].calls == []


def test_a_client_certificate_from_another_ca_fails_the_handshake(
    coalition: Coalition, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_coalition(other, ("skyair", "staybright"))  # same names, another CA
    foreign = TlsFiles.for_program(Manifest.load(other / "coalition.toml"), "staybright")
    # Trusts the real CA (so the server's certificate verifies) but presents a foreign one.
    mixed = TlsFiles(coalition.manifest.ca_cert, foreign.cert, foreign.key)
    client = coalition.client("staybright", tls=mixed)
    with pytest.raises(PartnerUnavailable, match="skyair is unavailable"):
        client.call("skyair", "echo", {"n": 1}, timeout=3)
    # Trusting only the foreign CA, the client refuses the server in turn.
    with pytest.raises(PartnerUnavailable):
        coalition.client("staybright", tls=foreign).call("skyair", "echo", {}, timeout=3)
    assert coalition.nodes["skyair"].calls == []


def test_a_client_without_a_certificate_fails_the_handshake(coalition: Coalition) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=coalition.manifest.ca_cert.read_bytes()
    )
    target = coalition.manifest.partner("skyair").partner_grpc
    options = [("grpc.ssl_target_name_override", "skyair")]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        msg = coalition.message("staybright", "skyair")
        request = partner_pb2.SignedMessage(envelope=msg.envelope, signature=msg.signature)
        with pytest.raises(grpc.RpcError) as raised:
            partner_pb2_grpc.PartnerStub(channel).Call(request, timeout=3)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert coalition.nodes["skyair"].calls == []


def test_the_same_signed_message_is_accepted_once(coalition: Coalition) -> None:
    msg = coalition.message("staybright", "skyair")
    coalition.send_raw(msg, "skyair", over="staybright")
    code, details = _refused(coalition, msg, "skyair", over="staybright")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "replay" in details
    assert len(coalition.nodes["skyair"].calls) == 1
    assert coalition.nodes["skyair"].seen() == 1


def test_a_message_for_another_program_is_refused(coalition: Coalition) -> None:
    msg = coalition.message("staybright", "beanhouse")
    code, details = _refused(coalition, msg, "skyair", over="staybright")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "addressed to beanhouse, not to skyair" in details
    assert coalition.nodes["skyair"].calls == []
    assert coalition.nodes["beanhouse"].calls == []


def test_a_message_too_far_from_the_receivers_clock_is_refused(coalition: Coalition) -> None:
    now = coalition.clock()
    for at in (now - timedelta(seconds=301), now + timedelta(seconds=301)):
        code, details = _refused(
            coalition, coalition.message("staybright", "skyair", at=at), "skyair", "staybright"
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "more than 300 s from this node's clock" in details
    assert coalition.nodes["skyair"].calls == []
    for at in (now - timedelta(seconds=299), now + timedelta(seconds=299)):
        coalition.send_raw(coalition.message("staybright", "skyair", at=at), "skyair", "staybright")
    assert len(coalition.nodes["skyair"].calls) == 2


def test_handler_refusals_and_unknown_kinds_come_back_as_our_errors(coalition: Coalition) -> None:
    def refuse(sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        raise FailedPrecondition(f"conversion {body['id']} is closed")

    def crash(sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        raise RuntimeError("bug")

    coalition.nodes["skyair"].inbox.register("refuse", refuse)
    coalition.nodes["skyair"].inbox.register("crash", crash)
    client = coalition.client("staybright")
    with pytest.raises(FailedPrecondition, match="conversion c1 is closed"):
        client.call("skyair", "refuse", {"id": "c1"})
    with pytest.raises(InvalidArgument, match="skyair does not handle 'nope' messages"):
        client.call("skyair", "nope", {})
    with pytest.raises(PartnerUnavailable, match="INTERNAL"):
        client.call("skyair", "crash", {})
    with pytest.raises(InvalidArgument, match="already registered"):
        coalition.nodes["skyair"].inbox.register("echo", refuse)


class _Rewrite:
    """A transport that hands the client a changed reply (a man in the middle, or a liar)."""

    def __init__(self, inner: PartnerTransport, change: Callable[[SignedMessage], SignedMessage]):
        self.inner, self.change = inner, change

    def send(self, to: str, msg: SignedMessage, timeout: float) -> SignedMessage:
        return self.change(self.inner.send(to, msg, timeout))

    def close(self) -> None:
        self.inner.close()


def test_a_tampered_reply_is_refused_by_the_client(coalition: Coalition) -> None:
    tls = coalition.nodes["staybright"].tls

    def edit_body(reply: SignedMessage) -> SignedMessage:
        return SignedMessage(reply.envelope.replace(b'"n":1', b'"n":2'), reply.signature)

    def resign_by_beanhouse(reply: SignedMessage) -> SignedMessage:
        return SignedMessage(reply.envelope, coalition.nodes["beanhouse"].key.sign(reply.envelope))

    def as_if_from_beanhouse(reply: SignedMessage) -> SignedMessage:
        return coalition.message("beanhouse", "staybright", kind="echo-reply")

    def to_someone_else(reply: SignedMessage) -> SignedMessage:
        return coalition.message("skyair", "beanhouse", kind="echo-reply")

    def stale(reply: SignedMessage) -> SignedMessage:
        at = coalition.clock() - timedelta(seconds=400)
        return coalition.message("skyair", "staybright", kind="echo-reply", at=at)

    cases = {
        edit_body: "not signed by skyair's key",
        resign_by_beanhouse: "not signed by skyair's key",
        as_if_from_beanhouse: "comes from beanhouse, not skyair",
        to_someone_else: "addressed to beanhouse",
        stale: "was signed at",
    }
    for change, reason in cases.items():
        client = coalition.client(
            "staybright", transport=_Rewrite(coalition.transport(tls), change)
        )
        with pytest.raises(VerificationError, match=reason):
            client.call("skyair", "echo", {"n": 1})

    first: list[SignedMessage] = []

    def replay_first(reply: SignedMessage) -> SignedMessage:
        first.append(reply)
        return first[0]

    client = coalition.client(
        "staybright", transport=_Rewrite(coalition.transport(tls), replay_first)
    )
    client.call("skyair", "echo", {"n": 1})
    with pytest.raises(VerificationError, match="received before"):
        client.call("skyair", "echo", {"n": 1})


def test_the_replay_guard_forgets_ids_after_its_window(coalition: Coalition) -> None:
    node = coalition.nodes["skyair"]
    guard = node.inbox.replay_guard
    start = coalition.clock()
    guard.record("staybright", "a" * 32, start)
    guard.record("beanhouse", "a" * 32, start)  # ids are per sender
    with pytest.raises(FailedPrecondition, match="replay"):
        guard.record("staybright", "a" * 32, start + timedelta(seconds=10))
    assert guard.prune(start + SEEN_WINDOW) == 0
    guard.record("staybright", "b" * 32, start + timedelta(seconds=300))
    assert guard.prune(start + SEEN_WINDOW + timedelta(microseconds=1)) == 2
    assert node.seen() == 1


def test_the_inbox_refuses_a_signing_key_that_is_not_its_own(coalition: Coalition) -> None:
    node = coalition.nodes["skyair"]
    with pytest.raises(InvalidArgument, match="not skyair's key"):
        PartnerInbox(
            "skyair", coalition.manifest, node.inbox.replay_guard.sequencer, SigningKey.generate()
        )
    with pytest.raises(NotFound):
        PartnerInbox("nobody", coalition.manifest, node.inbox.replay_guard.sequencer, node.key)


def test_partners_read_the_ledger_over_mutual_tls(coalition: Coalition, tmp_path: Path) -> None:
    node = coalition.nodes["skyair"]
    with temporary_node(
        f"sqlite:///{tmp_path / 'ledger.db'}", program="skyair", key=node.key
    ) as service:
        service.points.enroll("m1", idempotency_key="enroll-m1")
        sealed = service.ledger.flush()
        assert sealed is not None
        server, port = serve_partner_grpc(node.inbox, node.tls, "127.0.0.1", 0, service=service)
        try:
            manifest = coalition.manifest.with_partner_grpc({"skyair": f"127.0.0.1:{port}"})
            staybright = coalition.nodes["staybright"]
            transport = GrpcTransport(manifest, staybright.tls)
            client = PartnerClient("staybright", manifest, staybright.key, transport)
            coalition.closing.append(client)
            stub = ledger_pb2_grpc.LedgerStub(transport.channel("skyair"))
            key = stub.GetPublicKey(ledger_pb2.GetPublicKeyRequest(), timeout=5)
            assert key.program == "skyair"
            assert VerifyKey.from_pem(key.public_key_pem.encode()) == node.key.public_key
            latest = stub.GetLatestHeader(ledger_pb2.GetLatestHeaderRequest(), timeout=5)
            header = SignedHeader.from_json(parse_json(latest.header.signed_header_json))
            assert header == sealed
            watched = stub.WatchHeaders(ledger_pb2.WatchHeadersRequest(after_height=-1), timeout=5)
            assert SignedHeader.from_json(parse_json(next(watched).signed_header_json)) == sealed
            watched.cancel()
            # The witness's source on the same channel: closing it ends a stream in flight.
            source = GrpcLedgerSource(transport.channel("skyair"))
            stream = source.watch(-1)
            assert next(stream) == sealed
            source.close()
            with pytest.raises(LedgerSourceFailed, match=r"^CANCELLED: "):
                next(stream)
            # The Partner service is on the same port.
            assert client.call("skyair", "echo", {"n": 3})[1]["echo"] == {"n": 3}
        finally:
            server.stop(None).wait(10)


def test_streams_of_one_partner_leave_partner_call_answering(
    coalition: Coalition, tmp_path: Path
) -> None:
    """Issue 11, class 1: 14 WatchHeaders streams from one partner certificate once held
    every worker of the partner server and stopped ``Partner/Call``. Now a partner holds at
    most ``max_streams_per_caller`` streams (the rest refused at once with
    RESOURCE_EXHAUSTED) and calls, its own and other partners', still answer."""
    node = coalition.nodes["skyair"]
    per_partner = DEFAULT_LIMITS.max_streams_per_caller
    with temporary_node(
        f"sqlite:///{tmp_path / 'ledger.db'}", program="skyair", key=node.key
    ) as service:
        server, port = serve_partner_grpc(node.inbox, node.tls, "127.0.0.1", 0, service=service)
        try:
            manifest = coalition.manifest.with_partner_grpc({"skyair": f"127.0.0.1:{port}"})
            watchers = {}
            for program in ("staybright", "beanhouse"):
                partner = coalition.nodes[program]
                transport = GrpcTransport(manifest, partner.tls)
                coalition.closing.append(transport)
                stub = ledger_pb2_grpc.LedgerStub(transport.channel("skyair"))
                request = ledger_pb2.WatchHeadersRequest(after_height=10**9)
                watchers[program] = (
                    PartnerClient(program, manifest, partner.key, transport),
                    [stub.WatchHeaders(request, timeout=60) for _ in range(2 * per_partner)],
                )
            deadline = datetime.now(UTC) + timedelta(seconds=10)
            for _, calls in watchers.values():
                while sum(c.done() for c in calls) < per_partner and datetime.now(UTC) < deadline:
                    time.sleep(0.02)
            time.sleep(0.3)
            for program, (client, calls) in watchers.items():
                ended = [call for call in calls if call.done()]
                assert len(ended) == per_partner, program
                for call in ended:
                    assert call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert f"partner {program!r}" in call.details()
                    assert "max_streams_per_caller" in call.details()
                assert client.call("skyair", "echo", {"n": 5})[1]["echo"] == {"n": 5}
            for _, calls in watchers.values():
                for call in calls:
                    call.cancel()
        finally:
            server.stop(0).wait(10)


def test_a_partner_over_its_rate_is_refused_with_a_retry_hint_then_recovers(
    coalition: Coalition,
) -> None:
    """Each partner certificate has a token bucket on the partner server: over it
    ``Partner/Call`` ends with RESOURCE_EXHAUSTED and trailing ``retry-after``; the sender
    sees PartnerUnavailable (retried by the outbox, never a refusal); others go on."""
    node = coalition.nodes["skyair"]
    limits = Limits(requests_per_second=2.0, burst=2)
    server, port = serve_partner_grpc(node.inbox, node.tls, "127.0.0.1", 0, limits=limits)
    try:
        manifest = coalition.manifest.with_partner_grpc({"skyair": f"127.0.0.1:{port}"})
        staybright = coalition.nodes["staybright"]
        transport = GrpcTransport(manifest, staybright.tls)
        coalition.closing.append(transport)
        client = PartnerClient("staybright", manifest, staybright.key, transport)
        for n in range(limits.burst):
            assert client.call("skyair", "echo", {"n": n})[1]["echo"] == {"n": n}
        with pytest.raises(PartnerUnavailable, match=r"RESOURCE_EXHAUSTED.*rate limit"):
            client.call("skyair", "echo", {"n": 9})
        stub = partner_pb2_grpc.PartnerStub(transport.channel("skyair"))
        msg = coalition.message("staybright", "skyair")
        request = partner_pb2.SignedMessage(envelope=msg.envelope, signature=msg.signature)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Call(request, timeout=5)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "partner 'staybright'" in refused.value.details()
        assert dict(refused.value.trailing_metadata())["retry-after"] == "1"
        beanhouse = coalition.nodes["beanhouse"]
        other = GrpcTransport(manifest, beanhouse.tls)
        coalition.closing.append(other)
        other_client = PartnerClient("beanhouse", manifest, beanhouse.key, other)
        assert other_client.call("skyair", "echo", {"n": 1})[1]["sender"] == "beanhouse"
        time.sleep(1.0)
        assert client.call("skyair", "echo", {"n": 10})[1]["echo"] == {"n": 10}
    finally:
        server.stop(0).wait(10)


def test_the_in_memory_network_runs_the_same_checks(tmp_path: Path) -> None:
    keys = write_coalition(tmp_path)
    manifest = Manifest.load(tmp_path / "coalition.toml")
    network = InMemoryNetwork()
    engine = make_engine(f"sqlite:///{tmp_path / 'mem.db'}", sqlite_synchronous="NORMAL")
    upgrade_schema(engine)
    try:
        sequencer = _sequencer(engine, "skyair", keys["skyair"])
        inbox = PartnerInbox("skyair", manifest, sequencer, keys["skyair"])
        inbox.register("echo", lambda sender, body: ("echo-reply", {"sender": sender}))
        network.add(inbox)
        client = PartnerClient(
            "staybright", manifest, keys["staybright"], transport=network.transport("staybright")
        )
        assert client.call("skyair", "echo", {}) == ("echo-reply", {"sender": "staybright"})
        forged = PartnerClient(
            "staybright", manifest, keys["staybright"], transport=network.transport("beanhouse")
        )
        with pytest.raises(PermissionDenied):
            forged.call("skyair", "echo", {})
        with pytest.raises(PartnerUnavailable):
            client.call("beanhouse", "echo", {})
        network.down.add("skyair")
        with pytest.raises(PartnerUnavailable):
            client.call("skyair", "echo", {})
    finally:
        engine.dispose()


def test_a_certificate_of_the_ca_for_a_program_outside_the_manifest_is_refused(
    coalition: Coalition,
) -> None:
    # The CA signs a certificate for "ghost" (say, a partner that left the coalition).
    document = tomllib.loads((coalition.folder / "coalition.toml").read_text())
    ghost = partner_table(
        "ghost",
        grpc="127.0.0.1:51000",
        partner_grpc="127.0.0.1:52000",
        http="127.0.0.1:53000",
        public_key="ghost/keys/public_key.pem",
    )
    document["partners"].append(ghost)
    with_ghost = write_toml(coalition.folder / "with-ghost.toml", document)
    generate_tls(Manifest.load(with_ghost))  # adds ghost.pem, same CA, nothing replaced
    ghost_tls = TlsFiles(
        coalition.manifest.ca_cert,
        coalition.folder / "tls" / "ghost.pem",
        coalition.folder / "tls" / "ghost.key",
    )
    stub = partner_pb2_grpc.PartnerStub(coalition.transport(ghost_tls).channel("skyair"))
    msg = coalition.message("staybright", "skyair")
    request = partner_pb2.SignedMessage(envelope=msg.envelope, signature=msg.signature)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Call(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "TLS client 'ghost' is not a partner" in (raised.value.details() or "")
    assert coalition.nodes["skyair"].calls == []


def test_a_server_with_another_partners_certificate_is_not_trusted(coalition: Coalition) -> None:
    # The manifest says skyair listens where staybright does: staybright's certificate
    # does not name skyair, so the client never sends it skyair's message.
    wrong = coalition.manifest.with_partner_grpc(
        {"skyair": coalition.manifest.partner("staybright").partner_grpc}
    )
    node = coalition.nodes["beanhouse"]
    client = PartnerClient("beanhouse", wrong, node.key, GrpcTransport(wrong, node.tls))
    coalition.closing.append(client)
    with pytest.raises(PartnerUnavailable, match="skyair is unavailable"):
        client.call("skyair", "echo", {}, timeout=3)
    assert coalition.nodes["staybright"].calls == []


def test_the_client_takes_the_contracts_argument_order_too(coalition: Coalition) -> None:
    node = coalition.nodes["beanhouse"]
    transport = GrpcTransport(coalition.manifest, node.tls)
    client = PartnerClient(coalition.manifest, "beanhouse", node.key, transport)  # type: ignore[arg-type]
    coalition.closing.append(client)
    assert client.program == "beanhouse"
    assert client.call("skyair", "echo", {})[1]["sender"] == "beanhouse"
    with pytest.raises(InvalidArgument, match="a node does not send partner messages to itself"):
        client.call("beanhouse", "echo", {})
    with pytest.raises(NotFound):
        client.call("nobody", "echo", {})


def test_concurrent_copies_of_one_message_are_handled_once(coalition: Coalition) -> None:
    msg = coalition.message("staybright", "skyair")
    stub = partner_pb2_grpc.PartnerStub(
        coalition.transport(coalition.nodes["staybright"].tls).channel("skyair")
    )
    request = partner_pb2.SignedMessage(envelope=msg.envelope, signature=msg.signature)

    def send(_: int) -> grpc.StatusCode:
        try:
            stub.Call(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(send, range(8)))
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.FAILED_PRECONDITION) == 7
    assert len(coalition.nodes["skyair"].calls) == 1
    assert coalition.nodes["skyair"].seen() == 1
