"""The fast canonical-form test (ledger.canonical_check) gives the reference's verdict.

The reference is ``ledger.canonical``: bytes are canonical when ``parse_json`` accepts
them and ``canonical_json`` of the value gives them back. ``canonical_object`` MUST
return the reference's value whenever it returns one, and SHOULD return one whenever
the reference accepts an object (it leaves only characters beyond the BMP and very deep
nesting to the reference).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import InvalidArgument
from coalition.ledger.canonical import (
    MAX_SAFE_INTEGER,
    JsonValue,
    canonical_json,
    parse_json,
)
from coalition.ledger.canonical_check import canonical_object

_MISSING = object()


def _reference(data: bytes) -> object:
    """The reference's verdict: the value when ``data`` is canonical, else _MISSING."""
    try:
        value = parse_json(data)
    except InvalidArgument:
        return _MISSING
    try:
        return value if canonical_json(value) == data else _MISSING
    except InvalidArgument:
        return _MISSING


def _beyond_bmp(data: bytes) -> bool:
    return any(byte >= 0xF0 for byte in data)


def _same_verdict(data: bytes) -> None:
    fast = canonical_object(data)
    expected = _reference(data)
    if fast is not None:
        assert expected is not _MISSING, f"fast check accepted non-canonical {data!r}"
        assert fast == expected
        assert json.dumps(fast) == json.dumps(expected)  # bool vs int, key order
    if isinstance(expected, dict) and not _beyond_bmp(data) and data.count(b"[") < 200:
        assert fast is not None, f"fast check refused canonical {data!r}"


_BMP_TEXT = st.text(st.characters(max_codepoint=0xFFFF, codec="utf-8"), max_size=12)
_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_INTS = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.sampled_from(
    [0, -1, 1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 10**15, -(10**15)]
)


def _values(text: st.SearchStrategy[str]) -> st.SearchStrategy[JsonValue]:
    scalars = st.none() | st.booleans() | _INTS | text
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
        max_leaves=30,
    )


@settings(max_examples=400, deadline=None)
@given(_values(_BMP_TEXT))
def test_canonical_bytes_of_any_object_are_accepted_with_that_object(value: JsonValue) -> None:
    data = canonical_json({"v": value})
    assert canonical_object(data) == {"v": value}
    _same_verdict(data)
    _same_verdict(canonical_json(value))


@settings(max_examples=300, deadline=None)
@given(_values(_ANY_TEXT))
def test_values_beyond_the_bmp_get_the_same_verdict(value: JsonValue) -> None:
    _same_verdict(canonical_json(value))
    _same_verdict(canonical_json({"v": value}))


def _spellings(value: JsonValue) -> list[bytes]:
    """Other spellings of ``value``: Python's, ASCII-escaped, spaced, indented,
    unsorted."""
    out = [
        json.dumps(value).encode(),
        json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True).encode(),
        json.dumps(value, ensure_ascii=False, sort_keys=True).encode(),
        json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True).encode(),
        json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(),
        b" " + canonical_json(value),
        canonical_json(value) + b"\n",
    ]
    return out


@settings(max_examples=300, deadline=None)
@given(_values(_ANY_TEXT))
def test_other_spellings_get_the_same_verdict(value: JsonValue) -> None:
    for data in _spellings(value) + _spellings({"v": value, "a": [value]}):
        _same_verdict(data)


@settings(max_examples=500, deadline=None)
@given(_values(_BMP_TEXT), st.data())
def test_damaged_bytes_get_the_same_verdict(value: JsonValue, data: st.DataObject) -> None:
    """One byte changed, inserted or removed anywhere: the verdicts still agree."""
    raw = bytearray(canonical_json({"k": value, "a": "\u00e9\n"}))
    position = data.draw(st.integers(0, len(raw)))
    byte = data.draw(st.integers(0, 255))
    how = data.draw(st.sampled_from(["set", "insert", "delete"]))
    if how == "insert" or position == len(raw):
        raw.insert(position, byte)
    elif how == "set":
        raw[position] = byte
    else:
        del raw[position]
    _same_verdict(bytes(raw))


