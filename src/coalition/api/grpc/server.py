"""``serve_grpc``: the member/operator gRPC server (API keys; plaintext, or TLS with
``[tls]``): Points, Ledger, ApiKeys and Health, plus the coalition features' servicers
the wiring passes in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures

import grpc

from coalition.api.grpc.api_keys import KEYS_SERVICE, add_keys_servicer
from coalition.api.grpc.decoding import DecodeRequests
from coalition.api.grpc.health import add_health
from coalition.api.grpc.kit import ApiKeyAuthorizer
from coalition.api.grpc.ledger import LEDGER_SERVICE, LedgerServicer
from coalition.api.grpc.points import POINTS_SERVICE, PointsServicer
from coalition.api.grpc.streams import CallerOf, LimitStreams
from coalition.errors import Unauthenticated
from coalition.node.auth import Authenticator
from coalition.node.limits import DEFAULT_LIMITS, UNARY_WORKERS, Limits, StreamSlots
from coalition.node.service import NodeService
from coalition.v1 import ledger_pb2_grpc, points_pb2_grpc

AddServicer = Callable[[grpc.Server], None]
"""Adds one feature's servicer to the member/operator server."""


def add_servicers(server: grpc.Server, service: NodeService, authenticator: Authenticator) -> None:
    """Register Points, Ledger, ApiKeys and the standard health service (all SERVING)."""
    authorize = ApiKeyAuthorizer(authenticator)
    points_pb2_grpc.add_PointsServicer_to_server(PointsServicer(service.points, authorize), server)
    ledger_pb2_grpc.add_LedgerServicer_to_server(LedgerServicer(service.ledger, authorize), server)
    add_keys_servicer(server, service.api_keys, authenticator, service.now)
    add_health(server, (POINTS_SERVICE, LEDGER_SERVICE, KEYS_SERVICE))


def api_key_caller(authenticator: Authenticator) -> CallerOf:
    """A call's caller for the stream limits: its API key's name (None for no or an
    unknown key, which the call's own ``allow`` refuses at once)."""

    def caller_of(context: grpc.ServicerContext) -> str | None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        try:
            return f"API key {authenticator.authenticate(metadata.get('authorization')).name!r}"
        except Unauthenticated:
            return None

    return caller_of


def serve_grpc(
    service: NodeService,
    authenticator: Authenticator,
    host: str = "127.0.0.1",
    port: int = 0,
    extra: Sequence[AddServicer] = (),
    *,
    limits: Limits = DEFAULT_LIMITS,
    reuse_port: bool = False,
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server and return it with its bound port (``port=0``: any free one):
    plaintext, or TLS with ``tls`` = (certificate chain, private key) PEM bytes. The
    caller MUST ``server.stop(grace)`` it. Streaming calls are bounded by ``limits``
    (``streams.LimitStreams``), so ``UNARY_WORKERS`` workers always serve unary calls and
    the health check. ``extra`` adds the coalition features' servicers.

    By default a port in use is an error, never a shared port. ``reuse_port`` (the
    processes of one node, ``coalition run --processes``) sets SO_REUSEPORT, so every
    process of the node binds the same port and the kernel spreads connections over them.
    """
    slots = StreamSlots(limits.max_streams, limits.max_streams_per_caller)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=UNARY_WORKERS + limits.max_streams),
        interceptors=[LimitStreams(slots, api_key_caller(authenticator)), DecodeRequests()],
        options=[("grpc.so_reuseport", int(reuse_port))],
    )
    add_servicers(server, service, authenticator)
    for add in extra:
        add(server)
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        chain, key = tls
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, chain)]))
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    server.start()
    return server, bound
