"""RFC 8785 canonical JSON for Coalition's subset."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import UTC, datetime

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import InvalidArgument
from coalition.ledger.canonical import JsonValue, canonical_json, parse_json


class Colour(enum.Enum):
    RED = "red"


def test_rfc8785_sorting_example() -> None:
    # RFC 8785 §3.2.3: members sorted by UTF-16 code units, so the emoji (D83D DE00)
    # sorts before U+FB33 although its code point is larger.
    data: JsonValue = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(data) == expected.encode("utf-8")


def test_non_bmp_keys_nested() -> None:
    data: JsonValue = [{"\ufb33": 1, "\U0001f600": {"b": 2, "a": [True, None]}}]
    expected = '[{"\U0001f600":{"a":[true,null],"b":2},"\ufb33":1}]'
    assert canonical_json(data) == expected.encode()


def test_rfc8785_string_example() -> None:
    # RFC 8785 §3.2.2 example, without its floating-point numbers.
    text = r'{"string": "\u20ac$\u000F\u000aA' + "'" + r'\u0042\u0022\u005c\\\"\/",'
    text += ' "literals": [null, true, false]}'
    expected = '{"literals":[null,true,false],"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    assert canonical_json(parse_json(text)) == expected.encode()


def _js_stringify(s: str) -> str:
    """ECMAScript JSON.stringify's QuoteJSONString (ES2019+) for well-formed strings."""
    short = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif c in short:
            out.append(short[c])
        elif c < 0x20:
            out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def test_escaping_matches_json_stringify_for_every_ascii_and_some_more() -> None:
    chars = [chr(c) for c in range(0x80)] + ["\u2028", "\u2029", "\ufeff", "\U0010ffff"]
    for ch in chars:
        assert canonical_json(ch) == _js_stringify(ch).encode(), repr(ch)


@given(st.text())
def test_escaping_matches_json_stringify(s: str) -> None:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        with pytest.raises(InvalidArgument):
            canonical_json(s)
    else:
        assert canonical_json(s) == _js_stringify(s).encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), children)
    ),
    max_leaves=20,
)


def _utf16_sorted(value: JsonValue) -> JsonValue:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return {k: _utf16_sorted(value[k]) for k in keys}
    if isinstance(value, list):
        return [_utf16_sorted(v) for v in value]
    return value


@given(json_values)
def test_round_trip_and_order(value: JsonValue) -> None:
    data = canonical_json(value)
    assert parse_json(data) == value
    assert canonical_json(parse_json(data)) == data
    reference = json.dumps(_utf16_sorted(value), ensure_ascii=False, separators=(",", ":"))
    assert data == reference.encode()


@pytest.mark.parametrize("bad", [1.0, 0.5, {"a": [1, 2.5]}, float("nan")])
def test_floats_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="floating-point numbers are not allowed"):
        canonical_json(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [2**53, -(2**53), 10**30])
def test_big_ints_refused(n: int) -> None:
    with pytest.raises(InvalidArgument):
        canonical_json({"n": n})
    with pytest.raises(InvalidArgument):
        parse_json(f'{{"n": {n}}}')
    assert canonical_json(2**53 - 1) == b"9007199254740991"
    assert canonical_json(-(2**53) + 1) == b"-9007199254740991"


@pytest.mark.parametrize("bad", [{1: "x"}, {None: 1}, (1, 2), {1, 2}, b"x", object()])
def test_other_types_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        canonical_json(bad)  # type: ignore[arg-type]


def test_lone_surrogates_refused() -> None:
    with pytest.raises(InvalidArgument):
        canonical_json("a\ud800")
    with pytest.raises(InvalidArgument):
        canonical_json({"\udc00": 1})
    with pytest.raises(InvalidArgument):
        parse_json(b'["\\ud800"]')
    with pytest.raises(InvalidArgument):
        parse_json('{"\\uDFFF": 1}')
    with pytest.raises(InvalidArgument):
        parse_json(b'"\xed\xa0\x80"')  # a surrogate encoded as UTF-8 is not UTF-8
    assert parse_json(b'"\\ud83d\\ude00"') == "\U0001f600"


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '[{"x": {"b": 1, "b": 1}}]',
        "1.0",
        "1e3",
        "-0.0",
        "NaN",
        "[Infinity]",
        "-Infinity",
        "{",
        "",
        "[1,]",
        '"\\x"',
    ],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_json(text)
    with pytest.raises(InvalidArgument):
        parse_json(text.encode())


def test_parse_accepts_subset() -> None:
    assert parse_json(' {"b": [1, -2, true, false, null], "a": "x"} ') == {
        "b": [1, -2, True, False, None],
        "a": "x",
    }
    with pytest.raises(InvalidArgument):
        parse_json(b"\xff")


def test_an_integer_of_thousands_of_digits_is_refused_not_a_crash() -> None:
    with pytest.raises(InvalidArgument, match="outside"):
        parse_json(b'{"amount":' + b"9" * 5000 + b"}")
    with pytest.raises(InvalidArgument, match="outside"):
        parse_json(b"[-" + b"1" * 20 + b"]")


# The fast encoder (orjson, code point order) against the RFC 8785 reference package.

_text = st.text(st.characters(exclude_categories=["Cs"]))
_ascii = st.text(st.characters(max_codepoint=0x7F))
_safe_ints = st.integers(-(2**53) + 1, 2**53 - 1)
ints_and_strings = st.recursive(
    _safe_ints | _text | _ascii,
    lambda children: st.lists(children) | st.dictionaries(_ascii | _text, children, max_size=8),
    max_leaves=30,
)


@settings(max_examples=600, deadline=None)
@given(ints_and_strings)
def test_bytes_are_the_rfc8785_reference_bytes(value: JsonValue) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_ascii, _safe_ints | _ascii, min_size=1, max_size=20))
def test_ascii_keyed_objects_are_the_rfc8785_reference_bytes(value: JsonValue) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "bad",
    [
        1.0,  # RFC 8785 would write 1
        [1e21],  # ... 1e+21
        {"a": float("inf")},
        -0.0,
        (1, 2),  # orjson would write a tuple as an array
        {"a": orjson.Fragment(b"1.5")},  # ... and a fragment as it stands
        {"a": uuid.UUID(int=1)},
        {"a": Colour.RED},
        {"a": datetime(2026, 1, 1, tzinfo=UTC)},
        {"n": 2**53},
        {"n": -(2**63)},
        {2: "non-string key"},
        "lone \udfff surrogate",
        {"\ud800": "lone surrogate key"},
    ],
)
def test_what_rfc8785_would_encode_differently_is_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        canonical_json(bad)  # type: ignore[arg-type]


def test_nesting_beyond_orjsons_limit_encodes_as_before() -> None:
    deep: JsonValue = 1
    for _ in range(400):
        deep = [deep]
    assert canonical_json(deep) == b"[" * 400 + b"1" + b"]" * 400
