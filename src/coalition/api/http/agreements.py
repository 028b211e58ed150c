"""Rate agreements over HTTP, for operators: propose one (the counterparty countersigns
over the partner channel before it is recorded on both chains) and list them, a page at
a time with a ``Link: <...>; rel="next"`` header (RFC 8288) when a next page may exist."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel

from coalition.api.http.deps import guard, link_next
from coalition.api.http.responses import PAGED, READ, WRITE
from coalition.node.auth import Action, Authenticator
from coalition.node.features.agreements import Agreements, cursor_of, parse_cursor
from coalition.node.paging import MAX_PAGE


class AgreementOut(BaseModel):
    id: str
    version: int
    from_program: str
    to_program: str
    valid_from: str
    valid_until: str
    in_force: bool
    signed: dict[str, Any]


def agreements_router(feature: Agreements, authenticator: Authenticator) -> APIRouter:
    """``/v1/agreements`` (propose, list); operators only."""
    router = APIRouter(
        tags=["agreements"],
        dependencies=[guard(authenticator, Action.OPERATE)],
    )

    @router.post(
        "/v1/agreements",
        summary="Propose a rate agreement; the counterparty countersigns",
        status_code=201,
        responses=WRITE,
    )
    def propose(document: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return dict(feature.propose(document))

    @router.get(
        "/v1/agreements",
        summary="Recorded rate agreements by id then version, a page at a time",
        responses=PAGED | READ,
    )
    def agreements(
        request: Request,
        response: Response,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
        after: Annotated[
            str | None, Query(max_length=160, description="The cursor of the page before.")
        ] = None,
    ) -> list[AgreementOut]:
        found = feature.list(limit, parse_cursor(after))
        link_next(request, response, after=cursor_of(found[-1]) if len(found) == limit else None)
        return [AgreementOut(**asdict(view)) for view in found]

    return router
