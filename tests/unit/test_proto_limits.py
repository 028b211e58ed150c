"""The proto comments state the limits the REST API's OpenAPI document states, and both
name the values of the same constants (issue 11, class 8: the gRPC twin agrees)."""

from __future__ import annotations

from pathlib import Path

from coalition.api.errors import MAX_MESSAGE_CHARS
from coalition.node.features.redemptions import MAX_HOLD_S
from coalition.node.ledger_service import MAX_HEADERS
from coalition.node.paging import MAX_PAGE
from coalition.points.accounts import MAX_MEMBER_ID, MAX_REFERENCE
from coalition.points.operations import MAX_NOTE

PROTO = Path(__file__).resolve().parents[2] / "proto" / "coalition" / "v1"


def _comments(name: str) -> str:
    """The proto file's comment text, lines joined with single spaces."""
    lines = (PROTO / name).read_text().splitlines()
    return " ".join(line.strip().removeprefix("//").strip() for line in lines if "//" in line)


def test_points_proto_states_the_cores_limits() -> None:
    text = _comments("points.proto")
    assert f"idempotency key (1-{MAX_REFERENCE} characters" in text
    assert f"a member id is 1-{MAX_MEMBER_ID} characters" in text
    assert f"operator id 1-{MAX_REFERENCE} characters" in text
    assert f"a note 1-{MAX_NOTE} characters" in text
    assert f"at most {MAX_MESSAGE_CHARS} characters" in text
    assert f"(1..{MAX_PAGE}; 0: 100)" in text  # history
    assert f"(1..{MAX_PAGE}; 0: {MAX_PAGE})" in text  # lots


def test_paged_calls_state_the_page_limit() -> None:
    assert f"(1..{MAX_HEADERS}; 0: 1000)" in _comments("ledger.proto")
    for name in ("conversions.proto", "witness.proto"):
        assert f"(1..{MAX_PAGE}; 0: {MAX_PAGE})" in _comments(name), name


def test_a_holds_length_is_stated_as_the_limit() -> None:
    assert MAX_HOLD_S == 30 * 24 * 3600
    assert "(1 s to 30 days)" in _comments("settlement.proto")
