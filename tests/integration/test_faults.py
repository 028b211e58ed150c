"""Fault tests of conversions between real node processes (``coalition run``).

Two brands, skyair (A, the source) and staybright (B, the target), each a process with
its own SQLite file, keys from ``coalition keygen`` and mutual TLS from ``coalition
tls-init``. Each test drives conversions through A's member gRPC API while it breaks
something (SIGKILL of either node, redelivered and reordered batches, a race on one
balance, forged or replayed partner messages), waits until nothing is pending, stops both
nodes, and then proves from the chains alone that points were conserved: every
conversion completed or refunded once, credited at most once, and the cross-chain audit
finds nothing.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from coalition.api.grpc.partner import GrpcTransport, serve_partner_grpc
from coalition.audit import audit_partners
from coalition.audit.db_check import check_database
from coalition.audit.sources import DatabaseSource
from coalition.errors import (
    FailedPrecondition,
    PartnerUnavailable,
    PermissionDenied,
    Unauthenticated,
)
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.ledger.envelope import SignedMessage, sign_message
from coalition.ledger.keys import SigningKey
from coalition.node.config import SealerConfig
from coalition.node.manifest import Manifest
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.sequencer import Sequencer
from coalition.ops.tls import TlsFiles, make_ca, make_node_cert
from coalition.store.db import make_engine
from coalition.store.schema import upgrade_schema
from coalition.v1 import conversions_pb2, conversions_pb2_grpc

from support.processes import (
    CHANNEL_OPTIONS,
    COALITION,
    RETRYABLE,
    BrandProcess,
    CoalitionProcesses,
    make_coalition,
    operator_metadata,
    propose_agreement,
)

pytestmark = pytest.mark.slow

A, B = "skyair", "staybright"
MEMBERS = [f"M{n:03d}" for n in range(20)]
SEED = 200_000
"""Points each member of A starts with."""
TRANSPORT_FAILURES = RETRYABLE | {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
}
"""What a call cut by a SIGKILL may end with; retrying with the same idempotency key is
exactly what a member's client would do (the node answers the first result again)."""


def _channel(brand: BrandProcess) -> grpc.Channel:
    return grpc.insecure_channel(brand.grpc, options=CHANNEL_OPTIONS)


@dataclass
class Pair:
    """A running coalition of A and B with an agreement and funded members."""

    coalition: CoalitionProcesses
    seeded: int = 0

    @property
    def a(self) -> BrandProcess:
        return self.coalition.brands[A]

    @property
    def b(self) -> BrandProcess:
        return self.coalition.brands[B]

    def manifest(self) -> Manifest:
        return Manifest.load(self.coalition.manifest)

    def fund(self, members: list[str], points: int) -> None:
        with self.a.client() as ca, self.b.client() as cb:
            for member in members:
                ca.enroll(member, idempotency_key=f"enroll-{member}")
                cb.enroll(member, idempotency_key=f"enroll-{member}")
                ca.adjust(
                    member, points, "ops", "fault test seed", idempotency_key=f"seed-{member}"
                )
                self.seeded += points


def start_pair(pair: Pair) -> None:
    pair.b.start()  # B first: A's first calls to B then find it up
    pair.a.start()
    propose_agreement(pair.a, B)


@pytest.fixture
def pair_factory(tmp_path: Path) -> Iterator[Callable[..., Pair]]:
    made: list[Pair] = []

    def make(**settings: object) -> Pair:
        pair = Pair(make_coalition(tmp_path, (A, B), **settings))
        made.append(pair)  # before starting: a node that started is stopped whatever fails
        start_pair(pair)
        return pair

    yield make
    for pair in made:
        pair.coalition.stop_all()


# --- driving conversions --------------------------------------------------------------


