"""Witnessing over HTTP: who cosigned this node's headers, the evidence of partners'
equivocations and forks, and how far each partner's chain was verified. Every route
needs a key that may read the ledger (the same role as headers and proofs)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from coalition.api.http.deps import guard, link_next
from coalition.api.http.fields import HeightPath, OptionalProgramQuery
from coalition.api.http.responses import PAGED, READ
from coalition.ledger.canonical import MAX_SAFE_INTEGER
from coalition.node.auth import Action, Authenticator
from coalition.node.features.witness import MAX_STATUSES, Witness, WitnessStatus
from coalition.node.paging import MAX_PAGE


class CosignatureOut(BaseModel):
    witness: str
    timestamp: int
    cosignature: str


class WitnessStatusOut(BaseModel):
    height: int
    header_hash: str
    checkpoint: str
    note: str
    cosigners: list[CosignatureOut]
    quorum: int
    witnessed: bool


class EquivocationOut(BaseModel):
    id: int
    program: str
    height: int
    kind: str
    reason: str
    first: dict[str, Any]
    second: dict[str, Any]
    detected_at: str


class FollowerOut(BaseModel):
    program: str
    verified_height: int | None
    halted: bool
    last_error: str | None


def _status_out(status: WitnessStatus) -> WitnessStatusOut:
    return WitnessStatusOut(
        height=status.height,
        header_hash=status.header_hash,
        checkpoint=status.checkpoint,
        note=status.note,
        cosigners=[CosignatureOut(**asdict(c)) for c in status.cosigners],
        quorum=status.quorum,
        witnessed=status.witnessed,
    )


def witness_router(witness: Witness, authenticator: Authenticator) -> APIRouter:
    """``GET /v1/blocks/{height}/witnesses``, ``GET /v1/blocks/witnesses`` (a page of
    heights in one request, for the blocks view), ``GET /v1/equivocations`` and
    ``GET /v1/witness/followers``."""
    router = APIRouter(
        tags=["witness"], dependencies=[guard(authenticator, Action.LEDGER_READ)], responses=READ
    )

    @router.get(
        "/v1/blocks/{height}/witnesses",
        summary="Who cosigned this node's header at a height; witnessed once a quorum did",
    )
    def witnesses(height: HeightPath) -> WitnessStatusOut:
        return _status_out(witness.status(height))

    @router.get(
        "/v1/blocks/witnesses",
        summary="Witness status of the headers from a height, a page in one request",
    )
    def witnesses_from(
        start: Annotated[int, Query(ge=0, le=MAX_SAFE_INTEGER)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_STATUSES)] = 100,
    ) -> list[WitnessStatusOut]:
        return [_status_out(s) for s in witness.statuses(start, limit)]

    @router.get(
        "/v1/equivocations",
        summary="Evidence of partners' equivocations and forks (both headers), a page at a time",
        responses=PAGED,
    )
    def equivocations(
        request: Request,
        response: Response,
        program: OptionalProgramQuery = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
        after: Annotated[
            int | None, Query(ge=0, le=MAX_SAFE_INTEGER, description="An evidence id.")
        ] = None,
    ) -> list[EquivocationOut]:
        found = witness.equivocations(program, limit, after)
        link_next(request, response, after=found[-1].id if len(found) == limit else None)
        return [EquivocationOut(**asdict(e)) for e in found]

    @router.get("/v1/witness/followers", summary="How far each partner's chain was verified")
    def followers() -> list[FollowerOut]:
        return [FollowerOut(**asdict(f)) for f in witness.followers()]

    return router
