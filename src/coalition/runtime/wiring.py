"""A node's part in the coalition: partner inbox and client, features, the partner server.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import grpc
from fastapi import APIRouter

from coalition.api.grpc.agreements import add_agreements_servicer
from coalition.api.grpc.conversions import add_conversions_servicer
from coalition.api.grpc.partner import GrpcTransport, serve_partner_grpc
from coalition.api.grpc.redemptions import add_redemptions_servicer
from coalition.api.grpc.server import AddServicer
from coalition.api.grpc.settlement import add_settlement_servicer
from coalition.api.grpc.witness import add_witness_servicer
from coalition.api.http.agreements import agreements_router
from coalition.api.http.conversions import conversions_router
from coalition.api.http.redemptions import redemptions_router
from coalition.api.http.settlement import settlement_router
from coalition.api.http.witness import witness_router
from coalition.errors import FailedPrecondition, InvalidArgument, NotFound
from coalition.ledger.keys import SigningKey
from coalition.node.auth import Authenticator
from coalition.node.config import CoalitionConfig, NodeConfig, split_address
from coalition.node.features.agreements import Agreements
from coalition.node.features.conversions import Conversions
from coalition.node.features.redemptions import Redemptions
from coalition.node.features.settlement import Settlement
from coalition.node.features.witness import Witness
from coalition.node.manifest import Manifest
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.service import NodeService
from coalition.ops.keyfiles import read_account_secret, read_signing_key
from coalition.ops.tls import TlsFiles
from coalition.store.db import ensure_sqlite_folder, make_engine
from coalition.store.schema import upgrade_schema


def open_node(config: NodeConfig) -> NodeService:
    """A ready service (SQLite folder created if missing, schema upgraded to this code's
    revision under the schema lock); call ``start()`` to begin sealing."""
    ensure_sqlite_folder(config.database_url)
    engine = make_engine(config.database_url, sqlite_synchronous=config.sqlite_synchronous)
    upgrade_schema(engine)
    return NodeService(
        engine,
        config.program,
        read_signing_key(config),
        read_account_secret(config.account_secret_path),
        config.rules,
        config.sealer,
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
    ) -> None:
        """``manifest``: the one ``config`` names, when the caller already loaded it."""
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
        transport = GrpcTransport(self.manifest, self.tls)
        self.client = PartnerClient(
            self.program, self.manifest, signing_key, transport, clock=clock
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
        self.conversions = Conversions(
            service, manifest, client, self.agreements, abort_after_s=self.settings.abort_after_s
        )
        self.redemptions = Redemptions(service, manifest, client, self.agreements)
        self.settlement = Settlement(service, manifest, client)
        self.features += [self.agreements, self.conversions, self.redemptions, self.settlement]
        self.witness = (
            Witness(service, manifest, client, key=self._key) if self.settings.witness else None
        )
        if self.witness is not None:
            self.features.append(self.witness)

    # --- life cycle -------------------------------------------------------------------

    @property
    def partner_port(self) -> int:
        if self._server is None:
            raise FailedPrecondition("the partner server is not running")
        return self._server.port

    def start(self) -> None:
        """Serve partners (mutual TLS), then start the features that send."""
        if self._server is not None:
            raise FailedPrecondition("the coalition node is already started")
        host, port = split_address(self.partner_address)
        server, bound = serve_partner_grpc(self.inbox, self.tls, host, port, service=self.service)
        self._server = PartnerServer(server, bound)
        try:
            for feature in self.features:
                feature.start()
                self._started.append(feature)
        except BaseException:
            self.stop()
            raise
        log.info(
            "%s joined coalition %r: partner gRPC (mutual TLS) %s:%d, partners %s",
            self.program,
            self.manifest.name,
            host,
            bound,
            ", ".join(p.program for p in self.manifest.others(self.program)),
        )

    def stop(self) -> None:
        """Stop sending (features in reverse order), then the partner server; idempotent.

        The caller closes the service afterwards.
        """
        while self._started:
            feature = self._started.pop()
            try:
                feature.stop()
            except Exception:
                log.exception("stopping %s failed", type(feature).__name__)
        if self._server is not None:
            self._server.server.stop(STOP_GRACE_SECONDS).wait()
            self._server = None
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
