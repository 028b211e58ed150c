"""The authenticator: the bearer scheme in any case, whole-set replacement, and errors
that quote at most a short prefix of what was refused."""

from __future__ import annotations

import pytest

from coalition.errors import QUOTE_CHARS, InvalidArgument, Unauthenticated, quoted
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.points.accounts import validate_member_id


def test_the_bearer_scheme_is_case_insensitive_and_the_bare_key_still_works() -> None:
    auth = Authenticator([ApiKey("ops", key_digest("s3cret"), Role.OPERATOR)])
    for header in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret ", "s3cret"):
        assert auth.authenticate(header).name == "ops", header
    for header in ("Bearer", "Bearer other", "Basic s3cret", ""):
        with pytest.raises(Unauthenticated):
            auth.authenticate(header)


def test_replace_swaps_every_key_at_once_and_a_bad_set_changes_nothing() -> None:
    auth = Authenticator([ApiKey("old", key_digest("old"), Role.AUDITOR)])
    assert auth.replace([ApiKey("new", key_digest("new"), Role.OPERATOR)]) == 1
    assert auth.authenticate("Bearer new").role is Role.OPERATOR
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer old")
    with pytest.raises(InvalidArgument, match="needs a member_id"):
        auth.replace([ApiKey("m", key_digest("m"), Role.MEMBER)])
    assert auth.authenticate("Bearer new").name == "new"


def test_a_refusal_quotes_only_a_short_prefix() -> None:
    assert quoted("short") == "'short'"
    long = "x" * 1_000_000
    assert len(quoted(long)) < QUOTE_CHARS + 40
    assert "1,000,000 characters" in quoted(long)
    with pytest.raises(InvalidArgument) as refused:
        validate_member_id(long)
    assert len(str(refused.value)) < 200
