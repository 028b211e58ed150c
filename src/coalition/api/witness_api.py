# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""Witnessing over REST and gRPC: our headers' cosignatures, followers, fault evidence.

Thin like the other transports: authenticate the API key, authorize a ledger read (the
same role as headers and proofs), call ``node.witness.Witness``, build the reply. Core
errors reach the app's handler (REST) or ``grpc_server._guard`` (gRPC), which map them
once through ``coalition.api.errors``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from coalition.api.grpc_server import _guard, authorize_call
from coalition.api.rest import guard
from coalition.ledger.canonical import MAX_SAFE_INTEGER, canonical_json
from coalition.node.auth import Action, Authenticator
from coalition.node.features.witness import Evidence, FollowerStatus, Witness, WitnessStatus
from coalition.v1 import witness_pb2, witness_pb2_grpc


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
    """``GET /v1/blocks/{height}/witnesses``, ``GET /v1/equivocations`` and
    ``GET /v1/witness/followers``; each needs a key that may read the ledger."""

    router = APIRouter(tags=["witness"], dependencies=[guard(authenticator, Action.LEDGER_READ)])

    @router.get(
        "/v1/blocks/{height}/witnesses",
        summary="Who cosigned this node's header at a height; witnessed once a quorum did",
    )
    def witnesses(
        height: Annotated[int, Path(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)],
    ) -> WitnessStatusOut:
        return _status_out(witness.status(height))

    @router.get(
        "/v1/equivocations",
        summary="Evidence of partners' equivocations and forks (both signed headers)",
    )
    def equivocations(
        program: Annotated[str | None, Query(max_length=64)] = None,
    ) -> list[EquivocationOut]:
        return [EquivocationOut(**asdict(e)) for e in witness.equivocations(program)]

    @router.get("/v1/witness/followers", summary="How far each partner's chain was verified")
    def followers() -> list[FollowerOut]:
        return [FollowerOut(**asdict(f)) for f in witness.followers()]

    return router


def _evidence_message(e: Evidence) -> witness_pb2.Equivocation:
    return witness_pb2.Equivocation(
        id=e.id,
        program=e.program,
        height=e.height,
        kind=e.kind,
        reason=e.reason,
        first_signed_header_json=canonical_json(e.first),
        second_signed_header_json=canonical_json(e.second),
        detected_at=e.detected_at,
    )


def _follower_message(f: FollowerStatus) -> witness_pb2.Follower:
    return witness_pb2.Follower(
        program=f.program,
        verified_height=f.verified_height,
        halted=f.halted,
        last_error=f.last_error or "",
    )


class WitnessServicer(witness_pb2_grpc.WitnessServicer):
    """``coalition.v1.Witness`` over a Witness; ledger-read keys only."""

    def __init__(self, witness: Witness, authenticator: Authenticator) -> None:
        self._witness = witness
        self._auth = authenticator

    def _allow(self, context: grpc.ServicerContext) -> None:
        authorize_call(self._auth, context, Action.LEDGER_READ)

    @_guard
    def GetWitnesses(
        self, request: witness_pb2.GetWitnessesRequest, context: grpc.ServicerContext
    ) -> witness_pb2.WitnessStatus:
        self._allow(context)
        status = self._witness.status(request.height)
        return witness_pb2.WitnessStatus(
            height=status.height,
            header_hash=status.header_hash,
            checkpoint=status.checkpoint,
            note=status.note,
            cosigners=[
                witness_pb2.Cosignature(
                    witness=c.witness, timestamp=c.timestamp, cosignature=c.cosignature
                )
                for c in status.cosigners
            ],
            quorum=status.quorum,
            witnessed=status.witnessed,
        )

    @_guard
    def ListEquivocations(
        self, request: witness_pb2.ListEquivocationsRequest, context: grpc.ServicerContext
    ) -> witness_pb2.EquivocationList:
        self._allow(context)
        found = self._witness.equivocations(request.program or None)
        return witness_pb2.EquivocationList(equivocations=[_evidence_message(e) for e in found])

    @_guard
    def ListFollowers(
        self, request: witness_pb2.ListFollowersRequest, context: grpc.ServicerContext
    ) -> witness_pb2.FollowerList:
        self._allow(context)
        return witness_pb2.FollowerList(
            followers=[_follower_message(f) for f in self._witness.followers()]
        )


def add_witness_servicer(
    server: grpc.Server, witness: Witness, authenticator: Authenticator
) -> None:
    """Register ``coalition.v1.Witness`` on the member/operator gRPC server."""
    witness_pb2_grpc.add_WitnessServicer_to_server(WitnessServicer(witness, authenticator), server)
