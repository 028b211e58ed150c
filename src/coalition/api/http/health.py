"""``GET /healthz``: liveness and log size, without authentication (for load balancers
and the process harness's readiness check)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from coalition.node.service import NodeService


class HealthOut(BaseModel):
    status: str
    program: str
    log_size: int


def health_router(service: NodeService) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness and log size")
    def healthz() -> HealthOut:
        header = service.ledger.latest_header()
        log_size = 0 if header is None else header.header.log_size
        return HealthOut(status="ok", program=service.program, log_size=log_size)

    return router
