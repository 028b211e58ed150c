# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""``coalition.v1.Witness``: our headers' cosignatures, partners' fault evidence and the
followers' progress; ledger-read keys only (the role of headers and proofs)."""

from __future__ import annotations

import grpc

from coalition.api.grpc.kit import (
    ApiKeyAuthorizer,
    CallAuthorizer,
    Servicer,
    guarded,
    integer_token,
    page_size,
)
from coalition.ledger.canonical import canonical_json
from coalition.node.auth import Action, Authenticator
from coalition.node.features.witness import Evidence, FollowerStatus, Witness, WitnessStatus
from coalition.v1 import witness_pb2, witness_pb2_grpc


def _status_message(status: WitnessStatus) -> witness_pb2.WitnessStatus:
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


class WitnessServicer(Servicer, witness_pb2_grpc.WitnessServicer):
    """``coalition.v1.Witness`` over a Witness."""

    def __init__(self, witness: Witness, authorize: CallAuthorizer) -> None:
        super().__init__(authorize)
        self._witness = witness

    @guarded
    def GetWitnesses(
        self, request: witness_pb2.GetWitnessesRequest, context: grpc.ServicerContext
    ) -> witness_pb2.WitnessStatus:
        self.allow(context, Action.LEDGER_READ)
        return _status_message(self._witness.status(request.height))

    @guarded
    def ListEquivocations(
        self, request: witness_pb2.ListEquivocationsRequest, context: grpc.ServicerContext
    ) -> witness_pb2.EquivocationList:
        self.allow(context, Action.LEDGER_READ)
        after = integer_token(request.page_token, "equivocations")
        limit = page_size(request.page_size)
        found = self._witness.equivocations(request.program or None, limit, after)
        following = str(found[-1].id) if len(found) == limit else ""
        return witness_pb2.EquivocationList(
            equivocations=[_evidence_message(e) for e in found], next_page_token=following
        )

    @guarded
    def ListFollowers(
        self, request: witness_pb2.ListFollowersRequest, context: grpc.ServicerContext
    ) -> witness_pb2.FollowerList:
        self.allow(context, Action.LEDGER_READ)
        return witness_pb2.FollowerList(
            followers=[_follower_message(f) for f in self._witness.followers()]
        )


def add_witness_servicer(
    server: grpc.Server, witness: Witness, authenticator: Authenticator
) -> None:
    """Register ``coalition.v1.Witness`` on the member/operator gRPC server."""
    servicer = WitnessServicer(witness, ApiKeyAuthorizer(authenticator))
    witness_pb2_grpc.add_WitnessServicer_to_server(servicer, server)
