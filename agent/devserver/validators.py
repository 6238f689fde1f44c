"""Argument validators in the manner of Convex's `v` (from `convex/values`).

Each served function declares its arguments as Connvo's source declares them (`v.id("meetings")`,
`v.string()`, `v.optional(...)`, ...), so the dev backend accepts and refuses exactly what the real
deployment does: no length limits, `null` is not an absent optional field, an ID of another table
does not match `v.id(...)`. A failure raises `ArgumentValidationError` whose text reads like
Convex's (`Value does not match validator.`, `Path:`, `Value:`, `Validator:`), with the path of the
first failure found (fields in declaration order, then extra fields).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from agent.devserver import ids

MAX_SHOWN_VALUE_CHARS = 80
# JavaScript numbers are doubles: integers beyond this are rounded (and SQLite cannot bind them).
_EXACT_INT_LIMIT = 2**53


class ArgumentValidationError(Exception):
    """Arguments that do not match the function's validator; `str()` is Convex's text."""


def show(value: Any) -> str:
    """A value as the error text shows it: compact JSON, cut short when long."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if len(text) > MAX_SHOWN_VALUE_CHARS:
        text = text[: MAX_SHOWN_VALUE_CHARS - 3] + "..."
    return text


def _report(headline: str, path: str, shown: list[str]) -> ArgumentValidationError:
    lines = [f"ArgumentValidationError: {headline}"]
    if path:
        lines.append(f"Path: {path}")
    lines += shown
    return ArgumentValidationError("\n".join(lines))


class Validator:
    """One validator; `check` returns the value to use (numbers normalised) or raises."""

    optional = False

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def mismatch(self, value: Any, path: str) -> ArgumentValidationError:
        return _report(
            "Value does not match validator.",
            path,
            [f"Value: {show(value)}", f"Validator: {self.text()}"],
        )


class _Id(Validator):
    def __init__(self, table: str) -> None:
        self.table = table

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str) or not ids.is_id_of(value, self.table):
            raise self.mismatch(value, path)
        return value

    def text(self) -> str:
        return f'v.id("{self.table}")'


class _String(Validator):
    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise self.mismatch(value, path)
        return value

    def text(self) -> str:
        return "v.string()"


class _Number(Validator):
    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.mismatch(value, path)
        if isinstance(value, int) and abs(value) > _EXACT_INT_LIMIT:
            try:
                value = float(value)  # what a JavaScript client and server would hold
            except OverflowError:
                raise self.mismatch(value, path) from None
        if isinstance(value, float) and not math.isfinite(value):  # "1e400" parses to inf
            raise self.mismatch(value, path)
        return value

    def text(self) -> str:
        return "v.number()"


class _Boolean(Validator):
    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, bool):
            raise self.mismatch(value, path)
        return value

    def text(self) -> str:
        return "v.boolean()"


class _Literal(Validator):
    def __init__(self, value: str) -> None:
        self.value = value

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str) or value != self.value:
            raise self.mismatch(value, path)
        return value

    def text(self) -> str:
        return f"v.literal({json.dumps(self.value)})"


class _Union(Validator):
    def __init__(self, members: tuple[Validator, ...]) -> None:
        self.members = members

    def check(self, value: Any, path: str) -> Any:
        for member in self.members:
            try:
                return member.check(value, path)
            except ArgumentValidationError:
                continue
        raise self.mismatch(value, path)

    def text(self) -> str:
        return f"v.union({', '.join(m.text() for m in self.members)})"


class _Optional(Validator):
    """Only meaningful as an object field: the field may be absent (but not null)."""

    optional = True

    def __init__(self, inner: Validator) -> None:
        self.inner = inner

    def check(self, value: Any, path: str) -> Any:
        return self.inner.check(value, path)

    def text(self) -> str:
        return f"v.optional({self.inner.text()})"


class ObjectValidator(Validator):
    def __init__(self, fields: Mapping[str, Validator]) -> None:
        self.fields = dict(fields)

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.mismatch(value, path)
        checked: dict[str, Any] = {}
        for name, validator in self.fields.items():
            if name in value:
                checked[name] = validator.check(value[name], f"{path}.{name}")
            elif not validator.optional:
                raise _report(
                    f"Object is missing the required field `{name}`. Consider wrapping the field "
                    "validator in `v.optional(...)` if this is expected.",
                    path,
                    [f"Object: {show(value)}", f"Validator: {self.text()}"],
                )
        for name in value:
            if name not in self.fields:
                raise _report(
                    f"Object contains extra field `{name}` that is not in the validator.",
                    path,
                    [f"Object: {show(value)}", f"Validator: {self.text()}"],
                )
        return checked

    def text(self) -> str:
        inner = ", ".join(f"{name}: {v.text()}" for name, v in self.fields.items())
        return f"v.object({{{inner}}})"


class _Array(Validator):
    def __init__(self, item: Validator) -> None:
        self.item = item

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise self.mismatch(value, path)
        return [self.item.check(item, f"{path}[{i}]") for i, item in enumerate(value)]

    def text(self) -> str:
        return f"v.array({self.item.text()})"


class _Record(Validator):
    def __init__(self, key: Validator, value: Validator) -> None:
        self.key = key
        self.value = value

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.mismatch(value, path)
        checked: dict[str, Any] = {}
        for name, item in value.items():
            self.key.check(name, path)
            checked[name] = self.value.check(item, f"{path}.{name}")
        return checked

    def text(self) -> str:
        return f"v.record({self.key.text()}, {self.value.text()})"


class _V:
    """The builders, spelled as in Convex: `v.object({"meetingId": v.id("meetings")})`."""

    def id(self, table: str) -> Validator:
        if table not in ids.TABLES:
            raise ValueError(f"unknown table {table!r}")
        return _Id(table)

    def string(self) -> Validator:
        return _String()

    def number(self) -> Validator:
        return _Number()

    def boolean(self) -> Validator:
        return _Boolean()

    def literal(self, value: str) -> Validator:
        return _Literal(value)

    def union(self, *members: Validator) -> Validator:
        return _Union(members)

    def literals(self, *values: str) -> Validator:
        """`v.union(v.literal(a), v.literal(b), ...)`."""
        return _Union(tuple(_Literal(value) for value in values))

    def optional(self, inner: Validator) -> Validator:
        return _Optional(inner)

    def object(self, fields: Mapping[str, Validator]) -> ObjectValidator:
        return ObjectValidator(fields)

    def array(self, item: Validator) -> Validator:
        return _Array(item)

    def record(self, key: Validator, value: Validator) -> Validator:
        return _Record(key, value)


v = _V()


def validate_args(validator: ObjectValidator, args: dict[str, Any]) -> dict[str, Any]:
    """The checked arguments (absent optional fields stay absent); ArgumentValidationError."""
    checked: dict[str, Any] = validator.check(args, "")
    return checked
