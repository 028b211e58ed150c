"""``GET /v1/ledger/bundle``: the node's chain as a ``coalition/bundle/v1`` stream.

Thin like the other routers: a key that may read the ledger (operator or auditor), then
``LedgerService.bundle()`` (``coalition.node.bundle_export``) streamed as it is produced,
uncompressed. The snapshot (and any CorruptStore it finds) is taken before the response
starts; a fault later cuts the stream short, which a reader sees as a missing end line.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from coalition.api.http.deps import guard
from coalition.api.http.responses import READ
from coalition.node.auth import Action, Authenticator
from coalition.node.service import NodeService

MEDIA_TYPE = "application/x-ndjson"


def bundle_router(service: NodeService, authenticator: Authenticator) -> APIRouter:
    """The bundle route: a key that may read the ledger."""
    router = APIRouter(
        tags=["ledger"], dependencies=[guard(authenticator, Action.LEDGER_READ)], responses=READ
    )

    @router.get(
        "/v1/ledger/bundle",
        summary="The whole chain as a bundle (JSON Lines): headers, entries, "
        "cosignatures and evidence, for an offline audit",
        response_class=StreamingResponse,
        responses={200: {"content": {MEDIA_TYPE: {}}}},
    )
    def bundle() -> StreamingResponse:
        export = service.ledger.bundle(exported_at=service.now())
        return StreamingResponse(
            iter(export),
            media_type=MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{service.program}.bundle"'},
        )

    return router
