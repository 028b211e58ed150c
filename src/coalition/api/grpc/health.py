"""The standard ``grpc.health.v1.Health`` service: what load balancers and the process
harness ask before they send calls."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def add_health(server: grpc.Server, services: Iterable[str]) -> None:
    """Register Health on ``server``, SERVING for the whole server ("") and for each of
    ``services`` (full names, e.g. ``coalition.v1.Ledger``)."""
    checker = health.HealthServicer()
    for name in ("", *services):
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
