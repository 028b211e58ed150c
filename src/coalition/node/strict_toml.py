"""Strict reading of a parsed TOML document into frozen dataclasses (the typed model).

A dataclass is the model of one TOML table: each field is a key, its annotation the
value's type, a field without a default a required key. ``Annotated`` metadata adds the
checks a type cannot say (``AtLeast``, ``OneOf``, ``Satisfies``). ``read_table`` refuses,
with a ``ConfigError`` naming the file and the key path, any unknown key (with the
nearest known key), a value of the wrong TOML type (a boolean is never an integer, a
string never a number), a value out of range and a missing required key. Nothing is
coerced: an int field takes only a TOML integer; a float field takes an integer or a float.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Annotated, Any, TypeVar

from coalition.errors import InvalidArgument

T = TypeVar("T")


class ConfigError(InvalidArgument):
    """A configuration file that cannot be used as written; the message names the file and
    the key path (``sealer.max_entries``, ``partners[1].grpc``)."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.key = key


@dataclass(frozen=True)
class AtLeast:
    """A number no smaller than ``minimum`` (``exclusive``: strictly greater)."""

    minimum: int | float
    exclusive: bool = False

    def problem(self, value: Any, key: str) -> str | None:
        if self.exclusive and not value > self.minimum:
            return f"{key} must be greater than {self.minimum} (it is {_shown(value)})"
        if not self.exclusive and not value >= self.minimum:
            return f"{key} must be at least {self.minimum} (it is {_shown(value)})"
        return None


@dataclass(frozen=True)
class OneOf:
    """One of ``choices``, compared without case when ``fold_case``."""

    choices: tuple[str, ...]
    fold_case: bool = False

    def problem(self, value: Any, key: str) -> str | None:
        probe = value.upper() if self.fold_case else value
        if probe in self.choices:
            return None
        return f"{key} must be one of {', '.join(self.choices)} (it is {_shown(value)})"


@dataclass(frozen=True)
class Satisfies:
    """A value ``check(value, key)`` accepts; ``check`` raises InvalidArgument saying why
    not, and its message MUST name ``key``."""

    check: Callable[[Any, str], object]

    def problem(self, value: Any, key: str) -> str | None:
        try:
            self.check(value, key)
        except InvalidArgument as exc:
            return str(exc)
        return None


class _Check(typing.Protocol):
    def problem(self, value: Any, key: str) -> str | None: ...


def _non_empty(value: str, key: str) -> None:
    if not value:
        raise InvalidArgument(f"{key} must not be empty")


NonEmpty = Satisfies(_non_empty)


def _toml_kind(value: object) -> str:
    """How TOML calls ``value``'s type, for messages."""
    kinds: list[tuple[type, str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (datetime, "a date-time"),
        (date, "a date"),
        (time, "a time"),
        (list, "an array"),
        (dict, "a table"),
    ]
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _expected(tp: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    if tp is datetime:
        return "a date-time"
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        return "an array"
    if origin in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return _toml_kind(value)
    return repr(value)


def _where(path: str) -> str:
    return f"[{path}]" if path else "the top level"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(self.source, path, problem)

    def table(self, cls: type[T], raw: object, path: str) -> T:
        if not isinstance(raw, dict):
            raise self.fail(path, f"{path} must be a table, not {_toml_kind(raw)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in raw:
            if key not in fields:
                near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                known = ", ".join(fields)
                raise self.fail(
                    _join(path, key),
                    f"unknown key {_join(path, key)!r} in {_where(path)}{hint}; "
                    f"known keys: {known}",
                )
        hints = typing.get_type_hints(cls, include_extras=True)
        values: dict[str, Any] = {}
        for name, field in fields.items():
            key_path = _join(path, name)
            if name in raw:
                values[name] = self.value(hints[name], raw[name], key_path)
            elif field.default is dataclasses.MISSING and (
                field.default_factory is dataclasses.MISSING
            ):
                raise self.fail(key_path, f"missing {_required(hints[name], key_path)}")
        return cls(**values)

    def value(self, tp: Any, raw: object, path: str) -> Any:
        checks: tuple[_Check, ...] = ()
        if typing.get_origin(tp) is Annotated:
            tp, *meta = typing.get_args(tp)
            checks = tuple(meta)
        value = self._typed(tp, raw, path)
        for check in checks:
            problem = check.problem(value, path)
            if problem is not None:
                raise self.fail(path, problem)
        return value

    def _typed(self, tp: Any, raw: object, path: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(options) == 1:
                return self.value(options[0], raw, path)
            for option in options:
                if _is_instance(raw, option):
                    return self.value(option, raw, path)
            raise self._wrong(tp, raw, path)
        if dataclasses.is_dataclass(tp):
            return self.table(tp, raw, path)  # type: ignore[arg-type]
        if origin is tuple:
            item = typing.get_args(tp)[0]
            if not isinstance(raw, list):
                raise self._wrong(tp, raw, path)
            return tuple(self.value(item, v, f"{path}[{n}]") for n, v in enumerate(raw))
        if origin in (dict, Mapping):
            item = typing.get_args(tp)[1]
            if not isinstance(raw, dict):
                raise self._wrong(tp, raw, path)
            return {k: self.value(item, v, _join(path, k)) for k, v in raw.items()}
        if not _is_instance(raw, tp):
            raise self._wrong(tp, raw, path)
        return float(raw) if tp is float else raw  # type: ignore[arg-type]

    def _wrong(self, tp: Any, raw: object, path: str) -> ConfigError:
        return self.fail(
            path, f"{path} must be {_expected(tp)}, not {_toml_kind(raw)} ({_shown(raw)})"
        )


def _required(tp: Any, key: str) -> str:
    """What a missing required key is, in TOML's words."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if dataclasses.is_dataclass(tp):
        return f"the required table [{key}]"
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
        return f"the required [[{key}]] tables"
    return f"the required key {key!r}"


def _is_instance(raw: object, tp: Any) -> bool:
    """Whether a TOML value is of ``tp``, with no coercion (bool is not int)."""
    if tp is bool:
        return type(raw) is bool
    if tp is int:
        return type(raw) is int
    if tp is float:
        return type(raw) in (int, float)
    if tp is str:
        return isinstance(raw, str)
    if tp is datetime:
        return isinstance(raw, datetime)
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _is_instance(raw, typing.get_args(tp)[0])
    if origin is tuple:
        return isinstance(raw, list)
    if origin in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return isinstance(raw, dict)
    return False


def read_table(cls: type[T], raw: Mapping[str, Any], source: str) -> T:
    """``raw`` (a parsed TOML document) as the dataclass ``cls``, or ConfigError.

    ``source`` names the file in messages. Defaults are the dataclass's own; a caller
    MUST NOT re-check what the model declares.
    """
    return _Reader(source).table(cls, dict(raw), "")


__all__ = [
    "AtLeast",
    "ConfigError",
    "NonEmpty",
    "OneOf",
    "Satisfies",
    "read_table",
]
