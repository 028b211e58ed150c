"""``node.idempotency.KeyScope``: how a caller's key is recorded (issue 11, class 5)."""

from __future__ import annotations

import pytest

from coalition.errors import InvalidArgument
from coalition.node.auth import Principal, Role
from coalition.node.idempotency import OPERATOR, KeyScope
from coalition.points.accounts import validate_reference


def test_every_operator_key_and_no_member_key_is_in_the_operator_scope() -> None:
    assert KeyScope.of(Principal("ops", Role.OPERATOR)) is OPERATOR
    assert KeyScope.of(Principal("ops-2", Role.OPERATOR)) is OPERATOR
    assert KeyScope.of(Principal("phone", Role.MEMBER, "alice")) == KeyScope("alice")
    assert KeyScope.of(Principal("web", Role.MEMBER, "alice")) == KeyScope("alice")


def test_operator_keys_are_stored_as_given_so_rows_from_before_keep_their_meaning() -> None:
    assert OPERATOR.stored("crm-17") == "crm-17"
    assert OPERATOR.legacy("crm-17") is None


def test_a_member_key_is_stored_apart_from_every_operator_key_and_other_members() -> None:
    longest_key, longest_member = "k" * 128, "m" * 64
    stored = KeyScope(longest_member).stored(longest_key)
    assert len(stored) <= 128  # the column's width
    with pytest.raises(InvalidArgument):  # so no operator key can ever equal it
        validate_reference(stored, "idempotency key")
    assert KeyScope("alice").stored("k") != KeyScope("bob").stored("k")
    assert KeyScope("alice").stored("k") == KeyScope("alice").stored("k")
    assert "alice" not in KeyScope("alice").stored("k")  # no member id in clear
    assert KeyScope("alice").legacy("k") == "k"  # where a key from before scopes lies
