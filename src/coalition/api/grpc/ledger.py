# ruff: noqa: N802  (RPC method names are fixed by the .proto: CamelCase)
"""``coalition.v1.Ledger``: read-only, for operators and auditors on the member server
and for partners (by TLS certificate, ``partner``) on the partner server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from coalition.api.grpc.kit import CallAuthorizer, Servicer, guarded, guarded_stream
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import canonical_json
from coalition.node.auth import Action
from coalition.node.ledger_service import LedgerService
from coalition.node.views import EntryView
from coalition.v1 import ledger_pb2, ledger_pb2_grpc

LEDGER_SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name
WATCH_POLL_SECONDS = 0.5
"""How often a WatchHeaders stream wakes to notice a cancelled call or a stopping server."""


def entry_message(view: EntryView) -> ledger_pb2.Entry:
    return ledger_pb2.Entry(entry_json=canonical_json(view.entry), log_index=view.log_index)


def _header_message(signed: SignedHeader) -> ledger_pb2.SignedHeader:
    return ledger_pb2.SignedHeader(signed_header_json=canonical_json(signed.to_json()))


class LedgerServicer(Servicer, ledger_pb2_grpc.LedgerServicer):
    """``coalition.v1.Ledger`` over a node's LedgerService; every call is a ledger read."""

    def __init__(self, ledger: LedgerService, authorize: CallAuthorizer) -> None:
        super().__init__(authorize)
        self._ledger = ledger

    @guarded
    def GetLatestHeader(
        self, request: ledger_pb2.GetLatestHeaderRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.LatestHeader:
        self.allow(context, Action.LEDGER_READ)
        signed = self._ledger.latest_header()
        if signed is None:
            return ledger_pb2.LatestHeader()
        return ledger_pb2.LatestHeader(header=_header_message(signed))

    @guarded
    def GetHeaders(
        self, request: ledger_pb2.GetHeadersRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.HeaderList:
        self.allow(context, Action.LEDGER_READ)
        if request.limit:
            headers = self._ledger.headers(request.start, request.limit)
        else:
            headers = self._ledger.headers(request.start)
        return ledger_pb2.HeaderList(headers=[_header_message(h) for h in headers])

    @guarded
    def GetBlock(
        self, request: ledger_pb2.GetBlockRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Block:
        self.allow(context, Action.LEDGER_READ)
        signed, entries = self._ledger.block(request.height)
        return ledger_pb2.Block(
            header=_header_message(signed), entry_json=[canonical_json(e) for e in entries]
        )

    @guarded
    def GetEntry(
        self, request: ledger_pb2.GetEntryRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Entry:
        self.allow(context, Action.LEDGER_READ)
        return entry_message(self._ledger.entry(request.entry_id))

    @guarded
    def GetInclusionProof(
        self, request: ledger_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Proof:
        self.allow(context, Action.LEDGER_READ)
        tree_size = request.tree_size if request.HasField("tree_size") else None
        document = self._ledger.inclusion_proof(request.entry_id, tree_size)
        return ledger_pb2.Proof(proof_json=canonical_json(document))

    @guarded
    def GetConsistencyProof(
        self, request: ledger_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Proof:
        self.allow(context, Action.LEDGER_READ)
        document = self._ledger.consistency_proof(request.first_height, request.second_height)
        return ledger_pb2.Proof(proof_json=canonical_json(document))

    @guarded_stream
    def WatchHeaders(
        self, request: ledger_pb2.WatchHeadersRequest, context: grpc.ServicerContext
    ) -> Iterator[ledger_pb2.SignedHeader]:
        """Each header above ``after_height`` in order; ends when the call is cancelled
        (client gone or server stopping) or the node stops sealing. Each header is
        authorized again before it is sent (one rate token, as a call): a key revoked
        or expired, or a partner certificate revoked, while the stream is open ends it
        with UNAUTHENTICATED at the next header."""
        self.allow(context, Action.LEDGER_READ)
        after = request.after_height
        while context.is_active():
            started = time.monotonic()
            signed = self._ledger.wait_for_header(after, WATCH_POLL_SECONDS)
            if signed is not None:
                self.allow(context, Action.LEDGER_READ)
                yield _header_message(signed)
                after = signed.header.height
            elif time.monotonic() - started < WATCH_POLL_SECONDS / 2:
                return  # wait_for_header returns None early only when the node is stopping

    @guarded
    def GetPublicKey(
        self, request: ledger_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.PublicKey:
        self.allow(context, Action.LEDGER_READ)
        pem = self._ledger.public_key.to_pem().decode("ascii")
        return ledger_pb2.PublicKey(program=self._ledger.program, public_key_pem=pem)
