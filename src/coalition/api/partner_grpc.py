# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""The partner gRPC server: ``coalition.v1.Partner`` (and ``Ledger`` reads) over mutual TLS.

Only holders of a certificate from the coalition CA get past the handshake; the
certificate's CN names the calling program, which ``PartnerInbox.handle`` compares with
the message's signer. Partners read ``Ledger`` (e.g. ``WatchHeaders`` for witnessing)
as auditors, authenticated by their certificate instead of an API key.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coalition.api.errors import grpc_status
from coalition.api.grpc_server import LEDGER_SERVICE, LedgerServicer
from coalition.errors import CoalitionError, PermissionDenied, Unauthenticated
from coalition.ledger.envelope import SignedMessage
from coalition.node.auth import Action, Authenticator, Principal, Role
from coalition.node.manifest import Manifest
from coalition.node.partners import MAX_MESSAGE_BYTES, PartnerInbox
from coalition.node.service import NodeService
from coalition.ops.tls import TlsFiles
from coalition.v1 import ledger_pb2_grpc, partner_pb2, partner_pb2_grpc

log = logging.getLogger(__name__)
refusals = logging.getLogger("coalition.partners")

PARTNER_SERVICE = partner_pb2.DESCRIPTOR.services_by_name["Partner"].full_name


def peer_program(context: grpc.ServicerContext) -> str | None:
    """The program named by the TLS client certificate's CN, or None without one."""
    # grpc-stubs types each value as bytes; gRPC gives a list of bytes per property name.
    names: list[bytes] = context.auth_context().get("x509_common_name") or []  # type: ignore[assignment]
    if len(names) != 1:
        return None
    try:
        return bytes(names[0]).decode("ascii")
    except UnicodeDecodeError:
        return None


def _partner_of(context: grpc.ServicerContext, manifest: Manifest) -> str:
    """The calling partner's program id, or Unauthenticated (logged)."""
    program = peer_program(context)
    if program is None:
        error = Unauthenticated("the partner API needs a coalition TLS client certificate")
    elif program not in manifest.programs:
        error = Unauthenticated(f"TLS client {program!r} is not a partner in the manifest")
    else:
        return program
    refusals.warning("refused a call from %s: %s", context.peer(), error)
    raise error


class PartnerServicer(partner_pb2_grpc.PartnerServicer):
    """``coalition.v1.Partner``: hands every message to the inbox with its TLS peer."""

    def __init__(self, inbox: PartnerInbox) -> None:
        self._inbox = inbox

    def Call(
        self, request: partner_pb2.SignedMessage, context: grpc.ServicerContext
    ) -> partner_pb2.SignedMessage:
        try:
            peer = _partner_of(context, self._inbox.manifest)
            msg = SignedMessage(bytes(request.envelope), bytes(request.signature))
            reply = self._inbox.handle(msg, peer)
        except CoalitionError as exc:
            context.abort(grpc_status(exc), str(exc))
        except Exception:
            log.exception("unexpected error handling a partner message")
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the partner's node log")
        return partner_pb2.SignedMessage(envelope=reply.envelope, signature=reply.signature)


class PartnerLedgerServicer(LedgerServicer):
    """``coalition.v1.Ledger`` for partners: the TLS certificate stands in for an API key,
    and a partner may do what an auditor may (read-only)."""

    def __init__(self, service: NodeService, manifest: Manifest) -> None:
        super().__init__(service, Authenticator([]))
        self._manifest = manifest

    def _allow(
        self, context: grpc.ServicerContext, action: Action, member_id: str | None = None
    ) -> Principal:
        program = _partner_of(context, self._manifest)
        principal = Principal(f"partner:{program}", Role.AUDITOR)
        try:
            Authenticator.authorize(principal, action, member_id)
        except PermissionDenied:
            raise PermissionDenied(f"partner {program} may only read the ledger") from None
        return principal


def serve_partner_grpc(
    inbox: PartnerInbox,
    tls: TlsFiles,
    host: str = "127.0.0.1",
    port: int = 0,
    service: NodeService | None = None,
    max_workers: int = 16,
) -> tuple[grpc.Server, int]:
    """Start the mutual-TLS partner server; return it with its bound port.

    With the node's ``service`` it also serves ``Ledger`` to partners. The caller MUST
    ``server.stop(grace)`` it; each open WatchHeaders stream holds a worker, so size
    ``max_workers`` for the partners.
    """
    ca, cert, key = tls.read()
    credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a port in use is an error, never a shared port
        ],
    )
    partner_pb2_grpc.add_PartnerServicer_to_server(PartnerServicer(inbox), server)
    served = ["", PARTNER_SERVICE]
    if service is not None:
        ledger = PartnerLedgerServicer(service, inbox.manifest)
        ledger_pb2_grpc.add_LedgerServicer_to_server(ledger, server)
        served.append(LEDGER_SERVICE)
    checker = health.HealthServicer()
    for name in served:
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    bound = server.add_secure_port(f"{host}:{port}", credentials)
    if bound == 0:
        raise OSError(f"cannot bind the partner gRPC server to {host}:{port}")
    server.start()
    return server, bound
