"""The explorer page and the JSON it needs beyond the ledger, witness and settlement routes.

``/explorer/`` serves the static files shipped in ``coalition.explorer`` without
authentication (they hold no data; every call the page makes carries an API key the user
typed in). Files are served from a fixed list with a strict Content-Security-Policy (only
this origin's scripts, styles and fetches). The JSON routes need a ledger-read key:
``/v1/explorer/about`` (who this node is, and its coalition when it runs one) and
``/v1/explorer/flows`` (value between brands per time bucket, from the running totals the
writer keeps beside this node's chain: a page of buckets at a time, newest first) and
``/v1/explorer/kinds`` (how the page names each entry kind, from ``points.kinds``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Query
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from coalition.api.http.deps import guard
from coalition.api.http.fields import OptionalTimeQuery
from coalition.api.http.responses import READ
from coalition.errors import NotFound
from coalition.explorer.flows import MAX_BUCKET_S, MIN_BUCKET_S, flows_of
from coalition.ledger.entries import check_time, format_time
from coalition.node.auth import Action, Authenticator
from coalition.node.manifest import Manifest
from coalition.node.service import NodeService
from coalition.points.kinds import display_json


class Membership(Protocol):
    """What the explorer shows of the coalition a node belongs to: the manifest, and
    whether this node witnesses its partners (``runtime.wiring.CoalitionNode`` is one)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def witness(self) -> object | None: ...


_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _page_files() -> dict[str, bytes]:
    """The shipped page files by name, read once."""
    folder = resources.files("coalition.explorer")
    return {
        item.name: item.read_bytes()
        for item in folder.iterdir()
        if item.is_file() and any(item.name.endswith(ext) for ext in _MEDIA_TYPES)
    }


class PartnerOut(BaseModel):
    program: str
    name: str
    currency: str


class CoalitionOut(BaseModel):
    name: str
    witness_quorum: int
    partners: list[PartnerOut]
    witness: bool


class AboutOut(BaseModel):
    program: str
    log_size: int
    height: int | None
    coalition: CoalitionOut | None


class FlowsOut(BaseModel):
    program: str
    bucket_s: int
    flows: list[dict[str, Any]]
    """The newest ``limit`` non-empty buckets before ``before``, oldest first."""
    next_before: str | None = Field(
        description="Pass as ``before`` for the next older page; null when there is none."
    )


def _coalition_out(coalition: Membership) -> CoalitionOut:
    manifest = coalition.manifest
    return CoalitionOut(
        name=manifest.name,
        witness_quorum=manifest.witness_quorum,
        partners=[
            PartnerOut(program=p.program, name=p.name, currency=p.currency)
            for p in manifest.partners
        ],
        witness=coalition.witness is not None,
    )


def explorer_router(
    service: NodeService, authenticator: Authenticator, coalition: Membership | None = None
) -> APIRouter:
    """``/explorer/`` (the page, no key) and ``/v1/explorer/about`` and
    ``/v1/explorer/flows`` (ledger-read keys). ``coalition`` adds the manifest's partners
    to ``about``; without it the page shows this node alone."""
    router = APIRouter(tags=["explorer"], responses=READ)
    router.include_router(_page_router())
    read = [guard(authenticator, Action.LEDGER_READ)]

    @router.get(
        "/v1/explorer/about",
        summary="This node's program, log size and coalition partners",
        dependencies=read,
    )
    def about() -> AboutOut:
        latest = service.ledger.latest_header()
        return AboutOut(
            program=service.program,
            log_size=0 if latest is None else latest.header.log_size,
            height=None if latest is None else latest.header.height,
            coalition=None if coalition is None else _coalition_out(coalition),
        )

    @router.get(
        "/v1/explorer/kinds",
        summary="The entry kinds: label, scope and the flow each counts in",
        dependencies=read,
    )
    def entry_kinds() -> list[dict[str, str | None]]:
        return display_json()

    @router.get(
        "/v1/explorer/flows",
        summary="Conversions and redemptions between brands per time bucket (this chain)",
        dependencies=read,
    )
    def flows(
        bucket_s: Annotated[int, Query(ge=MIN_BUCKET_S, le=MAX_BUCKET_S, multiple_of=60)] = 3600,
        limit: Annotated[int, Query(ge=1, le=1000, description="Most buckets.")] = 200,
        before: OptionalTimeQuery = None,
    ) -> FlowsOut:
        until = None if before is None else check_time(before, "before")
        totals, older = service.ledger.flow_page(bucket_s, limit, until)
        return FlowsOut(
            program=service.program,
            bucket_s=bucket_s,
            flows=[f.to_json() for f in flows_of(totals)],
            next_before=None if older is None else format_time(datetime.fromtimestamp(older, UTC)),
        )

    return router


def _page_router() -> APIRouter:
    """The page's static files, from a fixed list read once, outside the OpenAPI schema."""
    router = APIRouter(include_in_schema=False)
    files = _page_files()

    @router.get("/explorer")
    def explorer_root() -> RedirectResponse:
        return RedirectResponse("/explorer/", status_code=308)

    @router.get("/explorer/{name}")
    @router.get("/explorer/")
    def page_file(name: str = "index.html") -> Response:
        body = files.get(name)
        if body is None:
            raise NotFound(f"no explorer file {name!r}")
        media_type = next(t for ext, t in _MEDIA_TYPES.items() if name.endswith(ext))
        return Response(body, media_type=media_type, headers=_HEADERS)

    return router
