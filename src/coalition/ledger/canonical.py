"""Canonical JSON per RFC 8785 (JCS) for Coalition's JSON subset.

The subset: objects with string keys, arrays, strings, booleans, null and integers with
``|n| <= 2**53 - 1`` (RFC 8785 §3.2.2.3 / I-JSON, RFC 7493 §2.2). Floating-point numbers
are refused outright: amounts are integers and rates are pairs of integers, so no value
ever needs the ES number serialisation of RFC 8785 §3.2.2.3.

* §3.2.2.2 strings are escaped as ECMAScript ``JSON.stringify`` does, which is what
  ``orjson`` and Python's ``json`` with ``ensure_ascii=False`` write (tested character
  by character, and against the ``rfc8785`` reference package by a property test);
  strings holding lone surrogates cannot be UTF-8 encoded and are refused (§3.2.2.2).
* §3.2.3 object members are sorted by the UTF-16 code units of their names. For keys
  inside the Basic Multilingual Plane that equals code point order, so the fast path is
  ``orjson.dumps`` with ``OPT_SORT_KEYS`` (code point order); only keys with non-BMP
  characters take the slow path.
* §3.2.4 the output is UTF-8, with no whitespace.

What is refused is decided before any encoder runs (``_check``: floats, NaN, integers
beyond 2**53 - 1, non-string keys, other types), because orjson itself would write
floats, tuples, enums and NaN (as ``null``). Whatever orjson declines beyond that (lone
surrogates, nesting deeper than its 254 levels) takes the ``json`` path, which refuses
or encodes it exactly as before.
"""

from __future__ import annotations

import json
import re
from typing import NoReturn, TypeAlias

import orjson

from coalition.errors import InvalidArgument, quoted

JsonValue: TypeAlias = "bool | int | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer every JSON implementation (IEEE 754 doubles) represents exactly."""

_dumps = json.JSONEncoder(
    ensure_ascii=False,
    separators=(",", ":"),
    sort_keys=True,
    check_circular=False,
    allow_nan=False,
).encode
_encode_string = json.JSONEncoder(ensure_ascii=False).encode
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def canonical_json(value: JsonValue) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``.

    Raises InvalidArgument for anything outside the subset: floats, integers beyond
    2**53 - 1, non-string keys, lone surrogates, other Python types.
    """
    try:
        _check(value)
        try:
            data = orjson.dumps(value, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:  # lone surrogates, deep nesting: json decides
            data = _dumps(value).encode("utf-8")
        if not data.isascii() and _has_non_bmp_key(value):
            data = _slow(value).encode("utf-8")
        return data
    except UnicodeEncodeError:
        raise InvalidArgument("strings must not contain lone surrogates") from None
    except RecursionError:
        raise InvalidArgument("JSON value is nested too deeply") from None


def _check(value: object) -> None:
    """Validate ``value`` against the subset, iteratively (this is on the ingest hot path)."""
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int or (isinstance(item, int) and not isinstance(item, bool)):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:  # type: ignore[operator]
                raise InvalidArgument(f"integer {item} is outside ±(2**53 - 1)")
        elif kind is dict or isinstance(item, dict):
            for key in item:  # type: ignore[attr-defined]
                if not isinstance(key, str):
                    raise InvalidArgument(f"object keys must be strings, not {type(key).__name__}")
            extend(item.values())  # type: ignore[attr-defined]
        elif kind is list or isinstance(item, list):
            extend(item)  # type: ignore[arg-type]
        elif isinstance(item, float):
            raise InvalidArgument("floating-point numbers are not allowed")
        elif not isinstance(item, str):
            raise InvalidArgument(f"{kind.__name__} is not a JSON value")


def _has_non_bmp_key(value: JsonValue) -> bool:
    """True if some object key has a character outside the Basic Multilingual Plane."""
    if isinstance(value, dict):
        return any(
            (key and max(key) > "\uffff") or _has_non_bmp_key(item) for key, item in value.items()
        )
    if isinstance(value, list):
        return any(_has_non_bmp_key(item) for item in value)
    return False


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _slow(value: JsonValue) -> str:
    """Serialise with object members sorted by UTF-16 code units (already validated)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        inner = ",".join(_encode_string(k) + ":" + _slow(v) for k, v in items)
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ",".join(_slow(v) for v in value) + "]"
    return _dumps(value)


def _refuse_float(text: str) -> NoReturn:
    raise InvalidArgument(f"floating-point numbers are not allowed: {quoted(text)}")


def _refuse_constant(text: str) -> NoReturn:
    raise InvalidArgument(f"{text} is not a JSON value (NaN and Infinity are not JSON)")


def _parse_int(text: str) -> int:
    if len(text) > 17:  # beyond any safe integer; int() of thousands of digits raises
        raise InvalidArgument(f"integer {text[:20]}... is outside ±(2**53 - 1)")
    n = int(text)
    if -MAX_SAFE_INTEGER <= n <= MAX_SAFE_INTEGER:
        return n
    raise InvalidArgument(f"integer {text} is outside ±(2**53 - 1)")


def _object(pairs: list[tuple[str, JsonValue]]) -> JsonObject:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise InvalidArgument(f"duplicate object key {quoted(k)}")
            seen.add(k)
    return obj


_decoder = json.JSONDecoder(
    object_pairs_hook=_object,
    parse_float=_refuse_float,
    parse_int=_parse_int,
    parse_constant=_refuse_constant,
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(data: bytes | str) -> JsonValue:
    """Parse JSON text (UTF-8 when bytes) into the subset ``canonical_json`` accepts.

    Raises InvalidArgument for invalid JSON, floats, NaN/Infinity, integers beyond
    2**53 - 1, duplicate keys and lone surrogates (escaped or not).
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"JSON text is not valid UTF-8: {exc.reason}") from None
    else:
        text = data
    try:
        value: JsonValue = _decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("JSON value is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text) or not isinstance(data, bytes | bytearray):
        _check_strings(value)
    return value


def _check_strings(value: JsonValue) -> None:
    if isinstance(value, str):
        _check_str(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_str(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def _check_str(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("strings must not contain lone surrogates") from None
