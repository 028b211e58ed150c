"""A fast test that bytes are RFC 8785 canonical JSON of Coalition's subset, for readers
of many stored documents (the chain audit checks every entry of a chain with it).

``canonical_object(data)`` decodes ``data`` with msgspec (any float literal refused),
encodes the value again with orjson (keys sorted, integers beyond ±(2**53 - 1) refused)
and compares the result with ``data`` byte for byte. It returns the value only when it
is a JSON object (what every stored document is: entries, headers, bundle lines), the
bytes are exactly ``canonical_json(parse_json(data))`` and ``parse_json(data)`` would
return that same value; in every other case it returns None and says nothing more.
A caller MUST treat None as "run the reference check" (``canonical.parse_json`` and
``canonical.canonical_json``), never as a verdict: the reference names the fault, and
it alone decides the cases this test leaves to it.

Why a match proves canonical form (the reference being ``ledger.canonical``):

* msgspec accepts only strict RFC 8259 JSON in UTF-8 (no NaN or Infinity, no byte
  order mark, no invalid UTF-8, no unpaired surrogate escape), and every value it
  returns is of the subset once floats are refused: dicts with str keys, lists, str,
  int, bool, None. Whatever it accepts beyond canonical form (whitespace, escapes
  RFC 8785 does not write, ``-0``, duplicate keys, which it resolves last-wins,
  unsorted members) does not survive the round trip: orjson writes none of them, so the
  bytes differ and the answer is None.
* orjson writes what ``canonical_json`` writes for this subset: no whitespace,
  integers in decimal, strings raw UTF-8 except ``"`` ``\\`` and the control characters
  (``\\b \\f \\n \\r \\t``, the others ``\\u00xx`` in lowercase hex), which is
  ECMAScript's ``JSON.stringify`` (RFC 8785 §3.2.2.2); members sorted by code point.
  Code point order is RFC 8785 §3.2.3's UTF-16 order only inside the Basic Multilingual
  Plane, so bytes holding any character beyond it (a UTF-8 lead byte of 0xF0 or more)
  are left to the reference, as are documents nested deeper than orjson writes.
* Equal bytes then mean ``data`` is the canonical form of the decoded value, and the
  reference's parse of canonical bytes gives the same value (no duplicates to resolve,
  no floats, integers within range).

tests/unit/test_canonical_check.py compares the verdict with the reference's on random
documents (hypothesis) and on every hostile spelling found so far.
"""

from __future__ import annotations

import re
from typing import NoReturn

import msgspec
import orjson

from coalition.ledger.canonical import JsonObject


class _Float(Exception):
    """A float literal: outside the subset."""


def _refuse_float(_text: str) -> NoReturn:
    raise _Float


_decode = msgspec.json.Decoder(float_hook=_refuse_float).decode
_dumps = orjson.dumps
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_BEYOND_BMP = re.compile(rb"[\xf0-\xff]")
"""A UTF-8 lead byte of a character outside the BMP (or an invalid byte)."""
_FAILED = (_Float, msgspec.DecodeError, msgspec.ValidationError, orjson.JSONEncodeError)


def canonical_object(data: bytes) -> JsonObject | None:
    """The object ``data`` encodes when ``data`` is exactly its RFC 8785 canonical form
    (the same value ``parse_json`` returns), else None: the reference check MUST then run
    (see the module docstring: None is no verdict)."""
    if not data.isascii() and _BEYOND_BMP.search(data) is not None:
        return None
    try:
        value = _decode(data)
        if type(value) is not dict or _dumps(value, option=_OPTIONS) != data:
            return None
    except _FAILED:
        return None
    except RecursionError:
        return None
    return value
