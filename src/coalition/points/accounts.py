"""Pseudonymous member accounts and the identifiers a request may carry.

Partners replicate each other's chains, so the ledger never holds a member id: it holds
HMAC-SHA256(program secret, member id), which only the member's own program can compute.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from coalition.errors import InvalidArgument, quoted

MAX_MEMBER_ID = 64
MEMBER_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{MAX_MEMBER_ID - 1}}}")
"""A member id (the whole string): 1-64 of ``A-Z a-z 0-9 . _ : @ -``, alphanumeric first.
The HTTP schema takes its pattern from here (``api.http.fields``)."""
MAX_REFERENCE = 128
REFERENCE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:/#-]{{0,{MAX_REFERENCE - 1}}}")
"""A reference, idempotency key, operator or conversion id (the whole string): 1-128 of
``A-Z a-z 0-9 . _ : / # -``, alphanumeric first."""
_ACCOUNT = re.compile(r"[0-9a-f]{64}")


def validate_member_id(member_id: str) -> str:
    """Return ``member_id`` if it is 1-64 characters of ``A-Z a-z 0-9 . _ : @ -``."""
    if not isinstance(member_id, str) or not MEMBER_ID.fullmatch(member_id):
        raise InvalidArgument(
            f"malformed member id {quoted(member_id)}: use 1-{MAX_MEMBER_ID} letters, digits "
            "or . _ : @ -"
        )
    return member_id


def validate_reference(reference: str, what: str = "reference") -> str:
    """Return ``reference`` if it is 1-128 characters of ``A-Z a-z 0-9 . _ : / # -``."""
    if not isinstance(reference, str) or not REFERENCE.fullmatch(reference):
        raise InvalidArgument(
            f"malformed {what} {quoted(reference)}: use 1-{MAX_REFERENCE} letters, digits "
            "or . _ : / # -"
        )
    return reference


def validate_account(account: str) -> str:
    """Return ``account`` if it is a 64-digit lowercase hex account id."""
    if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
        raise InvalidArgument(f"malformed account id {quoted(account)}: expected 64 lowercase hex")
    return account


def account_id(secret: bytes, member_id: str) -> str:
    """The ledger's account id for ``member_id``: hex HMAC-SHA256 under the program secret."""
    validate_member_id(member_id)
    if len(secret) < 16:
        raise InvalidArgument("the account secret must be at least 16 bytes")
    return hmac.new(secret, member_id.encode(), hashlib.sha256).hexdigest()
