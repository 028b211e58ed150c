"""Rate agreements over HTTP, for operators: propose one (the counterparty countersigns
over the partner channel before it is recorded on both chains) and list them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel

from coalition.api.http.deps import ERROR_RESPONSES, guard
from coalition.node.auth import Action, Authenticator
from coalition.node.features.agreements import Agreements


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
        responses=ERROR_RESPONSES,
    )

    @router.post(
        "/v1/agreements",
        summary="Propose a rate agreement; the counterparty countersigns",
        status_code=201,
    )
    def propose(document: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return dict(feature.propose(document))

    @router.get("/v1/agreements", summary="Every recorded rate agreement")
    def agreements() -> list[AgreementOut]:
        return [AgreementOut(**asdict(view)) for view in feature.list()]

    return router
