"""The OpenAPI document is the contract (issue 11, class 8): schemathesis drives every
operation of a real coalition node's app (in process, over ASGI) with an operator, a
member, an auditor and no key, and every answer must be documented: no 5xx, a documented
status, content type, headers and body.

Bounded and deterministic: ``EXAMPLES`` derandomized examples per operation and role
(and ``NEGATIVE_EXAMPLES`` of data outside the document, as the operator), each run over
every operation within ``BUDGET_S``; on SQLite and on PostgreSQL. A mismatch is reported
per operation (method, path, role, the check that failed and the request to replay), all
of them at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from coalition.api.errors import MAX_MESSAGE_CHARS
from coalition.api.http.app import create_app
from coalition.api.http.body import MAX_BODY_BYTES
from coalition.api.http.points import MAX_BULK_ROWS
from coalition.ledger.canonical import MAX_SAFE_INTEGER
from coalition.ledger.entries import CANONICAL_TIME
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.node.features.redemptions import MAX_HOLD_S
from coalition.points.accounts import MAX_MEMBER_ID, MAX_REFERENCE, MEMBER_ID
from coalition.points.operations import MAX_NOTE

from support.coalition import agreement_doc, coalition_nodes
from support.databases import node_urls, postgres_schema

A, B = "skyair", "staybright"
MEMBER = "alice"
"""The member the member key (``KEYS["member"]``) belongs to."""
EXAMPLES = 6
"""Examples per operation and role: enough to reach each operation's refusals and, with
the member's own id and a valid key, its success; small enough for CI."""
NEGATIVE_EXAMPLES = 3
"""Negative examples per operation (their generation costs more than positive ones)."""
BUDGET_S = 60.0
"""Most seconds one run over every operation may take (about 5 s on a quiet machine):
past it the test fails rather than let the suite's time grow unnoticed."""
KEYS = {"operator": "op-contract-key", "auditor": "audit-contract-key", "member": "alice-key"}
ROLES = ("operator", "member", "auditor", "none")
Contract = tuple[Any, TestClient, TestClient]
"""skyair's schema as schemathesis reads it, a client of skyair's app and one of
staybright's (the partner with no agreement towards skyair)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def node_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Contract]:
    """Two partner nodes (on SQLite, then on PostgreSQL), skyair's whole app (points,
    ledger, every coalition feature, witness, explorer) and its schema as schemathesis
    reads it; alice enrolled with points, one agreement with staybright."""
    folder = tmp_path_factory.mktemp("contract")
    with ExitStack() as stack:
        database_url = "sqlite"
        if request.param == "postgresql":
            request.getfixturevalue("postgres_available")
            database_url = stack.enter_context(postgres_schema())
        urls = stack.enter_context(node_urls(database_url, folder, (A, B)))
        coalition = stack.enter_context(coalition_nodes(folder, urls, witness=True))
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
        partner = coalition[B]
        partner_app = create_app(
            partner.service, authenticator, partner.coalition.routers(authenticator)
        )
        with TestClient(app) as client, TestClient(partner_app) as partner_client:
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            yield schema, client, partner_client


def _headers(role: str) -> dict[str, str]:
    return {} if role == "none" else {"Authorization": f"Bearer {KEYS[role]}"}


def _run_operation(
    operation: Any, role: str, client: TestClient, mode: GenerationMode = GenerationMode.POSITIVE
) -> list[str]:
    """Requests to one operation as ``role`` (``EXAMPLES`` of them, or
    ``NEGATIVE_EXAMPLES`` in the negative mode); the failure, described, or nothing."""
    member_paths = "member_id" in (operation.path or "")
    writes = any(p.name == "Idempotency-Key" for p in operation.headers)

    @settings(
        max_examples=EXAMPLES if mode is GenerationMode.POSITIVE else NEGATIVE_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        own_member=st.booleans(),
        keyed=st.booleans(),
    )
    def run(case: Any, own_member: bool, keyed: bool) -> None:
        if member_paths and own_member:
            case.path_parameters["member_id"] = MEMBER  # the member key's own member
        headers = _headers(role)
        if writes and keyed:  # reach past the key check (repeats: replays and conflicts)
            headers["Idempotency-Key"] = f"contract-{len(str(case.body))}"
        if role == "none" and case.headers:
            case.headers.pop("Authorization", None)
        case.call_and_validate(session=client, headers=headers, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        return []  # nothing to negate: the operation takes no input
    except (Exception, FailureGroup) as failure:
        return [f"{operation.method.upper()} {operation.path} as {role} ({mode}): {failure}"]
    return []


@pytest.mark.parametrize("role", ROLES)
def test_every_operation_answers_as_its_openapi_document_says(
    node_app: Contract, role: str
) -> None:
    schema, client, _ = node_app
    started = time.monotonic()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40, [op.path for op in operations]
    for operation in operations:
        failures.extend(_run_operation(operation, role, client))
    took = time.monotonic() - started
    assert not failures, f"{len(failures)} mismatches:\n" + "\n\n".join(failures[:20])
    assert took < BUDGET_S, f"the {role} run took {took:.1f} s, over its {BUDGET_S} s budget"


# --------------------------------------- regression tests of the mismatches it found


def _document(client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def test_refusals_of_a_plain_text_route_are_documented_as_json(
    node_app: Contract,
) -> None:
    """``/v1/ledger/public-key`` answers PEM text, and its refusals JSON (``ErrorOut``): the
    document said text/plain for both."""
    _, client, _ = node_app
    operation = _document(client)["paths"]["/v1/ledger/public-key"]["get"]["responses"]
    assert list(operation["200"]["content"]) == ["text/plain"]
    assert list(operation["401"]["content"]) == ["application/json"]
    refused = client.get("/v1/ledger/public-key")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/json"
    served = client.get("/v1/ledger/public-key", headers=_headers("auditor"))
    assert served.headers["content-type"].startswith("text/plain")
    assert served.text.startswith("-----BEGIN PUBLIC KEY-----")


def test_the_netting_as_csv_is_documented(node_app: Contract) -> None:
    _, client, _ = node_app
    content = _document(client)["paths"]["/v1/settlement/netting"]["get"]["responses"]["200"]
    assert {"application/json", "text/csv"} <= set(content["content"])
    times = "start=2026-01-01T00:00:00.000000Z&end=2026-02-01T00:00:00.000000Z"
    answer = client.get(f"/v1/settlement/netting?{times}&format=csv", headers=_headers("auditor"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")


def test_a_read_the_state_refuses_is_documented(node_app: Contract) -> None:
    """A quote with no agreement in force is 409, and reads documented no 409."""
    _, client, partner_client = node_app
    quote = "/v1/members/{member_id}/conversions/quote"
    assert "409" in _document(client)["paths"][quote]["get"]["responses"]
    answer = partner_client.get(  # staybright -> skyair: no agreement that way
        f"/v1/members/bob/conversions/quote?to_program={A}&amount=10",
        headers=_headers("operator"),
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "failed_precondition"


def test_every_operation_documents_the_refusals_of_its_kind(
    node_app: Contract,
) -> None:
    """Every route uses the one table (``api.http.responses``): an authenticated route
    documents 401, 403 and 429, a route with a body 413, and each refusal is ``ErrorOut``."""
    _, client, _ = node_app
    for path, operations in _document(client)["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            assert "503" in documented, (method, path)
            if path != "/healthz":
                assert {"400", "401", "403", "404", "409", "422", "429"} <= documented, path
                headers = operation["responses"]["429"]["headers"]
                assert "Retry-After" in headers, path
            if method == "post":
                assert "413" in documented, path
            for status in documented - {"200", "201"}:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("/ErrorOut"), (method, path, status)


def test_patterns_and_limits_are_the_cores_own(node_app: Contract) -> None:
    """The document's patterns and limits are the enforcing rule's (compiled pattern or
    named constant), so they cannot drift from what the node refuses."""
    _, client, _ = node_app
    document = _document(client)
    schemas = document["components"]["schemas"]
    member = next(
        p
        for p in document["paths"]["/v1/members/{member_id}/balance"]["get"]["parameters"]
        if p["name"] == "member_id"
    )["schema"]
    assert member["pattern"] == f"^(?:{MEMBER_ID.pattern})$"
    assert member["maxLength"] == MAX_MEMBER_ID
    assert schemas["RedemptionIn"]["properties"]["reference"]["pattern"].endswith(
        f"{{0,{MAX_REFERENCE - 1}}})$"
    )
    assert schemas["TransferIn"]["properties"]["note"]["maxLength"] == MAX_NOTE
    assert schemas["ErrorOut"]["properties"]["message"]["maxLength"] == MAX_MESSAGE_CHARS
    assert schemas["StatementIn"]["properties"]["start"]["pattern"] == (
        f"^(?:{CANONICAL_TIME.pattern})$"
    )
    bulk = document["paths"]["/v1/earn/bulk"]["post"]
    assert bulk["requestBody"]["content"]["application/json"]["schema"]["maxItems"] == (
        MAX_BULK_ROWS
    )
    assert f"{MAX_BODY_BYTES:,} bytes" in bulk["responses"]["413"]["description"]
    hold = schemas["PartnerRedemptionIn"]["properties"]["expires_in_s"]
    assert (hold["minimum"], hold["maximum"]) == (1, MAX_HOLD_S)
    for value in ("alice", "a" * MAX_MEMBER_ID):
        assert re.fullmatch(member["pattern"][1:-1], value)
    assert not re.fullmatch(member["pattern"][1:-1], "a" * (MAX_MEMBER_ID + 1))


def test_integer_bounds_are_integers(node_app: Contract) -> None:
    """FastAPI wrote ``maximum: 9007199254740991.0``: generators took the field for one that
    takes floats, which the node refuses."""
    _, client, _ = node_app
    amount = _document(client)["components"]["schemas"]["AdjustmentIn"]["properties"]["amount"]
    assert amount["maximum"] == MAX_SAFE_INTEGER
    assert type(amount["maximum"]) is int and type(amount["minimum"]) is int
    redeem = _document(client)["components"]["schemas"]["RedemptionIn"]["properties"]["amount"]
    assert (redeem["minimum"], redeem["maximum"]) == (1, MAX_SAFE_INTEGER)


def test_every_request_body_refuses_unknown_fields(node_app: Contract) -> None:
    """A statement proposal took unknown fields (``StatementIn`` was a plain model), unlike
    every other body: now each documents ``additionalProperties: false`` and refuses them."""
    _, client, _ = node_app
    schemas = _document(client)["components"]["schemas"]
    for name, schema in schemas.items():
        if name.endswith("In"):
            assert schema.get("additionalProperties") is False, name
    answer = client.post(
        "/v1/settlement/statements",
        json={"partner": B, "start": "x", "end": "y", "surprise": 1},
        headers=_headers("operator"),
    )
    assert answer.status_code == 422, answer.text
    assert "surprise" in answer.json()["message"]


def test_data_outside_the_document_is_refused_as_documented(
    node_app: Contract,
) -> None:
    """Negative examples (values outside their pattern, range or type; missing fields), as
    the operator (who may call every operation): each answer is a documented refusal,
    never a 5xx."""
    role = "operator"
    schema, client, _ = node_app
    started = time.monotonic()
    failures: list[str] = []
    for result in schema.get_all_operations():
        failures.extend(_run_operation(result.ok(), role, client, GenerationMode.NEGATIVE))
    took = time.monotonic() - started
    assert not failures, f"{len(failures)} mismatches:\n" + "\n\n".join(failures[:20])
    assert took < BUDGET_S, f"the {role} run took {took:.1f} s, over its {BUDGET_S} s budget"


def test_paged_lists_document_their_link_header(node_app: Contract) -> None:
    _, client, _ = node_app
    paths = _document(client)["paths"]
    for path in (
        "/v1/members/{member_id}/lots",
        "/v1/members/{member_id}/history",
        "/v1/agreements",
        "/v1/settlement/statements",
        "/v1/equivocations",
    ):
        ok = paths[path]["get"]["responses"]["200"]
        assert "Link" in ok["headers"], path
        assert "401" in paths[path]["get"]["responses"], path
    page = client.get(f"/v1/members/{MEMBER}/history?limit=1", headers=_headers("member"))
    assert page.status_code == 200 and 'rel="next"' in page.headers["link"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("earn", {"reference": "r\x00", "spend_minor": 100}),
        ("rewards", {"event": "signup", "reference": "r\x00"}),
        ("rewards", {"event": "sign\x00up", "reference": "r"}),
    ],
)
def test_a_nul_byte_in_an_earn_reference_is_a_400_before_any_lookup(
    node_app: Contract, path: str, body: dict[str, Any]
) -> None:
    """Schemathesis found it on PostgreSQL: the purchase (or reward) reference was looked
    up before it was checked, and PostgreSQL refuses a NUL in text, so the earn was a 500.
    The reference and the event are checked first (SQLite and PostgreSQL alike)."""
    _, client, _ = node_app
    balance = client.get(f"/v1/members/{MEMBER}/balance", headers=_headers("operator")).json()
    answer = client.post(
        f"/v1/members/{MEMBER}/{path}",
        json=body,
        headers=_headers("operator") | {"Idempotency-Key": f"nul-{path}-{len(str(body))}"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_argument"
    after = client.get(f"/v1/members/{MEMBER}/balance", headers=_headers("operator")).json()
    assert after == balance


@pytest.mark.parametrize(
    "url",
    [
        f"/v1/members/{MEMBER}/lots?after=a%00b",
        "/v1/settlement/statements?after=a%00b",
        f"/v1/settlement/statements?partner={B}%00",
        "/v1/equivocations?program=a%00b",
        "/v1/agreements?after=1:a%00b",
        f"/v1/members/{MEMBER}/conversions/a%00b",
        "/v1/ledger/entries/a%00b",
        "/v1/partner-redemptions/a%00b",
    ],
)
def test_a_nul_byte_in_a_cursor_or_id_is_a_refusal(node_app: Contract, url: str) -> None:
    """PostgreSQL refuses a NUL in text: every id and cursor a read looks up is checked
    first, so the answer is a documented refusal on both databases, never a 500."""
    _, client, _ = node_app
    answer = client.get(url, headers=_headers("operator"))
    assert answer.status_code in (400, 404), answer.text
    assert set(answer.json()) == {"error", "message"}