HOSTILE = {
    "non-canonical order": b'{"b":1,"a":2}',
    "nested order": b'{"a":{"d":1,"c":2}}',
    "whitespace between members": b'{"a":1, "b":2}',
    "whitespace around a colon": b'{"a" :1}',
    "leading whitespace": b' {"a":1}',
    "trailing newline": b'{"a":1}\n',
    "tab": b'{"a":\t1}',
    "escaped solidus": b'{"a":"\\/"}',
    "needless unicode escape": b'{"a":"\\u0041"}',
    "uppercase hex escape": b'{"a":"\\u001F"}',
    "unicode escape of a short escape": b'{"a":"\\u000a"}',
    "escaped non-ascii": b'{"a":"\\u00e9"}',
    "escaped key": b'{"\\u0061":1}',
    "raw control character": b'{"a":"\x01"}',
    "float": b'{"a":1.0}',
    "float exponent": b'{"a":1e2}',
    "float negative exponent": b'{"a":-1E-2}',
    "float zero": b'{"a":0.0}',
    "NaN": b'{"a":NaN}',
    "Infinity": b'{"a":Infinity}',
    "negative zero": b'{"a":-0}',
    "leading zero": b'{"a":01}',
    "plus sign": b'{"a":+1}',
    "big integer": b'{"a":9007199254740992}',
    "big negative integer": b'{"a":-9007199254740992}',
    "huge integer": b'{"a":' + b"9" * 40 + b"}",
    "very huge integer": b'{"a":' + b"9" * 5000 + b"}",
    "integer beyond 64 bits": b'{"a":18446744073709551616}',
    "duplicate keys": b'{"a":1,"a":1}',
    "duplicate keys, different values": b'{"a":1,"a":2}',
    "duplicate keys, nested": b'{"x":{"a":1,"a":1}}',
    "lone high surrogate escape": b'{"a":"\\ud800"}',
    "lone low surrogate escape": b'{"a":"\\udc00"}',
    "lone surrogate in a key": b'{"\\ud800":1}',
    "surrogate pair escape": b'{"a":"\\ud83d\\ude00"}',
    "raw surrogate bytes": b'{"a":"\xed\xa0\x80"}',
    "invalid utf-8": b'{"a":"\xff"}',
    "overlong utf-8": b'{"a":"\xc0\xaf"}',
    "truncated utf-8": b'{"a":"\xc3"}',
    "byte order mark": b'\xef\xbb\xbf{"a":1}',
    "trailing comma": b'{"a":1,}',
    "trailing comma in array": b"[1,]",
    "single quotes": b"{'a':1}",
    "unquoted key": b"{a:1}",
    "trailing garbage": b'{"a":1}x',
    "two documents": b'{"a":1}{"a":1}',
    "empty": b"",
    "true spelled True": b'{"a":True}',
    "comment": b'{"a":1/*x*/}',
    "non-BMP key order": '{"\ufb33":1,"\U0001f600":2}'.encode(),
    "non-BMP key order, canonical": '{"\U0001f600":2,"\ufb33":1}'.encode(),
    "private use key after non-BMP": '{"\ue000":1,"\U0001f600":2}'.encode(),
    "non-BMP value": '{"a":"\U0001f600"}'.encode(),
    "DEL and line separator raw": '{"a":"\x7f\u2028"}'.encode(),
    "deep nesting": b'{"a":' + b"[" * 300 + b"]" * 300 + b"}",
    "very deep nesting": b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "an array document": b"[1]",
    "a string document": b'"a"',
    "null": b"null",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_variant_gets_the_reference_verdict(name: str) -> None:
    _same_verdict(HOSTILE[name])


_CANONICAL = {"DEL and line separator raw", "non-BMP key order, canonical", "deep nesting"}


@pytest.mark.parametrize("name", sorted(set(HOSTILE) - _CANONICAL))
def test_hostile_variant_is_refused(name: str) -> None:
    """Every hostile spelling is left to the reference (which names the fault), and so
    are the canonical ones this check does not decide (beyond the BMP, not an object)."""
    assert canonical_object(HOSTILE[name]) is None


def test_canonical_hostile_looking_spellings_get_the_reference_value() -> None:
    assert canonical_object(HOSTILE["DEL and line separator raw"]) == {"a": "\x7f\u2028"}
    assert _reference(HOSTILE["non-BMP key order, canonical"]) is not _MISSING
    assert canonical_object(HOSTILE["non-BMP key order, canonical"]) is None  # left to it


def test_canonical_spellings_are_accepted() -> None:
    for data, value in [
        (b'{"a":"\\u001f\\n\\"\\\\"}', {"a": '\x1f\n"\\'}),
        ('{"a":"\x7f\u2028é"}'.encode(), {"a": "\x7f\u2028é"}),
        (b'{"a":9007199254740991,"b":-9007199254740991}', {"a": 2**53 - 1, "b": 1 - 2**53}),
        (b'{"a":[true,false,null,0,""],"b":{}}', {"a": [True, False, None, 0, ""], "b": {}}),
    ]:
        assert canonical_object(data) == value
        assert _reference(data) == value
