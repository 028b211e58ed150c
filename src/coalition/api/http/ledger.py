"""The signed ledger over HTTP, for auditors and operators: the public key and its
rotations, block headers, blocks, entries and the inclusion and consistency proof
documents.

Headers are served as their signed JSON documents (``{"header": {...}, "signature":
"..."}``) and proofs as the self-contained documents ``docs/proofs.md`` describes.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from coalition.api.http.deps import QueryInt, Signed, guard
from coalition.api.http.fields import EntryId, HeadersLimit, HeightPath, HeightQuery
from coalition.api.http.responses import READ
from coalition.errors import NotFound
from coalition.ledger.blocks import SignedHeader
from coalition.node.auth import Action, Authenticator
from coalition.node.ledger_service import LedgerService
from coalition.node.views import EntryView


class EntryOut(BaseModel):
    entry: Signed
    log_index: int | None = Field(description="Position in the log; null until sealed.")


def entry_out(view: EntryView) -> EntryOut:
    return EntryOut(entry=view.entry, log_index=view.log_index)


class KeyRotationOut(BaseModel):
    log_index: int = Field(description="The rotation entry's position in the log.")
    entry: Signed


class BlockOut(BaseModel):
    header: Signed
    entries: list[Signed]


def _header_doc(header: SignedHeader) -> Signed:
    return dict(header.to_json())


def ledger_router(ledger: LedgerService, authenticator: Authenticator) -> APIRouter:
    """``/v1/ledger/...``: every route needs a key that may read the ledger."""
    router = APIRouter(
        tags=["ledger"],
        dependencies=[guard(authenticator, Action.LEDGER_READ)],
        responses=READ,
    )

    @router.get(
        "/v1/ledger/public-key",
        summary="The program's Ed25519 public key (PEM)",
        response_class=Response,  # no media type of its own: refusals stay JSON (ErrorOut)
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def public_key() -> PlainTextResponse:
        return PlainTextResponse(ledger.public_key.to_pem().decode("ascii"))

    @router.get(
        "/v1/ledger/key-rotations",
        summary="The program's ledger key rotations in log order (docs/proofs.md §11)",
    )
    def key_rotations() -> list[KeyRotationOut]:
        return [KeyRotationOut(log_index=i, entry=e) for i, e in ledger.key_rotations()]

    @router.get("/v1/ledger/headers/latest", summary="The latest signed block header")
    def latest_header() -> Signed:
        header = ledger.latest_header()
        if header is None:
            raise NotFound("no block has been sealed yet")
        return _header_doc(header)

    @router.get("/v1/ledger/headers", summary="Signed block headers from a height")
    def headers(start: HeightQuery = 0, limit: HeadersLimit = 1000) -> list[Signed]:
        return [_header_doc(h) for h in ledger.headers(start, limit)]

    @router.get(
        "/v1/ledger/blocks/{height}", summary="One block: its signed header and its entries"
    )
    def block(height: HeightPath) -> BlockOut:
        header, entries = ledger.block(height)
        return BlockOut(header=_header_doc(header), entries=entries)

    @router.get("/v1/ledger/entries/{entry_id}", summary="One entry and its log index")
    def entry(entry_id: EntryId) -> EntryOut:
        return entry_out(ledger.entry(entry_id))

    @router.get(
        "/v1/ledger/entries/{entry_id}/proof", summary="Inclusion proof document of one entry"
    )
    def inclusion_proof(entry_id: EntryId, tree_size: QueryInt | None = None) -> Signed:
        return ledger.inclusion_proof(entry_id, tree_size)

    @router.get(
        "/v1/ledger/consistency",
        summary="Consistency proof document between two block heights",
    )
    def consistency(first: HeightQuery, second: HeightQuery) -> Signed:
        return ledger.consistency_proof(first, second)

    return router
