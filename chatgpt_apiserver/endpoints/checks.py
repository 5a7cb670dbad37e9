"""Checks for single keywords of a JSON Schema, and the wording of their error messages."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Optional

import voluptuous as vol

Check = Callable[[Any], Any]
JSON_TYPES = ("string", "integer", "number", "boolean", "object", "array", "null")
# The Python classes of decoded JSON whose every value has the type (a float may not be an integer).
CLASSES_OF: dict[str, frozenset[type]] = {
    "string": frozenset({str}), "integer": frozenset({int}), "number": frozenset({int, float}),
    "boolean": frozenset({bool}), "object": frozenset({dict}), "array": frozenset({list}),
    "null": frozenset({type(None)}), "any": frozenset({str, int, float, bool, dict, list, type(None)})}
_CLASSES: dict[str, Any] = {"string": str, "boolean": bool, "object": dict, "array": list}


def json_type(value: Any) -> str:
    """The JSON Schema type of a decoded value; a float without a fraction is an integer."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if whole_number(value) is not None else "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else "unknown"


def whole_number(value: Any) -> Optional[int]:
    """`value` as an int where JSON Schema calls it an integer (`2` and `2.0` alike), else None.

    Validation lets `2.0` through wherever OpenAI's schema says integer, so whatever reads such a field after
    validation reads it through here."""
    kind = type(value)  # (exactly: a bool is no integer)
    if kind is int:
        return value  # type: ignore[no-any-return]
    return int(value) if kind is float and value.is_integer() else None


def meet(one: Optional[frozenset[str]], other: Optional[frozenset[str]]) -> Optional[frozenset[str]]:
    """Both sets of JSON types (None: any type)."""
    return other if one is None else one if other is None else one & other


def shown(value: Any, limit: int = 40) -> str:
    """A short rendering of a client's value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number(value: float) -> str:
    if abs(value) < 1e15 and float(value).is_integer():
        return str(int(value))
    try:
        return f"{float(value):g}"
    except OverflowError:  # an integer beyond any float
        return "a very large number"


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def one_of(values: Iterable[Any]) -> str:
    """"'a'" or "one of 'a', 'b'"."""
    shown_values = list(dict.fromkeys(_literal(value) for value in values))
    return shown_values[0] if len(shown_values) == 1 else "one of " + ", ".join(shown_values)


def join(words: Iterable[str]) -> str:
    """"a, b or c", without repeats."""
    unique = list(dict.fromkeys(words))
    return unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " or " + unique[-1]


def plural(what: str) -> str:
    """"a string" -> "strings", "one of 'a', 'b'" -> "values from 'a', 'b'"."""
    if what.startswith(("a ", "an ")):
        head, _, rest = what.split(" ", 1)[1].partition(" ")
        return f"{head}s {rest}".rstrip()
    return "values from " + what.removeprefix("one of ") if what.startswith("one of ") else f"{what} values"


def accept(value: Any) -> Any:
    """The check of a schema without constraints."""
    return value


def every(steps: list[Check]) -> Check:
    """A check that runs each of `steps`."""
    def check(value: Any) -> Any:
        for step in steps:
            step(value)
        return value
    return check


def type_check(types: frozenset[str], what: Callable[[], str]) -> Check:
    """`type`: the value's JSON type is one of `types`; `what` words the error, asked only on failure."""
    single = _CLASSES.get(next(iter(types))) if len(types) == 1 else None
    if single is not None:
        def check_one(value: Any) -> Any:
            if not isinstance(value, single):
                raise vol.Invalid(f"must be {what()}")
            return value
        return check_one

    def check(value: Any) -> Any:
        if json_type(value) not in types:
            raise vol.Invalid(f"must be {what()}")
        return value
    return check


def enum_check(values: tuple[Any, ...], nullable: bool) -> Check:
    """`enum`/`const`, comparing as JSON does (true is not 1); `nullable` lets null through as well."""
    texts = frozenset(value for value in values if isinstance(value, str))
    others = [value for value in values if not isinstance(value, str)]
    nullable = nullable or None in others

    def check(value: Any) -> Any:
        if isinstance(value, str):
            if value in texts:
                return value
        elif (value is None and nullable) or any(json_type(value) == json_type(other) and value == other
                                                 for other in others):
            return value
        raise vol.Invalid(f"must be {one_of(values)}, got {shown(value)}")
    return check


def bounds_check(low: float, low_open: bool, high: float, high_open: bool) -> Check:
    """`minimum`/`maximum` and their exclusive forms, for numbers only."""
    limits = []
    if low > -math.inf:
        limits.append(f"{'greater than' if low_open else 'at least'} {_number(low)}")
    if high < math.inf:
        limits.append(f"{'less than' if high_open else 'at most'} {_number(high)}")
    closed = len(limits) == 2 and not low_open and not high_open
    rule = f"between {_number(low)} and {_number(high)}" if closed else " and ".join(limits)

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise vol.Invalid(f"must be {rule}, got {_number(value)}")
        return value
    return check


def length_check(least: int, most: float, pattern: Optional[re.Pattern[str]],
                 what: Optional[Callable[[], str]] = None) -> Check:
    """`minLength`/`maxLength` (in code points, as JSON Schema counts) and `pattern`, for strings only;
    with `what`, anything but a string fails too."""
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            if what is not None:
                raise vol.Invalid(f"must be {what()}")
            return value
        if len(value) < least:
            raise vol.Invalid(f"must be at least {least} character{'s' if least > 1 else ''} long")
        if len(value) > most:
            raise vol.Invalid(f"must be at most {_number(most)} characters long, got {len(value)}")
        if pattern is not None and pattern.search(value) is None:
            raise vol.Invalid(f"must match the pattern {pattern.pattern!r}")
        return value
    return check