@dataclass
class Driver:
    """Issues conversions at A from several threads; retries a call (same idempotency
    key) while A is unreachable, so each conversion is created exactly once."""

    source: BrandProcess
    count: int
    threads: int = 8
    issued: int = 0
    ids: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold_from: int | None = None
    """Conversions from this number on wait for ``resume`` (set by the fault)."""
    resume: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def amount(n: int) -> int:
        return 100 + (n * 37) % 400

    def _one(self, stub: conversions_pb2_grpc.ConversionsStub, n: int) -> None:
        if self.hold_from is not None and n >= self.hold_from:
            # The fault may restart a node (up to 30 s) and wait for it to settle (90 s).
            assert self.resume.wait(180), "the fault never resumed the driver"
        request = conversions_pb2.ConvertRequest(
            member_id=MEMBERS[n % len(MEMBERS)],
            to_program=B,
            to_member_id=MEMBERS[n % len(MEMBERS)],
            amount=self.amount(n),
            idempotency_key=f"conversion-{n}",
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = stub.Convert(request, metadata=operator_metadata(self.source), timeout=10)
                break
            except grpc.RpcError as exc:
                if exc.code() in TRANSPORT_FAILURES and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.refused[n] = f"{exc.code().name}: {exc.details()}"
                    self.issued += 1
                return
        with self.lock:
            self.ids[n] = reply.id
            self.issued += 1

    def _worker(self, numbers: range) -> None:
        with _channel(self.source) as channel:
            stub = conversions_pb2_grpc.ConversionsStub(channel)
            for n in numbers:
                self._one(stub, n)

    def run(self) -> None:
        with ThreadPoolExecutor(self.threads) as pool:
            futures = [
                pool.submit(self._worker, range(t, self.count, self.threads))
                for t in range(self.threads)
            ]
            for future in futures:
                future.result()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="driver", daemon=True)
        thread.start()
        return thread

    def wait_issued(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.issued < n:
            assert time.monotonic() < deadline, f"only {self.issued} conversions issued"
            time.sleep(0.01)


def statuses(brand: BrandProcess) -> Counter[str]:
    engine = create_engine(brand.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT status, count(*) FROM coalition_conversions GROUP BY status")
            ).all()
    finally:
        engine.dispose()
    return Counter({str(status): int(n) for status, n in rows})


def wait_settled(brand: BrandProcess, total: int, timeout: float = 90) -> Counter[str]:
    """Wait until A has ``total`` conversions and none pending."""
    deadline = time.monotonic() + timeout
    while True:
        found = statuses(brand)
        if sum(found.values()) == total and found["pending"] == 0:
            return found
        assert time.monotonic() < deadline, f"still not settled: {dict(found)}\n{brand.tail()}"
        time.sleep(0.2)


def chain(brand: BrandProcess) -> list[JsonObject]:
    engine = create_engine(brand.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT body FROM entries ORDER BY log_index")).all()
    finally:
        engine.dispose()
    bodies = [parse_json(row.body) for row in rows]
    assert all(isinstance(body, dict) for body in bodies)
    return bodies  # type: ignore[return-value]


def by_kind(entries: list[JsonObject], kind: str) -> list[JsonObject]:
    return [e for e in entries if e.get("kind") == kind]


def cid(entry: JsonObject) -> str:
    conversion = entry["conversion"]
    assert isinstance(conversion, dict)
    return str(conversion["id"])


def assert_reconciled(pair: Pair, expected: set[str]) -> tuple[int, int]:
    """Stop both nodes, then prove conservation from the chains; (completed, refunded)."""
    pair.coalition.stop_all()
    manifest = pair.manifest()
    sources = {p: DatabaseSource(pair.coalition.brands[p].database_url) for p in (A, B)}
    try:
        reports, cross = audit_partners(
            sources, manifest.public_key, pending_before=datetime.now(UTC)
        )
    finally:
        for source in sources.values():
            source.close()
    for program, report in reports.items():
        assert report.ok, f"{program}: {report.render()}"
    assert cross.ok, cross.render()
    for brand in (pair.a, pair.b):
        check = check_database(brand.database_url)
        assert check.ok, check.render()

    chain_a, chain_b = chain(pair.a), chain(pair.b)
    outs = {cid(e): e for e in by_kind(chain_a, "convert-out")}
    completes = [cid(e) for e in by_kind(chain_a, "convert-complete")]
    refunds = {cid(e): e for e in by_kind(chain_a, "convert-refund")}
    ins = by_kind(chain_b, "convert-in")
    in_ids = [cid(e) for e in ins]
    rejects = {cid(e) for e in by_kind(chain_b, "convert-reject")}

    assert set(outs) == expected, "A's convert-outs are exactly the conversions made"
    assert len(completes) == len(set(completes)), "a conversion completed twice"
    assert not set(completes) & set(refunds), "a conversion both completed and refunded"
    assert set(completes) | set(refunds) == expected, "a conversion is still open"
    assert len(in_ids) == len(set(in_ids)), "a conversion was credited twice"
    assert set(in_ids) == set(completes), "credited on B exactly when completed on A"
    assert set(refunds) <= rejects, "refunded only on B's recorded rejection"
    assert not rejects & set(in_ids)

    def amount(e: JsonObject) -> int:
        value = e["amount"]
        assert isinstance(value, int)
        return value

    debited = sum(amount(e) for e in outs.values())
    refunded = sum(amount(e) for e in refunds.values())
    completed_out = sum(amount(outs[c]) for c in completes)
    assert debited - refunded == completed_out
    quoted = sum(int(outs[c]["conversion"]["credit"]) for c in completes)  # type: ignore[call-overload, index]
    assert sum(amount(e) for e in ins) == quoted
    assert reports[A].supply == pair.seeded - completed_out, "A's members hold the rest"
    assert reports[B].supply == quoted, "B's members hold exactly the quoted credits"
    return len(completes), len(refunds)


def run_with_fault(
    pair: Pair, count: int, fault: Callable[[Driver], None], *, hold_from: int | None = None
) -> set[str]:
    driver = Driver(pair.a, count, hold_from=hold_from)
    thread = driver.start()
    fault(driver)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert not driver.refused, f"conversions refused: {list(driver.refused.items())[:5]}"
    assert len(driver.ids) == count
    wait_settled(pair.a, count)
    return set(driver.ids.values())


# --- the tests ------------------------------------------------------------------------


def test_receiving_node_killed_mid_stream(pair_factory: Callable[..., Pair]) -> None:
    """B is SIGKILLed while batches are in flight and stays down past ``abort_after_s``:
    what was pending is aborted and refunded on B's signed rejection, or completed if B
    had credited it before dying; the 300 conversions made once A reaches B again
    complete."""
    pair = pair_factory(abort_after_s=3)
    pair.fund(MEMBERS, SEED)

    def kill_b(driver: Driver) -> None:
        driver.wait_issued(300)
        pair.b.kill9()
        killed = time.monotonic()
        driver.wait_issued(700)
        time.sleep(max(0.0, killed + 4 - time.monotonic()))
        pair.b.start()
        wait_settled(pair.a, 700)  # A reached B again: the old ones are answered
        driver.resume.set()

    expected = run_with_fault(pair, 1000, kill_b, hold_from=700)
    completed, refunded = assert_reconciled(pair, expected)
    assert completed + refunded == 1000
    assert completed >= 300 and refunded > 0, (completed, refunded)


def test_sending_node_killed_mid_stream(pair_factory: Callable[..., Pair]) -> None:
    pair = pair_factory(abort_after_s=3)
    pair.fund(MEMBERS, SEED)

    def kill_a(driver: Driver) -> None:
        driver.wait_issued(400)
        pair.a.kill9()
        time.sleep(0.5)
        pair.a.start()

    expected = run_with_fault(pair, 1000, kill_a)
    completed, refunded = assert_reconciled(pair, expected)
    assert completed + refunded == 1000 and completed > 0
    assert pair.a.starts == 2


def _a_client(pair: Pair) -> PartnerClient:
    """A PartnerClient speaking as A (A's ledger key and TLS certificate)."""
    manifest = pair.manifest()
    key = SigningKey.from_pem((pair.a.folder / "keys" / "ledger.pem").read_bytes())
    return PartnerClient(
        A, manifest, key, GrpcTransport(manifest, TlsFiles.for_program(manifest, A))
    )


def to_members(brand: BrandProcess) -> dict[str, str]:
    """Conversion id -> the member credited at the target, from A's conversions table."""
    engine = create_engine(brand.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, to_member_id FROM coalition_conversions")).all()
    finally:
        engine.dispose()
    return {str(row.id): str(row.to_member_id) for row in rows}


def _answer_body(receipt: object) -> JsonObject:
    envelope = parse_json(SignedMessage.from_json(receipt).envelope)  # type: ignore[arg-type]
    assert isinstance(envelope, dict) and isinstance(envelope["body"], dict)
    return envelope["body"]


def test_batches_delivered_twice_and_out_of_order(pair_factory: Callable[..., Pair]) -> None:
    """While A's outbox delivers, the same convert-outs also reach B straight from a
    PartnerClient speaking as A: in reversed order, each batch twice. B answers every
    redelivery with the answer it gave first and credits nothing twice."""
    pair = pair_factory(abort_after_s=30)
    pair.fund(MEMBERS, SEED)
    client = _a_client(pair)
    first: dict[str, JsonObject] = {}
    problems: list[str] = []
    stop = threading.Event()

    def redeliver_new(done: int) -> int:
        outs = by_kind(chain(pair.a), "convert-out")[done:]
        if not outs:
            return done
        members = to_members(pair.a)
        batch: list[JsonObject] = [
            {"out_entry": out, "to_member_id": members[cid(out)]} for out in reversed(outs)
        ]
        for _ in range(2):
            for start in range(0, len(batch), 200):
                kind, reply = client.call(
                    B,
                    "convert",
                    {"conversions": batch[start : start + 200]},
                    10,  # type: ignore[dict-item]
                )
                assert kind == "convert-reply"
                receipts = reply["receipts"]
                assert isinstance(receipts, list)
                for receipt in receipts:
                    body = _answer_body(receipt)
                    seen = first.setdefault(str(body["conversion"]), body)
                    if seen != body:
                        problems.append(f"{body['conversion']}: {seen} then {body}")
        return done + len(outs)

    def redeliver() -> None:
        done = 0
        while not stop.is_set():
            done = redeliver_new(done)
            time.sleep(0.05)
        redeliver_new(done)

    thread = threading.Thread(target=redeliver, daemon=True)
    thread.start()
    try:
        expected = run_with_fault(pair, 1000, lambda driver: None)
    finally:
        stop.set()
        thread.join(timeout=60)
        client.close()
    assert not thread.is_alive()
    assert not problems, problems[:3]
    assert set(first) == expected, "every conversion was redelivered and answered"
    recorded = {
        cid(e): _answer_body(e["receipt"]) for e in by_kind(chain(pair.a), "convert-complete")
    }
    completed, refunded = assert_reconciled(pair, expected)
    assert (completed, refunded) == (1000, 0)
    for conversion, body in first.items():
        assert recorded[conversion] == body, "A's receipt is the one every redelivery got"


def test_concurrent_conversions_never_overdraw(pair_factory: Callable[..., Pair]) -> None:
    """Sixteen threads race to convert 1,000 points each from one 10,000-point balance:
    exactly ten conversions go through, the rest are refused, and nothing goes negative."""
    pair = pair_factory(abort_after_s=30)
    pair.fund(["D001"], 10_000)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def race(thread: int) -> None:
        with _channel(pair.a) as channel:
            stub = conversions_pb2_grpc.ConversionsStub(channel)
            for n in range(5):
                request = conversions_pb2.ConvertRequest(
                    member_id="D001",
                    to_program=B,
                    to_member_id="D001",
                    amount=1000,
                    idempotency_key=f"race-{thread}-{n}",
                )
                try:
                    stub.Convert(request, metadata=operator_metadata(pair.a), timeout=10)
                    outcome = "converted"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                with lock:
                    outcomes[outcome] += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(race, range(16)))
    assert outcomes == Counter({"converted": 10, "FAILED_PRECONDITION": 70})
    with pair.a.client() as client:
        balance = client.balance("D001")
    assert (balance.spendable, balance.held) == (0, 0)
    wait_settled(pair.a, 10)
    expected = set(to_members(pair.a))
    assert assert_reconciled(pair, expected) == (10, 0)

    # The auditor's command agrees, and catches a credit changed in B's database.
    manifest = str(pair.coalition.manifest)
    result = run_audit_cli(manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Cross-chain audit of skyair, staybright: OK" in result.stdout
    engine = create_engine(pair.b.database_url)
    with engine.begin() as conn:
        index, body = conn.execute(
            text("SELECT log_index, body FROM entries WHERE body LIKE '%convert-in%' LIMIT 1")
        ).one()
        changed = body.replace('"amount":1485', '"amount":1486')
        assert changed != body
        conn.execute(
            text("UPDATE entries SET body = :body WHERE log_index = :index"),
            {"body": changed, "index": index},
        )
    engine.dispose()
    result = run_audit_cli(manifest)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "entry-tampered" in result.stdout and "convert-in-mismatch" in result.stdout


def run_audit_cli(manifest: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COALITION, "audit-coalition", "--manifest", manifest, "--pending-grace", "0", *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _foreign_tls(folder: Path, program: str) -> TlsFiles:
    """A certificate naming ``program``, issued by a CA the coalition does not trust."""
    from cryptography.hazmat.primitives import serialization

    now = datetime.now(UTC)
    ca, ca_key = make_ca("Rogue CA", now)
    cert, key = make_node_cert(program, ca, ca_key, now)
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def log_size(brand: BrandProcess) -> int:
    return len(chain(brand))


def test_impersonation_refused_by_a_running_node(
    pair_factory: Callable[..., Pair], tmp_path: Path
) -> None:
    """Against B's process: a message signed with a key that is not A's, a message sent
    over another program's certificate or one from an untrusted CA, and a replayed
    message are all refused and change nothing on B's chain."""
    pair = pair_factory(abort_after_s=30)
    pair.fund(["E001"], 5000)
    with _channel(pair.a) as channel:
        conversions_pb2_grpc.ConversionsStub(channel).Convert(
            conversions_pb2.ConvertRequest(
                member_id="E001",
                to_program=B,
                to_member_id="E001",
                amount=1000,
                idempotency_key="e1",
            ),
            metadata=operator_metadata(pair.a),
            timeout=10,
        )
    wait_settled(pair.a, 1)
    (out,) = by_kind(chain(pair.a), "convert-out")
    body: JsonObject = {"conversions": [{"out_entry": out, "to_member_id": "E001"}]}
    manifest = pair.manifest()
    key_a = SigningKey.from_pem((pair.a.folder / "keys" / "ledger.pem").read_bytes())
    tls = {p: TlsFiles.for_program(manifest, p) for p in (A, B)}
    before = log_size(pair.b)

    def send(msg: SignedMessage, over: TlsFiles) -> SignedMessage:
        transport = GrpcTransport(manifest, over)
        try:
            return transport.send(B, msg, 10)
        finally:
            transport.close()

    now = datetime.now(UTC)
    forged = sign_message(SigningKey.generate(), "convert", A, B, body, now)
    with pytest.raises(Unauthenticated, match="not signed by skyair"):
        send(forged, tls[A])
    genuine = sign_message(key_a, "convert", A, B, body, now)
    with pytest.raises(PermissionDenied, match="TLS certificate"):
        send(genuine, tls[B])  # A's message over B's own certificate
    with pytest.raises(PartnerUnavailable):
        send(genuine, _foreign_tls(tmp_path / "rogue", A))
    assert log_size(pair.b) == before, "refused messages changed nothing"

    reply = send(genuine, tls[A])  # the genuine message: answered (already credited)
    assert reply.envelope
    with pytest.raises(FailedPrecondition, match="replay"):
        send(genuine, tls[A])
    assert log_size(pair.b) == before, "a redelivery and a replay credit nothing"

    # The auditor's command reads both live nodes over gRPC with their auditor keys.
    result = run_audit_cli(
        str(pair.coalition.manifest),
        "--from",
        "grpc",
        *(f"--api-key={p}={pair.coalition.brands[p].api_keys['auditor']}" for p in (A, B)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Cross-chain audit of skyair, staybright: OK" in result.stdout
    assert assert_reconciled(pair, {cid(out)}) == (1, 0)


class FakeTarget:
    """B's partner port served in this process by an inbox that signs bad receipts."""

    def __init__(self, pair: Pair, folder: Path) -> None:
        manifest = pair.manifest()
        self.key = SigningKey.from_pem((pair.b.folder / "keys" / "ledger.pem").read_bytes())
        self.engine = make_engine(f"sqlite:///{folder / 'fake.db'}")
        upgrade_schema(self.engine)
        sequencer = Sequencer(self.engine, B, self.key, SealerConfig())
        self.inbox = PartnerInbox(B, manifest, sequencer, self.key)
        self.inbox.register("convert", self._convert)
        self.calls = 0
        port = int(pair.b.partner_grpc.rsplit(":", 1)[1])
        self.server, _ = serve_partner_grpc(
            self.inbox, TlsFiles.for_program(manifest, B), port=port
        )

    def _convert(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        """Odd calls: a receipt whose bytes were changed after signing; even calls: a
        receipt B really signed, but for more points than the convert-out quoted."""
        self.calls += 1
        receipts: list[object] = []
        items = body["conversions"]
        assert isinstance(items, list)
        for item in items:
            assert isinstance(item, dict) and isinstance(item["out_entry"], dict)
            conversion = item["out_entry"]["conversion"]
            assert isinstance(conversion, dict)
            credit = int(conversion["credit"])  # type: ignore[call-overload]
            receipt: JsonObject = {
                "conversion": conversion["id"],
                "status": "credited",
                "in_entry": "0" * 32,
                "in_hash": "0" * 64,
                "credit": credit if self.calls % 2 else credit + 1,
            }
            signed = sign_message(
                self.key, "convert-receipt", B, sender, receipt, datetime.now(UTC)
            )
            if self.calls % 2:
                signed = SignedMessage(
                    signed.envelope.replace(
                        f'"credit":{credit}'.encode(), f'"credit":{credit * 10}'.encode()
                    ),
                    signed.signature,
                )
            receipts.append(signed.to_json())
        return "convert-reply", {"receipts": receipts}  # type: ignore[dict-item]

    def stop(self) -> None:
        self.server.stop(None).wait(10)
        self.engine.dispose()


def test_tampered_receipts_never_complete_a_conversion(
    pair_factory: Callable[..., Pair], tmp_path: Path
) -> None:
    """A's process talks to a fake B that answers with tampered or inflated receipts:
    A records nothing. Once the real B is back, the conversions complete normally."""
    pair = pair_factory(abort_after_s=60)
    pair.fund(["F001"], 10_000)
    pair.b.stop()
    fake = FakeTarget(pair, tmp_path)
    try:
        with _channel(pair.a) as channel:
            stub = conversions_pb2_grpc.ConversionsStub(channel)
            for n in range(3):
                stub.Convert(
                    conversions_pb2.ConvertRequest(
                        member_id="F001",
                        to_program=B,
                        to_member_id="F001",
                        amount=1000,
                        idempotency_key=f"f{n}",
                    ),
                    metadata=operator_metadata(pair.a),
                    timeout=10,
                )
        deadline = time.monotonic() + 30
        while fake.calls < 3:
            assert time.monotonic() < deadline, f"A called the fake B {fake.calls} times"
            time.sleep(0.1)
        assert statuses(pair.a) == Counter({"pending": 3})
        assert not by_kind(chain(pair.a), "convert-complete")
        assert "refused" in pair.a.log.read_text()
    finally:
        fake.stop()
    pair.b.start()
    wait_settled(pair.a, 3)
    assert assert_reconciled(pair, set(to_members(pair.a))) == (3, 0)
