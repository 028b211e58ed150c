"""Request hashes are stored beside idempotency keys, so their bytes never change: the
orjson fast path gives the hash of the ``json`` encoding it replaced, for every character
and every request shape (the others take the ``json`` path)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from coalition.node.sequencer import request_hash


def reference_hash(request: Any) -> str:
    """The encoding request hashes were first stored with."""
    data = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def test_every_character_hashes_as_the_json_encoding_did() -> None:
    # orjson writes every character from U+0080 as UTF-8, never escaped, so past ASCII
    # only the json path runs: all of the first 2,048 and a stride of the rest suffice.
    codes = [*range(0x800), *range(0x800, 0x110000, 997)]
    for code in codes:
        if 0xD800 <= code <= 0xDFFF:
            continue
        text = f"a{chr(code)}b"
        request = {"op": "earn", "reference": text, chr(code) if code > 0x20 else "k": 1}
        assert request_hash(request) == reference_hash(request), hex(code)


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "earn", "member_id": "ann", "spend_minor": 1200, "category": ""},
        {"op": "earn", "note": "café ☕ 𝄞", "amount": -5},
        {"op": "x", "flag": True, "none": None, "zero": 0},
        {"op": "big", "amount": 2**70},  # beyond orjson's 64-bit integers
        {"op": "neg", "amount": -(2**63)},
        {"op": "float", "amount": 1e16},  # floats take the json path (repr differs)
        {"op": "nested", "lot": {"id": "x", "n": [1, 2, {"b": 1, "a": 2}]}},
        {"z": 1, "a": 2, "\x7f": "del", "\u00e9": "é"},
        {1: "int key"},  # json writes "1"; orjson refuses non-string keys
        {"tab": 'a\tb\n\r\x00\x1f"\\/'},
    ],
)
def test_each_request_shape_hashes_as_the_json_encoding_did(request_: Any) -> None:
    assert request_hash(request_) == reference_hash(request_)
