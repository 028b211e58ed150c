"""The OpenAPI document is the contract (issue 11, class 8): schemathesis drives every
operation of a real coalition node's app (in process, over ASGI) with an operator, a
member, an auditor and no key, and every answer must be documented: no 5xx, a documented
status, content type, headers and body.

Bounded and deterministic: ``EXAMPLES`` derandomized examples per operation and role,
within ``BUDGET_S`` for each role. A mismatch is reported per operation (method, path,
role, the check that failed and the request to replay), all of them at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from coalition.api.http.app import create_app
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from support.coalition import agreement_doc, coalition_nodes
from support.databases import node_urls

A, B = "skyair", "staybright"
MEMBER = "alice"
"""The member the member key belongs to (tests/conftest.py)."""
EXAMPLES = 6
"""Examples per operation and role: enough to reach each operation's refusals and, with
the member's own id and a valid key, its success; small enough for CI."""
BUDGET_S = 25.0
"""Most seconds one role's run may take; past it the test fails rather than grow."""
KEYS = {"operator": "op-contract-key", "auditor": "audit-contract-key", "member": "alice-key"}
ROLES = ("operator", "member", "auditor", "none")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def node_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, TestClient]]:
    """Two partner nodes on SQLite, skyair's whole app (points, ledger, every coalition
    feature, witness, explorer) and its schema as schemathesis reads it; alice enrolled
    with points, one agreement with staybright, some blocks sealed."""
    folder = tmp_path_factory.mktemp("contract")
    with (
        node_urls("sqlite", folder, (A, B)) as urls,
        coalition_nodes(folder, urls, witness=True) as coalition,
    ):
        node = coalition[A]
        node.agr.propose(agreement_doc(A, B))
        node.service.points.enroll(MEMBER, idempotency_key="enroll-alice")
        node.service.points.adjust(MEMBER, 10_000, "ops", "opening", idempotency_key="seed")
        coalition[B].service.points.enroll("bob", idempotency_key="enroll-bob")
        authenticator = Authenticator(
            [
                ApiKey("ops", key_digest(KEYS["operator"]), Role.OPERATOR),
                ApiKey("audit", key_digest(KEYS["auditor"]), Role.AUDITOR),
                ApiKey(MEMBER, key_digest(KEYS["member"]), Role.MEMBER, MEMBER),
            ]
        )
        app = create_app(
            node.service, authenticator, node.coalition.routers(authenticator), node.coalition
        )
        with TestClient(app) as client:
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            yield schema, client


def _headers(role: str) -> dict[str, str]:
    return {} if role == "none" else {"Authorization": f"Bearer {KEYS[role]}"}


def _run_operation(operation: Any, role: str, client: TestClient) -> list[str]:
    """``EXAMPLES`` requests to one operation as ``role``; the failed checks, described."""
    member_paths = "member_id" in (operation.path or "")

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), own_member=st.booleans())
    def run(case: Any, own_member: bool) -> None:
        if member_paths and own_member:
            case.path_parameters["member_id"] = MEMBER  # the member key's own member
        headers = _headers(role)
        if role == "none" and case.headers:
            case.headers.pop("Authorization", None)
        case.call_and_validate(session=client, headers=headers, checks=CHECKS)

    try:
        run()
    except (Exception, FailureGroup) as failure:  # noqa: BLE001 (each operation's failure)
        return [f"{operation.method.upper()} {operation.path} as {role}: {failure}"]
    return []


@pytest.mark.parametrize("role", ROLES)
def test_every_operation_answers_as_its_openapi_document_says(
    node_app: tuple[Any, TestClient], role: str
) -> None:
    schema, client = node_app
    started = time.monotonic()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40, [op.path for op in operations]
    for operation in operations:
        failures.extend(_run_operation(operation, role, client))
    took = time.monotonic() - started
    assert not failures, f"{len(failures)} mismatches:\n" + "\n\n".join(failures[:20])
    assert took < BUDGET_S, f"the {role} run took {took:.1f} s, over its {BUDGET_S} s budget"
