"""Settlement over HTTP: the statements recorded on this chain (operators and auditors
read; operators propose a finished period's statement to a partner) and the coalition's
netting over a period, as JSON or CSV. Signed statements pass through untouched."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from coalition.api.http.deps import RequestBody, Signed, guard, link_next
from coalition.api.http.fields import OptionalProgramQuery, ProgramField, TimeField, TimeQuery
from coalition.api.http.responses import PAGED, READ, WRITE
from coalition.ledger.entries import check_time
from coalition.node.auth import Action, Authenticator
from coalition.node.features.settlement import Settlement, StatementView

Format = Annotated[Literal["json", "csv"], Query(alias="format", description="json or csv")]


_NETTING: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The netting as JSON, or as CSV with `format=csv`",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


class StatementIn(RequestBody):
    partner: ProgramField
    start: TimeField = Field(description="Start of the period (included), RFC 3339 UTC.")
    end: TimeField = Field(description="End of the period (excluded), in the past.")


class StatementOut(BaseModel):
    id: str
    parties: list[str]
    start: str
    end: str
    currency: str
    signed: Signed
    entry_id: str


def _statement_out(view: StatementView) -> StatementOut:
    fields = asdict(view)
    fields["parties"] = list(view.parties)
    return StatementOut(**fields)


def settlement_router(settlement: Settlement, authenticator: Authenticator) -> APIRouter:
    """``/v1/settlement/statements`` (list: operators and auditors; propose: operators)
    and ``/v1/settlement/netting`` (CSV or JSON)."""
    router = APIRouter(tags=["settlement"])
    read = [guard(authenticator, Action.LEDGER_READ)]
    operate = [guard(authenticator, Action.OPERATE)]

    @router.get(
        "/v1/settlement/statements",
        summary="Statements recorded on this chain, oldest period first, a page at a time",
        dependencies=read,
        responses=PAGED | READ,
    )
    def statements(
        request: Request,
        response: Response,
        partner: OptionalProgramQuery = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
        after: Annotated[str | None, Query(max_length=128, description="A statement id.")] = None,
    ) -> list[StatementOut]:
        found = settlement.statements_page(partner, limit, after)
        link_next(request, response, after=found[-1].id if len(found) == limit else None)
        return [_statement_out(v) for v in found]

    @router.post(
        "/v1/settlement/statements",
        status_code=201,
        summary="Agree a finished period's statement with a partner (recorded on both chains)",
        dependencies=operate,
        responses=WRITE,
    )
    def propose(body: StatementIn) -> Signed:
        start, end = check_time(body.start, "start"), check_time(body.end, "end")
        return dict(settlement.propose(body.partner, start, end))

    @router.get(
        "/v1/settlement/netting",
        summary="Net positions and the fewest payments over the period's statements",
        dependencies=read,
        response_model=None,
        responses=_NETTING | READ,
    )
    def netting(
        start: TimeQuery, end: TimeQuery, fmt: Format = "json"
    ) -> Signed | PlainTextResponse:
        view = settlement.coalition_netting(check_time(start, "start"), check_time(end, "end"))
        if fmt == "csv":
            return PlainTextResponse(view.to_csv(), media_type="text/csv")
        return dict(view.to_json())

    return router
