"""``GET /healthz``: liveness and log size, without authentication (for load balancers
and the process harness's readiness check). With several processes per node it also
says which process answered (``pid``) and whether it holds the node's lease and so seals
(``sealer``); ``log_size`` is the sealed size of the whole log, whichever process sealed.
A process against a hot standby says so (``read_only``) and names where writes go
(``primary``; null for a writing process), so a load balancer can route writes away."""

from __future__ import annotations

import os

from fastapi import APIRouter
from pydantic import BaseModel

from coalition.api.http.responses import PUBLIC
from coalition.node.service import NodeService


class HealthOut(BaseModel):
    status: str
    program: str
    log_size: int
    pid: int
    sealer: bool
    read_only: bool
    primary: str | None


def health_router(service: NodeService) -> APIRouter:
    router = APIRouter(tags=["health"], responses=PUBLIC)

    @router.get("/healthz", summary="Liveness and log size")
    def healthz() -> HealthOut:
        header = service.ledger.latest_header()
        log_size = 0 if header is None else header.header.log_size
        return HealthOut(
            status="ok",
            program=service.program,
            log_size=log_size,
            pid=os.getpid(),
            sealer=service.leadership.held(),
            read_only=service.read_only,
            primary=service.primary,
        )

    return router
