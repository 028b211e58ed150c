"""The witness's gRPC ledger source hands the follower core errors only: a refused read,
an unreachable partner and a cancelled stream all arrive as ``LedgerSourceFailed`` (a
``PartnerUnavailable``) with the status text the follower shows, never as grpc's own."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest

from coalition.api.grpc.ledger_source import GrpcLedgerSource
from coalition.api.grpc.server import serve_grpc
from coalition.errors import PartnerUnavailable
from coalition.node.auth import Authenticator
from coalition.node.features.witness import LedgerSourceFailed
from coalition.node.service import NodeService


@pytest.fixture
def served(node: NodeService, authenticator: Authenticator) -> Iterator[str]:
    """The node's member gRPC API: a source without credentials is refused there."""
    server, bound = serve_grpc(node, authenticator, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{bound}"
    finally:
        server.stop(None).wait(10)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_refused_read_or_stream_is_a_source_failure(served: str) -> None:
    with grpc.insecure_channel(served) as channel:
        source = GrpcLedgerSource(channel, timeout=5)
        with pytest.raises(LedgerSourceFailed) as refused:
            source.headers(0, 10)
        assert str(refused.value) == f"UNAUTHENTICATED: {refused.value.details}"
        assert refused.value.details
        with pytest.raises(LedgerSourceFailed) as streamed:
            next(source.watch(-1))
        assert str(streamed.value).startswith("UNAUTHENTICATED: ")
        source.close()


def test_an_unreachable_partner_is_partner_unavailable() -> None:
    with grpc.insecure_channel(f"127.0.0.1:{_closed_port()}") as channel:
        source = GrpcLedgerSource(channel, timeout=5)
        with pytest.raises(PartnerUnavailable) as unreachable:
            source.consistency(0, 1)
        assert str(unreachable.value).startswith("UNAVAILABLE: ")


def test_a_closed_source_streams_nothing() -> None:
    with grpc.insecure_channel(f"127.0.0.1:{_closed_port()}") as channel:
        source = GrpcLedgerSource(channel)
        source.close()
        assert list(source.watch(-1)) == []
