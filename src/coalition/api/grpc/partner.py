# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""Node to node over mutual TLS: the partner server (``coalition.v1.Partner``, and
``Ledger`` reads for partners) and ``GrpcTransport``, the partner transport that calls it.

Only holders of a certificate from the coalition CA get past the handshake; the
certificate's CN names the calling program, which ``PartnerInbox.handle`` compares with
the message's signer. Every call is then checked against the CA's revocation list
(``ops.tls.RevocationList``), so a revoked certificate is refused at its first call;
the server presents, and the transport dials with, the node's renewed certificate
within ``ops.tls.CHECK_EVERY_S`` of the files changing (``ops.tls.NodeTls``). Partners
read ``Ledger`` (e.g. ``WatchHeaders`` for witnessing) as auditors, authenticated by
their certificate instead of an API key.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import Any

import grpc

from coalition.api.errors import error_kind, grpc_abort
from coalition.api.grpc.decoding import DecodeRequests
from coalition.api.grpc.health import add_health
from coalition.api.grpc.ledger import LEDGER_SERVICE, LedgerServicer
from coalition.api.grpc.streams import LimitStreams
from coalition.errors import CoalitionError, PartnerUnavailable, PermissionDenied, Unauthenticated
from coalition.ledger.envelope import SignedMessage
from coalition.node.auth import Action, Authenticator, Principal, Role
from coalition.node.limits import (
    DEFAULT_LIMITS,
    UNARY_WORKERS,
    Limits,
    RequestRates,
    StreamSlots,
    rates_for,
)
from coalition.node.manifest import Manifest
from coalition.node.partners import MAX_MESSAGE_BYTES, PartnerInbox
from coalition.node.service import NodeService
from coalition.ops.tls import NodeTls, RevocationList, TlsFiles
from coalition.v1 import ledger_pb2_grpc, partner_pb2, partner_pb2_grpc

log = logging.getLogger(__name__)
refusals = logging.getLogger("coalition.partners")

PARTNER_SERVICE = partner_pb2.DESCRIPTOR.services_by_name["Partner"].full_name
_CHANNEL_LIMITS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

# ---------------------------------------------------------------------------- serving


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


def partner_caller(context: grpc.ServicerContext) -> str | None:
    """A call's caller for the stream limits: its certificate's program (None without)."""
    program = peer_program(context)
    return None if program is None else f"partner {program!r}"


def _peer_certificate(context: grpc.ServicerContext) -> bytes | None:
    certificates: list[bytes] = context.auth_context().get("x509_pem_cert") or []  # type: ignore[assignment]
    return bytes(certificates[0]) if len(certificates) == 1 else None


def _partner_of(
    context: grpc.ServicerContext, manifest: Manifest, revocations: RevocationList | None
) -> str:
    """The calling partner's program id, or Unauthenticated (logged): no certificate,
    not a partner, or a certificate the CA revoked."""
    program = peer_program(context)
    if program is None:
        error = Unauthenticated("the partner API needs a coalition TLS client certificate")
    elif program not in manifest.programs:
        error = Unauthenticated(f"TLS client {program!r} is not a partner in the manifest")
    elif revocations is None:
        return program
    else:
        certificate = _peer_certificate(context)
        try:
            if certificate is None:
                raise Unauthenticated(f"no TLS client certificate of {program!r} to check")
            revocations.check(certificate, program)
        except Unauthenticated as exc:
            error = exc
        else:
            return program
    refusals.warning("refused a call from %s: %s", context.peer(), error)
    raise error


