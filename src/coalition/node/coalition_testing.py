"""Several real partner nodes in one process, for tests and demos of the coalition.

Each node has its own database, a started ``NodeService``, a ``PartnerInbox`` behind a
mutual-TLS partner gRPC server on 127.0.0.1 (a free port), a ``PartnerClient`` and the
coalition features (agreements, conversions with their outbox). The manifest, ledger
keys and TLS material are written to a folder the caller owns (a test's ``tmp_path``).
Everything is stopped and closed when the context ends.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from sqlalchemy import select

from coalition.api.grpc.partner import GrpcTransport, serve_partner_grpc
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import format_time
from coalition.ledger.keys import SigningKey
from coalition.node.config import SealerConfig
from coalition.node.features.agreements import Agreements
from coalition.node.features.conversions import Conversions
from coalition.node.manifest import Manifest
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.service import NodeService
from coalition.node.testing import postgres_schema
from coalition.ops.tls import TlsFiles, generate_tls
from coalition.points.rules import ProgramRules
from coalition.store.db import make_engine
from coalition.store.repository import stored_object
from coalition.store.schema import upgrade_schema
from coalition.store.tables import entries

log = logging.getLogger(__name__)

PROGRAMS = ("skyair", "staybright", "beanhouse")
ACCOUNT_SECRET = b"coalition-test-account-secret-0123"


@dataclass
class PartnerNode:
    """One running partner node and its coalition features."""

    program: str
    url: str
    key: SigningKey
    service: NodeService
    inbox: PartnerInbox
    tls: TlsFiles
    port: int
    server: grpc.Server | None
    client: PartnerClient | None = None
    agreements: Agreements | None = None
    conversions: Conversions | None = None

    def stop_partner_server(self) -> None:
        """Take the partner server down (partners calling it get PartnerUnavailable)."""
        if self.server is not None:
            self.server.stop(None).wait(10)
            self.server = None

    def start_partner_server(self) -> None:
        """Bring the partner server back on the same port."""
        if self.server is None:
            self.server, _ = serve_partner_grpc(
                self.inbox, self.tls, "127.0.0.1", self.port, self.service
            )

    @property
    def conv(self) -> Conversions:
        assert self.conversions is not None
        return self.conversions

    @property
    def agr(self) -> Agreements:
        assert self.agreements is not None
        return self.agreements


@dataclass
class RunningCoalition:
    """The running nodes, by program, and the manifest with their real ports."""

    folder: Path
    manifest: Manifest
    nodes: dict[str, PartnerNode] = field(default_factory=dict)
    rules: ProgramRules = field(default_factory=ProgramRules)
    abort_after_s: float = 30.0
    clock: Callable[[], datetime] | None = None
    """What every node's service reads as now (None: the wall clock)."""

    def __getitem__(self, program: str) -> PartnerNode:
        return self.nodes[program]

    def restart(self, program: str, *, start_features: bool = True) -> PartnerNode:
        """Close ``program``'s node as a stop would, then open it again on the same
        database, key and partner port (its outbox resumes from the database)."""
        old = self.nodes[program]
        _close(old)
        service = _open_service(program, old.url, old.key, self.rules, self.clock)
        inbox = PartnerInbox(program, self.manifest, service.engine, old.key)
        node = PartnerNode(program, old.url, old.key, service, inbox, old.tls, old.port, None)
        node.start_partner_server()
        _wire(node, self.manifest, self.abort_after_s)
        if start_features:
            node.conv.start()
        self.nodes[program] = node
        return node


def write_manifest(
    folder: Path,
    programs: Sequence[str],
    credit_limits: Mapping[tuple[str, str], int] | None = None,
) -> dict[str, SigningKey]:
    """A manifest in ``folder`` (placeholder ports), fresh ledger keys and TLS material."""
    keys = {p: SigningKey.generate() for p in programs}
    parts = ['[coalition]\nname = "Test coalition"\nca_cert = "tls/ca.pem"\nwitness_quorum = 1\n']
    for n, (program, key) in enumerate(keys.items()):
        (folder / program / "keys").mkdir(parents=True, exist_ok=True)
        (folder / program / "keys" / "public_key.pem").write_bytes(key.public_key.to_pem())
        parts.append(
            f'[[partners]]\nprogram = "{program}"\ngrpc = "127.0.0.1:{41000 + n}"\n'
            f'partner_grpc = "127.0.0.1:{42000 + n}"\nhttp = "127.0.0.1:{43000 + n}"\n'
            f'public_key = "{program}/keys/public_key.pem"\ncurrency = "EUR"\n'
        )
    for (creditor, debtor), limit in (credit_limits or {}).items():
        parts.append(
            f'[[credit_limits]]\ncreditor = "{creditor}"\ndebtor = "{debtor}"\n'
            f"limit_minor = {limit}\n"
        )
    (folder / "coalition.toml").write_text("\n".join(parts), encoding="utf-8")
    generate_tls(Manifest.load(folder / "coalition.toml"))
    return keys


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


def ledger_entries(service: NodeService, kind: str | None = None) -> list[JsonObject]:
    """The node's entries in log order (sealed or not), optionally of one kind."""
    query = select(entries.c.body).order_by(entries.c.log_index)
    if kind is not None:
        query = query.where(entries.c.kind == kind)
    with service.engine.connect() as conn:
        return [stored_object(row.body) for row in conn.execute(query)]


