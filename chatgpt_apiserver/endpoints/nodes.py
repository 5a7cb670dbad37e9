"""Compiled schemas: a `Node` per schema, whose `check` is a voluptuous validator built on first use.

`check(value)` returns the value or raises `vol.Invalid` with a path relative to the value. A `$ref`
compiles to its definition's node, so a recursive schema is a cycle of nodes; checks are built lazily
and a cycle back to a node being built calls through it, so nothing recurses forever.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import voluptuous as vol

from .checks import (
    CLASSES_OF,
    Check,
    accept,
    bounds_check,
    enum_check,
    every,
    join,
    json_type,
    length_check,
    meet,
    one_of,
    plural,
    shown,
    type_check,
)
from .choice import Choice

T = TypeVar("T")


def _guarded(default: Any) -> Callable[[Callable[[Node], T]], Callable[[Node], T]]:
    """Cache a derived fact of a node; a cycle back to the same node sees `default`."""
    def wrap(method: Callable[[Node], T]) -> Callable[[Node], T]:
        name = method.__name__

        def run(node: Node) -> T:
            if name not in node.facts:
                node.facts[name] = default
                try:
                    node.facts[name] = method(node)
                except BaseException:  # a RecursionError deep in a request must not leave the default
                    del node.facts[name]
                    raise
            result: T = node.facts[name]
            return result
        run.__doc__ = method.__doc__
        return run
    return wrap


class Node:
    """One compiled schema: its keywords, grouped by the type of value they apply to."""

    def __init__(self) -> None:
        self.check: Check = self._first_check
        self._built: Optional[Check] = None
        self.facts: dict[str, Any] = {}
        self.type_order: tuple[str, ...] = ()
        self.types: Optional[frozenset[str]] = None  # None: any type; "number" brings "integer"
        self.enum: Optional[tuple[Any, ...]] = None
        self.bounds: Optional[tuple[float, bool, float, bool]] = None  # low, low open, high, high open
        self.lengths: Optional[tuple[int, float, Optional[re.Pattern[str]]]] = None
        self.properties: Optional[dict[str, Node]] = None  # set when any object keyword is present
        self.required: frozenset[str] = frozenset()
        self.additional: Optional[Node] = None
        self.max_properties: Optional[int] = None
        self.property_names: Optional[Node] = None
        self.items: Optional[Node] = None
        self.counts: Optional[tuple[int, float]] = None
        self.alternatives: list[Node] = []
        self.tag = "type"
        self.parts: list[Node] = []  # allOf branches and $ref targets: each must hold too
        self.binary = False

    def _first_check(self, value: Any) -> Any:
        return self.built()(value)

    def built(self) -> Check:
        """The check, built on first use (a cycle back to a node being built calls through it)."""
        if self._built is None:
            self._built = self._first_check
            try:
                steps = self._steps()
            except BaseException:
                self._built = None
                raise
            self._built = steps[0] if len(steps) == 1 else every(steps) if steps else accept
            self.check = self._built
        return self._built

    def _steps(self) -> list[Check]:
        steps = []
        types = self.types
        # Where another step already refuses every other type, the type check is left out: one call less.
        objects = types == frozenset({"object"}) and self.properties is not None
        arrays = types == frozenset({"array"}) and (self.items is not None or self.counts is not None)
        strings = types == frozenset({"string"}) and self.lengths is not None
        covered = types is None or objects or arrays or strings or (
            self.enum is not None and all(json_type(value) in types for value in self.enum if value is not None))
        if not covered and (self.parts or self.alternatives):
            inner = self._inner_kinds()
            covered = inner is not None and types is not None and inner <= types
        if not covered and types is not None:
            steps.append(type_check(types, self.what))
        if self.enum is not None:
            steps.append(enum_check(self.enum, types is not None and "null" in types))
        if self.bounds is not None:
            steps.append(bounds_check(*self.bounds))
        if self.lengths is not None:
            steps.append(length_check(*self.lengths, self.what if strings else None))
        if self.properties is not None:
            steps.append(self._object_check(objects))
        if self.items is not None or self.counts is not None:
            steps.append(self._array_check(arrays))
        steps.extend(part.built() for part in self.parts)
        if self.alternatives:
            steps.append(Choice(self).check)
        return steps

    def _object_check(self, strict: bool) -> Check:
        checks = {name: (node.whole(), node.built()) for name, node in (self.properties or {}).items()}
        required, most = self.needed(), self.max_properties
        additional = (self.additional.whole(), self.additional.built()) if self.additional is not None else None
        names = self.property_names.built() if self.property_names is not None else None

        def check(value: Any) -> Any:
            if not isinstance(value, dict):
                if strict:
                    raise vol.Invalid(f"must be {self.what()}")
                return value
            errors: list[vol.Invalid] = []
            for key, item in value.items():
                entry = checks.get(key, additional)
                if entry is None or item.__class__ in entry[0] or (item is None and key not in required):
                    continue  # unknown keys pass; null for an optional property is "not set"
                try:
                    entry[1](item)
                except vol.Invalid as error:
                    error.prepend([key])
                    errors.extend(error.errors if isinstance(error, vol.MultipleInvalid) else [error])
            for key in required:
                if key not in value:
                    errors.append(vol.RequiredFieldInvalid("is required", [key]))
            if most is not None and len(value) > most:
                errors.append(vol.Invalid(f"must have at most {most} keys, got {len(value)}"))
            if names is not None:
                for key in value:
                    try:
                        names(key)
                    except vol.Invalid as error:
                        errors.append(vol.Invalid(f"has an invalid key {shown(key)}: it {error.error_message}"))
            if errors:
                raise errors[0] if len(errors) == 1 else vol.MultipleInvalid(errors)
            return value
        return check

    def _array_check(self, strict: bool) -> Check:
        least, most = self.counts or (0, math.inf)
        each = self.items.built() if self.items is not None else None
        whole = self.items.whole() if self.items is not None else frozenset()

        def check(value: Any) -> Any:
            if not isinstance(value, list):
                if strict:
                    raise vol.Invalid(f"must be {self.what()}")
                return value
            if len(value) < least:
                raise vol.Invalid(f"must have at least {least} item{'s' if least > 1 else ''}")
            if len(value) > most:
                raise vol.Invalid(f"must have at most {most} items, got {len(value)}")
            if each is not None:
                for index, item in enumerate(value):
                    if item.__class__ in whole:
                        continue
                    try:
                        each(item)
                    except vol.Invalid as error:
                        error.prepend([index])
                        raise
            return value
        return check

    @_guarded(frozenset())
    def whole(self) -> frozenset[type]:
        """Python classes whose every value passes, so callers skip the call: {str} for {"type": "string"}."""
        if (self.enum is not None or self.bounds is not None or self.lengths is not None or self.binary
                or self.properties is not None or self.items is not None or self.counts is not None):
            return frozenset()
        found = frozenset().union(*(CLASSES_OF[kind] for kind in self.types or ()))
        if self.types is None and (self.parts or self.alternatives):
            found = frozenset(CLASSES_OF["any"])
        for part in self.parts:
            found &= part.whole()
        if self.alternatives:
            found &= frozenset().union(*(alternative.whole() for alternative in self.alternatives))
        return found

    @_guarded(None)
    def kinds(self) -> Optional[frozenset[str]]:
        """The JSON types this schema can accept (None: any)."""
        return meet(self.types, self._inner_kinds())

    @_guarded(None)
    def _inner_kinds(self) -> Optional[frozenset[str]]:
        """The JSON types the parts and alternatives allow (None: any)."""
        result: Optional[frozenset[str]] = None
        for part in self.parts:
            result = meet(result, part.kinds())
        if self.alternatives:
            union: Optional[frozenset[str]] = frozenset()
            for alternative in self.alternatives:
                kinds = alternative.kinds()
                union = None if kinds is None or union is None else union | kinds
            result = meet(result, union)
        return result

    def admits(self, kind: str) -> bool:
        """Whether a value of JSON type `kind` could pass."""
        kinds = self.kinds()
        return kinds is None or kind in kinds

    @_guarded(None)
    def strings(self) -> Optional[frozenset[str]]:
        """The finite set of strings this schema accepts besides null, if it is one."""
        if self.enum is not None:
            values = [value for value in self.enum if value is not None]
            return frozenset(values) if all(isinstance(value, str) for value in values) else None
        for part in self.parts:
            if (found := part.strings()) is not None:
                return found
        if not self.alternatives:
            return None
        union: frozenset[str] = frozenset()
        for alternative in self.alternatives:
            found = alternative.strings()
            if found is None and alternative.kinds() != frozenset({"null"}):
                return None
            union |= found or frozenset()
        return union

    @_guarded({})
    def tags(self) -> dict[str, frozenset[str]]:
        """For objects: properties whose value is one of a few strings, such as `type`."""
        found = {name: values for name, node in (self.properties or {}).items()
                 if (values := node.strings()) is not None}
        for part in self.parts:
            for name, values in part.tags().items():
                found[name] = found[name] & values if name in found else values
        objects = [alternative.tags() for alternative in self.alternatives if alternative.admits("object")]
        if objects:
            for name in set.intersection(*(set(tags) for tags in objects)):
                union = frozenset().union(*(tags[name] for tags in objects))
                found[name] = found[name] & union if name in found else union
        return found

    def needed(self) -> frozenset[str]:
        """`required`, less the properties that may be null (null is "not set", so they may be left out)."""
        # OpenAI's own examples leave out `strict` and `parameters` of a function tool, both "required".
        properties = self.properties or {}
        return frozenset(name for name in self.required
                         if name not in properties or not properties[name].admits("null"))

    @_guarded(frozenset())
    def requires(self) -> frozenset[str]:
        """Property names every object accepted by this schema has."""
        found = self.needed().union(*(part.requires() for part in self.parts))
        if self.alternatives:
            found |= frozenset.intersection(*(alternative.requires() for alternative in self.alternatives))
        return found

    def what(self) -> str:
        """What a value must be, for error messages: "a string or a list of strings"."""
        return join(self.words())

    @_guarded(("a valid value",))
    def words(self) -> tuple[str, ...]:
        """What a value must be, a phrase per alternative: ("a string", "a list of strings")."""
        if self.binary:
            return ("a file",)
        if self.enum is not None:
            return (one_of(self.enum),)
        if self.alternatives:
            marks = self.tags().get(self.tag)
            if marks and self.kinds() == frozenset({"object"}):
                return (f"an object with {self.tag} {one_of(sorted(marks))}",)
            strings: list[str] = []
            words: list[str] = []
            for alternative in self.alternatives:
                if alternative.enum is not None and alternative.strings() is not None:
                    strings.extend(value for value in alternative.enum if value is not None)
                else:
                    words.extend(alternative.words())
            if strings and "a string" not in words:
                words.insert(0, one_of(strings))
            return tuple(dict.fromkeys(words))
        if self.types is None and self.required and not self.parts:  # {"required": ["file_id"]}
            return ("an object with " + join(sorted(self.required)).replace(" or ", " and "),)
        if self.types is None:
            return next((found for part in self.parts if (found := part.words()) != ("a valid value",)),
                        ("a valid value",))
        return tuple(self._type_word(kind) for kind in self.type_order)

    def _type_word(self, kind: str) -> str:
        if kind == "array" and self.items is not None:
            return "a list of " + join(plural(word) for word in self.items.words())
        if kind == "object":
            marks = self.tags().get(self.tag)
            return f"an object with {self.tag} {one_of(sorted(marks))}" if marks else "an object"
        return {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
                "array": "a list", "null": "null"}.get(kind, "a valid value")

    @_guarded({})
    def fields(self) -> dict[str, Node]:
        """Every property this schema names, through its parts and alternatives."""
        found = dict(self.properties or {})
        for other in [*self.parts, *self.alternatives]:
            for name, node in other.fields().items():
                found.setdefault(name, node)
        return found

    @_guarded(None)
    def item_node(self) -> Optional[Node]:
        """The schema of list items, for reading repeated form fields."""
        if self.items is not None:
            return self.items
        return next((item for other in [*self.parts, *self.alternatives] if (item := other.item_node())), None)

    @_guarded(False)
    def is_file(self) -> bool:
        """Whether a form sends this as a file part (`format: binary`, or a list of them)."""
        return self.binary or any(other.is_file() for other in [*self.parts, *self.alternatives]) or (
            self.items is not None and self.items.is_file())