class PartnerAuthorizer:
    """Authorizes by the TLS client certificate: a partner in the manifest may do what an
    auditor may (read the ledger), nothing more, within its rate (``rates``)."""

    def __init__(
        self,
        manifest: Manifest,
        rates: RequestRates | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self._manifest = manifest
        self._rates = rates
        self._revocations = revocations

    def __call__(
        self, context: grpc.ServicerContext, action: Action, member_id: str | None = None
    ) -> Principal:
        program = _partner_of(context, self._manifest, self._revocations)
        principal = Principal(f"partner:{program}", Role.AUDITOR)
        try:
            Authenticator.authorize(principal, action, member_id)
        except PermissionDenied:
            raise PermissionDenied(f"partner {program} may only read the ledger") from None
        if self._rates is not None:
            self._rates.take(f"partner {program!r}")
        return principal


class PartnerServicer(partner_pb2_grpc.PartnerServicer):
    """``coalition.v1.Partner``: hands every message to the inbox with its TLS peer."""

    def __init__(
        self,
        inbox: PartnerInbox,
        rates: RequestRates | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self._inbox = inbox
        self._rates = rates
        self._revocations = revocations

    def Call(
        self, request: partner_pb2.SignedMessage, context: grpc.ServicerContext
    ) -> partner_pb2.SignedMessage:
        try:
            peer = _partner_of(context, self._inbox.manifest, self._revocations)
            if self._rates is not None:
                self._rates.take(f"partner {peer!r}")
            msg = SignedMessage(bytes(request.envelope), bytes(request.signature))
            reply = self._inbox.handle(msg, peer)
        except CoalitionError as exc:
            grpc_abort(context, exc)
        except Exception:
            log.exception("unexpected error handling a partner message")
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the partner's node log")
        return partner_pb2.SignedMessage(envelope=reply.envelope, signature=reply.signature)


def _reloading_server_credentials(own: NodeTls) -> grpc.ServerCredentials:
    """Mutual-TLS server credentials that present the node's renewed certificate (and
    trust a renewed CA file) from the first handshake after ``own`` takes it."""

    def configuration(material: tuple[bytes, bytes, bytes]) -> Any:
        ca, cert, key = material
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    version, material = own.current()
    served = [version]

    def fetch() -> Any:  # gRPC calls it before each handshake; None keeps the current one
        version, material = own.current()
        if version == served[0]:
            return None
        served[0] = version
        return configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        configuration(material), fetch, require_client_authentication=True
    )


def serve_partner_grpc(
    inbox: PartnerInbox,
    tls: TlsFiles,
    host: str = "127.0.0.1",
    port: int = 0,
    service: NodeService | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    reuse_port: bool = False,
) -> tuple[grpc.Server, int]:
    """Start the mutual-TLS partner server; return it with its bound port.

    With the node's ``service`` it also serves ``Ledger`` to partners. The caller MUST
    ``server.stop(grace)`` it. Streams (a partner's WatchHeaders) are bounded by
    ``limits``, in all and per partner certificate, so ``Partner/Call`` always has
    ``UNARY_WORKERS`` workers; each partner's calls and ledger reads share one token
    bucket of ``limits``' rate. A port in use is an error unless ``reuse_port`` (the
    processes of one node share it with SO_REUSEPORT, as ``serve_grpc``).
    """
    own = NodeTls(tls)
    revocations = RevocationList(tls.ca_cert)
    credentials = _reloading_server_credentials(own)
    slots = StreamSlots(limits.max_streams, limits.max_streams_per_caller)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=UNARY_WORKERS + limits.max_streams),
        interceptors=[LimitStreams(slots, partner_caller), DecodeRequests()],
        options=[*_CHANNEL_LIMITS, ("grpc.so_reuseport", int(reuse_port))],
    )
    rates = rates_for(limits)
    partner_pb2_grpc.add_PartnerServicer_to_server(
        PartnerServicer(inbox, rates, revocations), server
    )
    served = [PARTNER_SERVICE]
    if service is not None:
        authorizer = PartnerAuthorizer(inbox.manifest, rates, revocations)
        ledger = LedgerServicer(service.ledger, authorizer)
        ledger_pb2_grpc.add_LedgerServicer_to_server(ledger, server)
        served.append(LEDGER_SERVICE)
    add_health(server, served)
    bound = server.add_secure_port(f"{host}:{port}", credentials)
    if bound == 0:
        raise OSError(f"cannot bind the partner gRPC server to {host}:{port}")
    server.start()
    return server, bound


# ---------------------------------------------------------------------------- calling


def error_from_status(code: grpc.StatusCode, details: str) -> CoalitionError:
    """The CoalitionError for a partner's gRPC status (the inverse of ``api.errors``):
    the refusal it stands for, else PartnerUnavailable."""
    return (error_kind(code) or PartnerUnavailable)(details)


class GrpcTransport:
    """The partner transport of a running node (``node.partners.PartnerTransport``):
    mutual-TLS gRPC to the partners' ``partner_grpc`` addresses, one channel each."""

    def __init__(self, manifest: Manifest, tls: TlsFiles) -> None:
        self._manifest = manifest
        self._tls = NodeTls(tls)
        self._version, material = self._tls.current()
        self._credentials = self._credentials_of(material)
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _credentials_of(material: tuple[bytes, bytes, bytes]) -> grpc.ChannelCredentials:
        ca, cert, key = material
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def _renewed(self) -> list[grpc.Channel]:
        """With the lock held: when the node's TLS files were renewed, dial with the new
        ones from now on; returns the channels made with the old ones, to close."""
        version, material = self._tls.current()
        if version == self._version:
            return []
        self._version, self._credentials = version, self._credentials_of(material)
        stale, self._channels = list(self._channels.values()), {}
        return stale

    def channel(self, program: str) -> grpc.Channel:
        """The cached channel to ``program``'s partner server (its certificate must name
        it), dialled again with the node's renewed certificate once it is taken."""
        target = self._manifest.partner(program).partner_grpc
        with self._lock:
            stale = self._renewed()
            for old in stale:  # calls on them fail once and are retried by their callers
                old.close()
            channel = self._channels.get(program)
            if channel is None:
                channel = grpc.secure_channel(
                    target,
                    self._credentials,
                    options=[
                        ("grpc.ssl_target_name_override", program),
                        *_CHANNEL_LIMITS,
                        # a partner that restarts is dialled again within a second, not
                        # after gRPC's default backoff of up to two minutes
                        ("grpc.initial_reconnect_backoff_ms", 200),
                        ("grpc.min_reconnect_backoff_ms", 200),
                        ("grpc.max_reconnect_backoff_ms", 1000),
                    ],
                )
                self._channels[program] = channel
            return channel

    def send(self, to: str, msg: SignedMessage, timeout: float) -> SignedMessage:
        stub = partner_pb2_grpc.PartnerStub(self.channel(to))
        request = partner_pb2.SignedMessage(envelope=msg.envelope, signature=msg.signature)
        try:
            reply = stub.Call(request, timeout=timeout)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            error = error_from_status(code, f"{to}: {details}")
            if isinstance(error, PartnerUnavailable):
                error = PartnerUnavailable(f"{to} is unavailable ({code.name}): {details}")
            raise error from None
        return SignedMessage(bytes(reply.envelope), bytes(reply.signature))

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