def entry_kinds(service: NodeService) -> Counter[str]:
    """How many entries of each kind the node wrote."""
    return Counter(str(entry["kind"]) for entry in ledger_entries(service))


@contextmanager
def node_urls(database_url: str, folder: Path, programs: Sequence[str]) -> Iterator[dict[str, str]]:
    """One database per program: SQLite files in ``folder``, or fresh PostgreSQL schemas
    (the first program uses ``database_url`` itself) when it is a PostgreSQL URL."""
    if not database_url.startswith("postgres"):
        yield {p: f"sqlite:///{folder / p}.db" for p in programs}
        return
    with ExitStack() as stack:
        urls = {programs[0]: database_url}
        for program in programs[1:]:
            urls[program] = stack.enter_context(postgres_schema())
        yield urls


def agreement_doc(
    from_program: str,
    to_program: str,
    *,
    agreement_id: str | None = None,
    version: int = 1,
    rate: tuple[int, int] = (3, 2),
    fee_bps: int = 100,
    min_points: int = 100,
    max_points: int = 100_000,
    daily_cap_points: int = 200_000,
    point_value: tuple[int, int] = (1, 1),
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    proposed_by: str | None = None,
) -> JsonObject:
    """A rate agreement document valid from a day ago for a year (unless told)."""
    now = datetime.now().astimezone()
    start = valid_from or now - timedelta(days=1)
    return {
        "type": "coalition.agreement.v1",
        "id": agreement_id or f"{from_program}-{to_program}",
        "version": version,
        "from_program": from_program,
        "to_program": to_program,
        "rate": list(rate),
        "fee_bps": fee_bps,
        "min_points": min_points,
        "max_points": max_points,
        "daily_cap_points": daily_cap_points,
        "point_value": list(point_value),
        "currency": "EUR",
        "valid_from": format_time(start),
        "valid_until": format_time(valid_until or start + timedelta(days=365)),
        "proposed_by": proposed_by or from_program,
    }


def _open_service(
    program: str,
    url: str,
    key: SigningKey,
    rules: ProgramRules,
    clock: Callable[[], datetime] | None,
) -> NodeService:
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    upgrade_schema(engine)
    service = NodeService(
        engine,
        program,
        key,
        ACCOUNT_SECRET,
        rules,
        SealerConfig(max_entries=1000, max_delay_ms=50),
        clock=clock,
    )
    service.start()
    return service


def _wire(node: PartnerNode, manifest: Manifest, abort_after_s: float) -> None:
    """The node's client and features, registered on its inbox."""
    transport = GrpcTransport(manifest, node.tls)
    node.client = PartnerClient(node.program, manifest, node.key, transport)
    node.agreements = Agreements(node.service, manifest, node.client)
    node.conversions = Conversions(
        node.service, manifest, node.client, node.agreements, abort_after_s=abort_after_s
    )
    node.agreements.register(node.inbox)
    node.conversions.register(node.inbox)


def _close(node: PartnerNode) -> None:
    if node.conversions is not None:
        node.conversions.stop()
    node.stop_partner_server()
    if node.client is not None:
        node.client.close()
    node.service.close()


@contextmanager
def coalition_nodes(
    folder: Path,
    urls: Mapping[str, str],
    *,
    credit_limits: Mapping[tuple[str, str], int] | None = None,
    abort_after_s: float = 30.0,
    rules: ProgramRules | None = None,
    start_features: bool = True,
    clock: Callable[[], datetime] | None = None,
) -> Iterator[RunningCoalition]:
    """Start one node per program of ``urls`` with the coalition features wired (and the
    outboxes running unless ``start_features`` is False); ``clock`` is their services' now."""
    programs = list(urls)
    keys = write_manifest(folder, programs, credit_limits)
    manifest = Manifest.load(folder / "coalition.toml")
    coalition = RunningCoalition(
        folder,
        manifest,
        rules=rules or ProgramRules(holding_period=timedelta(0)),
        abort_after_s=abort_after_s,
        clock=clock,
    )
    try:
        for program in programs:
            service = _open_service(
                program, urls[program], keys[program], coalition.rules, coalition.clock
            )
            inbox = PartnerInbox(program, manifest, service.engine, keys[program])
            tls = TlsFiles.for_program(manifest, program)
            node = PartnerNode(program, urls[program], keys[program], service, inbox, tls, 0, None)
            coalition.nodes[program] = node
            node.server, node.port = serve_partner_grpc(inbox, tls, "127.0.0.1", 0, service)
        coalition.manifest = manifest.with_partner_grpc(
            {p: f"127.0.0.1:{n.port}" for p, n in coalition.nodes.items()}
        )
        for node in coalition.nodes.values():
            _wire(node, coalition.manifest, abort_after_s)
        if start_features:
            for node in coalition.nodes.values():
                node.conv.start()
        yield coalition
    finally:
        for node in coalition.nodes.values():
            if node.conversions is not None:
                node.conversions.stop()
        for node in coalition.nodes.values():
            _close(node)
