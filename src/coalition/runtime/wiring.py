"""The composition root's wiring: a whole node built from its configuration.

``build_node`` opens the store and the service (``open_node``) and, for a coalition
partner, its ``CoalitionNode``; ``serve_member_api`` puts the member/operator transports
(gRPC and REST, with every feature's servicers and routes) in front of it. ``coalition
run`` (``runtime.runner``), the demo's processes and the tests' in-process nodes all
build their nodes here, so the node under test is the node users run.

``CoalitionNode`` builds, from a node's configuration and its running ``NodeService``,
the manifest, the ``PartnerClient`` and ``PartnerInbox``, and every feature
(docs/coalition.md): agreements, conversions with their outbox, cross-brand
redemptions, settlement and the witness. Each feature registers its message kinds on the
inbox. Life cycle (the runner's order): ``start()`` brings the mutual-TLS partner server
up before any feature starts sending (partners may answer at once); ``stop()`` stops the
features that send (outbox, witness) first, then the partner server; the caller closes
the service last, so everything acknowledged is sealed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import grpc
import uvicorn
from fastapi import APIRouter, FastAPI
from sqlalchemy import Engine

from coalition.api.grpc.agreements import add_agreements_servicer
from coalition.api.grpc.conversions import add_conversions_servicer
from coalition.api.grpc.ledger_source import GrpcLedgerSource
from coalition.api.grpc.partner import GrpcTransport, serve_partner_grpc
from coalition.api.grpc.redemptions import add_redemptions_servicer
from coalition.api.grpc.server import AddServicer, serve_grpc
from coalition.api.grpc.settlement import add_settlement_servicer
from coalition.api.grpc.witness import add_witness_servicer
from coalition.api.http.agreements import agreements_router
from coalition.api.http.app import create_app
from coalition.api.http.conversions import conversions_router
from coalition.api.http.redemptions import redemptions_router
from coalition.api.http.server import serve_http
from coalition.api.http.settlement import settlement_router
from coalition.api.http.witness import witness_router
from coalition.errors import FailedPrecondition, InvalidArgument, NotFound
from coalition.ledger.keys import SigningKey
from coalition.node.auth import Authenticator
from coalition.node.config import (
    CoalitionConfig,
    IntegrityConfig,
    NodeConfig,
    SealerConfig,
    split_address,
)
from coalition.node.features.agreements import Agreements
from coalition.node.features.conversions import Conversions
from coalition.node.features.redemptions import Redemptions
from coalition.node.features.settlement import Settlement
from coalition.node.features.witness import BACKOFF_S, LedgerSource, Witness
from coalition.node.integrity import check_newest, refuse_start
from coalition.node.ledger_keys import RotatedKeyLoader
from coalition.node.manifest import Manifest
from coalition.node.partners import PartnerClient, PartnerInbox, PartnerTransport
from coalition.node.service import NodeService
from coalition.ops.keyfiles import read_account_secret, read_signing_key, rotated_key_loader
from coalition.ops.tls import TlsFiles, read_server_tls
from coalition.points.rules import ProgramRules
from coalition.store.columns import to_micros
from coalition.store.db import ensure_sqlite_folder, lock_sqlite_file, make_engine
from coalition.store.schema import schema_state, upgrade_schema


def open_service(
    database_url: str,
    program: str,
    key: SigningKey,
    account_secret: bytes,
    rules: ProgramRules,
    sealer: SealerConfig,
    *,
    sqlite_synchronous: str = "FULL",
    clock: Callable[[], datetime] | None = None,
    read_only_primary: str | None = None,
    verify_at_start_blocks: int = IntegrityConfig.verify_at_start_blocks,
    rotated_keys: RotatedKeyLoader | None = None,
    monotonic: Callable[[], float] | None = None,
) -> NodeService:
    """The store (SQLite folder created if missing, schema upgraded to this code's
    revision under the schema lock) and the service on it, not yet sealing: call
    ``start()``. ``clock`` (tests) replaces the wall clock, ``monotonic`` (the
    simulator) the monotonic clock of the lease (``Sequencer``).

    ``read_only_primary`` (a process on a hot standby, ``node/read_only.py``) migrates
    nothing: the schema MUST already be at this code's revision (FailedPrecondition
    otherwise, saying to migrate the primary or run this version there).

    Before the service is built (so before anything is sealed on a damaged frontier) the
    newest ``verify_at_start_blocks`` blocks are verified with the node's own key
    (``node.integrity.check_newest``): damage raises LedgerDamaged naming every fault and
    nothing is started.

    On SQLite the service holds the database's writer lock (``lock_sqlite_file``) until it
    is closed: a second node on the same file is refused here with FailedPrecondition,
    before anything is read or written."""
    ensure_sqlite_folder(database_url)
    writer_lock = lock_sqlite_file(database_url)
    try:
        engine = make_engine(database_url, sqlite_synchronous=sqlite_synchronous)
        try:
            if read_only_primary is None:
                upgrade_schema(engine)
            else:
                check_schema_current(engine, read_only_primary)
            began = time.monotonic()
            walk = check_newest(engine.connect, key.public_key, program, verify_at_start_blocks)
            refuse_start(walk, program)
            service = NodeService(
                engine,
                program,
                key,
                account_secret,
                rules,
                sealer,
                clock,
                read_only_primary=read_only_primary,
                rotated_keys=rotated_keys,
                monotonic=monotonic,
            )
        except BaseException:
            engine.dispose()
            raise
        service.integrity.started(walk, time.monotonic() - began)
        log.info(
            "%s: the newest %d blocks (%d entries) verified with the node's key in %.2f s",
            program,
            walk.blocks,
            walk.entries,
            time.monotonic() - began,
        )
    except BaseException:
        if writer_lock is not None:
            writer_lock.release()
        raise
    if writer_lock is not None:
        service.on_close(writer_lock.release)
    return service


def check_schema_current(engine: Engine, primary: str) -> None:
    """FailedPrecondition unless the (standby's) schema is at this code's revision."""
    state = schema_state(engine)
    if state.current:
        return
    found = "no schema" if state.revision is None else f"schema revision {state.revision}"
    raise FailedPrecondition(
        f"a read-only process migrates nothing, and its database has {found} where this "
        f"version needs {state.head}: upgrade the primary ({primary}) first "
        "(coalition migrate on it, or start this version there) and let the standby replay it"
    )


def open_node(
    config: NodeConfig,
    *,
    clock: Callable[[], datetime] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> NodeService:
    """``open_service`` for ``config``, its keys read from their files."""
    return open_service(
        config.database_url,
        config.program,
        read_signing_key(config),
        read_account_secret(config.account_secret_path),
        config.rules,
        config.sealer,
        sqlite_synchronous=config.sqlite_synchronous,
        clock=clock,
        read_only_primary=config.primary if config.read_only else None,
        verify_at_start_blocks=config.integrity.verify_at_start_blocks,
        rotated_keys=rotated_key_loader(config),
        monotonic=monotonic,
    )


log = logging.getLogger("coalition.node")

STOP_GRACE_SECONDS = 5.0


class Feature(Protocol):
    """What every coalition feature offers the node (docs/coalition.md)."""

    def register(self, inbox: PartnerInbox) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def tls_files(coalition: CoalitionConfig, manifest: Manifest, program: str) -> TlsFiles:
    """The node's TLS files: the configured ones, else where ``tls-init`` writes them."""
    default = TlsFiles.for_program(manifest, program)
    return TlsFiles(
        ca_cert=coalition.tls_ca_path or default.ca_cert,
        cert=coalition.tls_cert_path or default.cert,
        key=coalition.tls_key_path or default.key,
    )


@dataclass(frozen=True)
class PartnerLinks:
    """How a node reaches its partners when not over mutual-TLS gRPC (the simulator's
    network): the transport of its partner messages and the ledger source its witness
    follows each partner through."""

    transport: PartnerTransport
    sources: Callable[[str], LedgerSource]


@dataclass(frozen=True)
class PartnerServer:
    """The running mutual-TLS partner server and the port it bound."""

    server: grpc.Server
    port: int


class CoalitionNode:
    """Every coalition feature of one node, wired to its service and to the partners."""

    def __init__(
        self,
        config: NodeConfig,
        service: NodeService,
        signing_key: SigningKey,
        *,
        clock: Callable[[], datetime] | None = None,
        manifest: Manifest | None = None,
        witness_backoff: tuple[float, float] | None = None,
        links: PartnerLinks | None = None,
    ) -> None:
        """``manifest``: the one ``config`` names, when the caller already loaded it.
        ``links`` (the simulator) replace the mutual-TLS gRPC transport and ledger
        sources; ``clock`` (tests) is every feature's clock, the outbox's included."""
        if config.coalition is None:
            raise FailedPrecondition(f"{config.program}'s configuration has no [coalition] table")
        if service.program != config.program:
            raise InvalidArgument("the service and the configuration name different programs")
        if signing_key.public_key != service.public_key:
            raise InvalidArgument("the signing key is not the service's ledger key")
        self.config = config
        self.settings = config.coalition
        self.service = service
        self.program = config.program
        self.manifest = manifest or Manifest.load(self.settings.manifest_path)
        try:
            self.info = self.manifest.partner(self.program)
        except NotFound:
            raise FailedPrecondition(
                f"{self.program} is not a partner in the manifest {self.manifest.path}"
            ) from None
        if self.manifest.public_key(self.program) != service.public_key:
            raise FailedPrecondition(
                f"the manifest's public key for {self.program} ({self.info.public_key_path}) "
                "is not this node's ledger key"
            )
        self.partner_address = self.settings.partner_grpc_address or self.info.partner_grpc
        self.tls = tls_files(self.settings, self.manifest, self.program)
        self.tls.read()  # fail at start, with the file's name, rather than at the first call
        self._key = signing_key
        self._witness_backoff = witness_backoff
        self._clock = clock
        self._links = links
        self.transport: PartnerTransport = (
            GrpcTransport(self.manifest, self.tls) if links is None else links.transport
        )
        self.client = PartnerClient(
            self.program, self.manifest, signing_key, self.transport, clock=clock
        )
        self.inbox = PartnerInbox(
            self.program, self.manifest, service.sequencer, signing_key, clock
        )
        self.features: list[Feature] = []
        self._build_features()
        for feature in self.features:
            feature.register(self.inbox)
        self._server: PartnerServer | None = None
        self._started: list[Feature] = []

    def _build_features(self) -> None:
        service, manifest, client = self.service, self.manifest, self.client
        self.agreements = Agreements(service, manifest, client)
        clock = self._clock
        self.conversions = Conversions(
            service,
            manifest,
            client,
            self.agreements,
            abort_after_s=self.settings.abort_after_s,
            wall_clock=None if clock is None else lambda: to_micros(clock()),
        )
        self.redemptions = Redemptions(service, manifest, client, self.agreements)
        self.settlement = Settlement(service, manifest, client)
        self.features += [self.agreements, self.conversions, self.redemptions, self.settlement]
        self.witness: Witness | None = None
        if self.settings.witness:
            backoff = self._witness_backoff or BACKOFF_S
            self.witness = Witness(
                service,
                manifest,
                client,
                sources=self._ledger_source if self._links is None else self._links.sources,
                key=self._key,
                backoff=backoff,
                clock=self._clock,
            )
            self.features.append(self.witness)

    def _ledger_source(self, program: str) -> LedgerSource:
        assert isinstance(self.transport, GrpcTransport)
        return GrpcLedgerSource(self.transport.channel(program))

    # --- life cycle -------------------------------------------------------------------

    @property
    def partner_port(self) -> int:
        if self._server is None:
            raise FailedPrecondition("the partner server is not running")
        return self._server.port

    def start(self) -> None:
        """Serve partners (mutual TLS), then start the features that send."""
        self.serve_partners()
        self.start_features()
        log.info(
            "%s joined coalition %r: partner gRPC (mutual TLS) %s:%d, partners %s",
            self.program,
            self.manifest.name,
            split_address(self.partner_address)[0],
            self.partner_port,
            ", ".join(p.program for p in self.manifest.others(self.program)),
        )

    def serve_partners(self) -> None:
        """Start the mutual-TLS partner server (port 0 binds a free one: ``partner_port``)."""
        if self._server is not None:
            raise FailedPrecondition("the partner server is already running")
        host, port = split_address(self.partner_address)
        reuse_port = self.config.reuse_port
        server, bound = serve_partner_grpc(
            self.inbox,
            self.tls,
            host,
            port,
            service=self.service,
            limits=self.config.limits,
            reuse_port=reuse_port,
        )
        self._server = PartnerServer(server, bound)

    def stop_serving_partners(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Take the partner server down (partners calling get PartnerUnavailable) after
        ``grace`` seconds for the calls and header streams in flight; the features keep
        running. ``serve_partners`` brings it back on the configured port."""
        if self._server is not None:
            self._server.server.stop(grace).wait()
            self._server = None

    def start_features(self) -> None:
        """Start every feature not started yet (the outbox delivers what is pending, the
        witness follows the partners); on a failure, stop everything again."""
        try:
            for feature in self.features:
                if feature not in self._started:
                    feature.start()
                    self._started.append(feature)
        except BaseException:
            self.stop()
            raise

    def stop_features(self) -> None:
        """Stop the started features in reverse order (the outbox and the witness stop
        sending); idempotent."""
        while self._started:
            feature = self._started.pop()
            try:
                feature.stop()
            except Exception:
                log.exception("stopping %s failed", type(feature).__name__)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop sending (``stop_features``), then the partner server (``grace``: see
        ``stop_serving_partners``); idempotent. The caller closes the service afterwards.
        """
        self.stop_features()
        self.stop_serving_partners(grace)
        self.client.close()

    # --- the member/operator API ------------------------------------------------------

    def routers(self, authenticator: Authenticator) -> Sequence[APIRouter]:
        """The features' HTTP route groups, for ``api.http.app.create_app``."""
        routers = [
            conversions_router(self.conversions, authenticator),
            agreements_router(self.agreements, authenticator),
            redemptions_router(self.redemptions, authenticator),
            settlement_router(self.settlement, authenticator),
        ]
        if self.witness is not None:
            routers.append(witness_router(self.witness, authenticator))
        return routers

    def servicers(self, authenticator: Authenticator) -> Sequence[AddServicer]:
        """The features' gRPC servicers, for ``api.grpc.server.serve_grpc``."""
        conversions, agreements = self.conversions, self.agreements
        redemptions, settlement = self.redemptions, self.settlement
        adders: list[AddServicer] = [
            lambda server: add_conversions_servicer(server, conversions, authenticator),
            lambda server: add_agreements_servicer(server, agreements, authenticator),
            lambda server: add_redemptions_servicer(server, redemptions, authenticator),
            lambda server: add_settlement_servicer(server, settlement, authenticator),
        ]
        if self.witness is not None:
            witness = self.witness
            adders.append(lambda server: add_witness_servicer(server, witness, authenticator))
        return adders


# --- a whole node -----------------------------------------------------------------------


class Node:
    """One brand's node as ``coalition run`` runs it: the service and, for a partner of a
    coalition, its ``CoalitionNode``. ``start()`` begins sealing, then serves partners and
    starts the features; ``close()`` stops them, then closes the service (which seals
    what is pending); the caller MUST close a node it built, started or not."""

    def __init__(self, config: NodeConfig, service: NodeService, coalition: CoalitionNode | None):
        self.config = config
        self.service = service
        self.coalition = coalition

    @property
    def program(self) -> str:
        return self.config.program

    def start(self) -> None:
        if self.config.read_only:
            return
        self.service.start()
        if self.coalition is not None:
            self.coalition.start()

    def close(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Idempotent; ``grace`` is the partner server's (``CoalitionNode.stop``)."""
        try:
            if self.coalition is not None:
                self.coalition.stop(grace)
        finally:
            self.service.close()

    def routers(self, authenticator: Authenticator) -> Sequence[APIRouter]:
        return () if self.coalition is None else self.coalition.routers(authenticator)

    def servicers(self, authenticator: Authenticator) -> Sequence[AddServicer]:
        return () if self.coalition is None else self.coalition.servicers(authenticator)


def build_node(
    config: NodeConfig,
    *,
    clock: Callable[[], datetime] | None = None,
    witness_backoff: tuple[float, float] | None = None,
    monotonic: Callable[[], float] | None = None,
    links: PartnerLinks | None = None,
) -> Node:
    """The node of ``config``, built but not started: store, service, and the coalition
    features when ``config`` has a ``[coalition]`` table. ``clock`` and
    ``witness_backoff`` (tests) replace the wall clock and the witness's retry delays;
    ``monotonic`` and ``links`` (the simulator) the lease's monotonic clock and the
    partner transport and ledger sources (``PartnerLinks``)."""
    # A bad manifest is refused before the database is opened (or created).
    manifest = None if config.coalition is None else Manifest.load(config.coalition.manifest_path)
    service = open_node(config, clock=clock, monotonic=monotonic)
    try:
        coalition = (
            None
            if config.coalition is None
            else CoalitionNode(
                config,
                service,
                service.signing_key,
                clock=clock,
                manifest=manifest,
                witness_backoff=witness_backoff,
                links=links,
            )
        )
    except BaseException:
        service.close()
        raise
    return Node(config, service, coalition)


@dataclass
class MemberServers:
    """The running member/operator transports of one node and the ports they bound."""

    grpc: grpc.Server
    grpc_port: int
    http: uvicorn.Server
    http_thread: threading.Thread
    http_port: int

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop taking calls; in-flight calls get ``grace`` seconds."""
        self.grpc.stop(grace).wait()
        self.http.should_exit = True
        self.http_thread.join(grace)


def member_app(node: Node, authenticator: Authenticator) -> FastAPI:
    """The node's REST app: the service's routes, every feature's and the explorer."""
    return create_app(node.service, authenticator, node.routers(authenticator), node.coalition)


def serve_member_api(
    node: Node,
    authenticator: Authenticator,
    grpc_address: str | None = None,
    http_address: str | None = None,
) -> MemberServers:
    """Serve ``node``'s member/operator API over gRPC and REST, every feature's servicers
    and routes included, at the given addresses (default: the configuration's; port 0
    binds a free port; ``config.reuse_port`` shares the ports with the node's other
    processes; ``config.tls`` serves both over TLS only). The caller MUST ``stop()`` the
    servers before closing the node."""
    grpc_host, grpc_port = split_address(grpc_address or node.config.grpc_address)
    http_host, http_port = split_address(http_address or node.config.http_address)
    reuse_port = node.config.reuse_port
    tls = node.config.tls
    pem = None if tls is None else read_server_tls(tls)
    grpc_server, grpc_bound = serve_grpc(
        node.service,
        authenticator,
        grpc_host,
        grpc_port,
        extra=node.servicers(authenticator),
        limits=node.config.limits,
        reuse_port=reuse_port,
        tls=pem,
    )
    try:
        http_server, http_thread, http_bound = serve_http(
            member_app(node, authenticator),
            http_host,
            http_port,
            reuse_port=reuse_port,
            tls=None if tls is None else (tls.cert_path, tls.key_path),
        )
    except BaseException:
        grpc_server.stop(0).wait()
        raise
    return MemberServers(grpc_server, grpc_bound, http_server, http_thread, http_bound)
