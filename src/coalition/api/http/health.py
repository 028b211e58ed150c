"""``GET /healthz``: liveness and log size, without authentication (for load balancers
and the process harness's readiness check). With several processes per node it also
says which process answered (``pid``) and whether it holds the node's lease and so seals
(``sealer``); ``log_size`` is the sealed size of the whole log, whichever process sealed.
A process against a hot standby says so (``read_only``) and names where writes go
(``primary``; null for a writing process), so a load balancer can route writes away.

``integrity`` is what this process found checking its own ledger (``node.integrity``):
the start check, the scrub's progress, the faults found with the damaged heights, and
the counters ``faults_found_total`` and ``answers_refused_total``; ``status`` is then
``damaged`` instead of ``ok`` (the answer stays 200: the process is alive and serves
everything it can still prove)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from coalition.node.service import NodeService


class HealthOut(BaseModel):
    status: str
    program: str
    log_size: int
    pid: int
    sealer: bool
    read_only: bool
    primary: str | None
    integrity: dict[str, Any]


def health_router(service: NodeService) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness and log size")
    def healthz() -> HealthOut:
        integrity = service.integrity.to_json()
        return HealthOut(
            status="damaged" if integrity["status"] == "damaged" else "ok",
            program=service.program,
            log_size=service.ledger.log_size(),
            pid=os.getpid(),
            sealer=service.leadership.held(),
            read_only=service.read_only,
            primary=service.primary,
            integrity=integrity,
        )

    return router
