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
everything it can still prove).

While the node's storage fails (a full disk, a read-only or damaged database: see
``store.failures``) the node stays up and says so: ``status`` is ``degraded`` and
``storage`` names the problem and since when; both clear once a write succeeds again.
It answers 200 even when the database cannot be read at all (``log_size`` is then the
size this process last saw sealed): the process is alive, its storage is not."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from coalition.api.http.responses import PUBLIC
from coalition.errors import CorruptDatabase, StorageUnavailable
from coalition.node.service import NodeService


class StorageOut(BaseModel):
    problem: str
    failing_since: str
    last_failure: str


class HealthOut(BaseModel):
    status: str
    storage: StorageOut | None
    program: str
    log_size: int
    pid: int
    sealer: bool
    read_only: bool
    primary: str | None
    integrity: dict[str, Any]


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def health_router(service: NodeService) -> APIRouter:
    router = APIRouter(tags=["health"], responses=PUBLIC)

    @router.get("/healthz", summary="Liveness and log size")
    def healthz() -> HealthOut:
        try:
            log_size = service.ledger.log_size()
        except (StorageUnavailable, CorruptDatabase):
            log_size = service.sealer.log_size  # as this process last saw it sealed
        problem = service.storage.problem()
        storage = None
        if problem is not None:
            storage = StorageOut(
                problem=problem.message,
                failing_since=_utc(problem.since),
                last_failure=_utc(problem.last),
            )
        integrity = service.integrity.to_json()
        status = "ok" if storage is None else "degraded"
        return HealthOut(
            status="damaged" if integrity["status"] == "damaged" else status,
            storage=storage,
            program=service.program,
            log_size=log_size,
            pid=os.getpid(),
            sealer=service.leadership.held(),
            read_only=service.read_only,
            primary=service.primary,
            integrity=integrity,
        )

    return router
