"""Compiles the JSON Schemas of one document into `Node`s, each `$defs` entry once."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Optional, TypeGuard

from .nodes import Node

# What the compiler enforces. `format` matters only as "binary" (a file part of a form); `discriminator`
# only picks which alternatives to try and which error to report; `additionalProperties` is enforced
# when it is a schema, never when it is `false`.
HANDLED = frozenset({
    "$ref", "$recursiveRef", "$recursiveAnchor", "type", "nullable", "enum", "const", "anyOf", "oneOf",
    "allOf", "discriminator", "items", "minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "required", "properties",
    "additionalProperties", "maxProperties", "propertyNames", "format",
})
# Skipped on purpose. `not` (only "image_url and file_id together") would turn the null rule inside out:
# a null field counts as absent to OpenAI but as present to `required`, so `not` would refuse what
# OpenAI takes. The others are annotations.
IGNORED = frozenset({"default", "not", "description", "title", "example", "examples", "$comment", "deprecated"})

# Keys of an object schema that allOf may merge into one object check (faster, and one `required`).
_PLAIN_OBJECT = frozenset({"type", "properties", "required", "additionalProperties", "default", "title",
                           "description"})
_DEFS = "#/$defs/"


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Compiler:
    """Turns schemas into nodes; `define(name)` compiles a `$defs` entry once and shares its node."""

    def __init__(self, definitions: dict[str, Any], relaxed: Optional[Mapping[str, frozenset[str]]] = None) -> None:
        self.definitions = definitions
        self.relaxed = relaxed or {}  # definition -> "required" properties not enforced
        self.named: dict[str, Node] = {}

    def define(self, name: str) -> Node:
        """The node of `$defs/name` (a missing definition accepts anything)."""
        node = self.named.get(name)
        if node is None:
            node = self.named[name] = Node()
            schema = self.definitions.get(name)
            if isinstance(schema, dict):
                self._fill(node, schema, node if schema.get("$recursiveAnchor") is True else None)
                node.required -= self.relaxed.get(name, frozenset())
        return node

    def compile(self, schema: Any, anchor: Optional[Node] = None) -> Node:
        """A node for an inline schema; `anchor` is where `$recursiveRef: "#"` leads."""
        node = Node()
        if isinstance(schema, dict):
            self._fill(node, schema, anchor)
        return node

    def _fill(self, node: Node, schema: dict[str, Any], anchor: Optional[Node]) -> None:
        merged = self._merge_all_of(schema, frozenset())
        if merged is not None:
            schema = merged
        self._scalars(node, schema)
        self._object(node, schema, anchor)
        self._array(node, schema, anchor)
        alternatives = [schema[key] for key in ("anyOf", "oneOf") if isinstance(schema.get(key), list)]
        if alternatives:
            # oneOf is read as anyOf: a value two alternatives accept is no mistake of the client.
            node.alternatives = [self.compile(branch, anchor) for branch in alternatives[0]]
            if len(alternatives) == 2:
                node.parts.append(self.compile({"anyOf": alternatives[1]}, anchor))
        discriminator = schema.get("discriminator")
        if isinstance(discriminator, dict) and isinstance(discriminator.get("propertyName"), str):
            node.tag = discriminator["propertyName"]
        reference = schema.get("$ref")
        if isinstance(reference, str) and reference.startswith(_DEFS):
            node.parts.append(self.define(reference[len(_DEFS):]))
        if schema.get("$recursiveRef") == "#" and anchor is not None:
            node.parts.append(anchor)
        if merged is None and isinstance(schema.get("allOf"), list):
            node.parts.extend(self.compile(branch, anchor) for branch in schema["allOf"])
        node.binary = schema.get("format") == "binary"

    def _scalars(self, node: Node, schema: dict[str, Any]) -> None:
        kinds = schema.get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds
        nullable = schema.get("nullable") is True
        if isinstance(kinds, list):
            order = tuple(kind for kind in kinds if isinstance(kind, str))
            node.type_order = order + (("null",) if nullable and "null" not in order else ())
            node.types = frozenset(node.type_order) | ({"integer"} if "number" in order else frozenset())
        if "const" in schema:
            node.enum = (schema["const"],)
        elif isinstance(schema.get("enum"), list) and schema["enum"]:
            node.enum = tuple(schema["enum"]) + ((None,) if nullable else ())
        low, low_open = _bound(schema.get("minimum"), schema.get("exclusiveMinimum"), max)
        high, high_open = _bound(schema.get("maximum"), schema.get("exclusiveMaximum"), min)
        if low is not None or high is not None:
            node.bounds = (-math.inf if low is None else low, low_open, math.inf if high is None else high, high_open)
        least, most = schema.get("minLength"), schema.get("maxLength")
        pattern = _pattern(schema.get("pattern"))
        if _is_count(least) or _is_count(most) or pattern is not None:
            node.lengths = (least if _is_count(least) else 0, most if _is_count(most) else math.inf, pattern)

    def _object(self, node: Node, schema: dict[str, Any], anchor: Optional[Node]) -> None:
        properties, required = schema.get("properties"), schema.get("required")
        additional, most, names = (schema.get(key) for key in ("additionalProperties", "maxProperties",
                                                               "propertyNames"))
        if isinstance(properties, dict):
            node.properties = {name: self.compile(sub, anchor) for name, sub in properties.items()}
        if isinstance(required, list):
            node.required = frozenset(name for name in required if isinstance(name, str))
        if isinstance(additional, dict) and additional:  # `false` is never enforced: unknown keys pass
            node.additional = self.compile(additional, anchor)
        if _is_count(most):
            node.max_properties = most
        if isinstance(names, dict) and names:
            node.property_names = self.compile(names, anchor)
        if node.properties is None and (node.required or node.additional or node.max_properties is not None
                                        or node.property_names):
            node.properties = {}

    def _array(self, node: Node, schema: dict[str, Any], anchor: Optional[Node]) -> None:
        if isinstance(schema.get("items"), dict):
            node.items = self.compile(schema["items"], anchor)
        least, most = schema.get("minItems"), schema.get("maxItems")
        if _is_count(least) or _is_count(most):
            node.counts = (least if _is_count(least) else 0, most if _is_count(most) else math.inf)

    def _merge_all_of(self, schema: dict[str, Any], seen: frozenset[str]) -> Optional[dict[str, Any]]:
        """`allOf` of plain object schemas as one object schema, or None when it is not that simple."""
        branches = schema.get("allOf")
        if not isinstance(branches, list):
            return None
        rest = {key: value for key, value in schema.items() if key != "allOf"}
        properties: dict[str, Any] = {}
        required: list[Any] = []
        typed = False
        for branch in [rest, *branches] if rest else branches:
            plain = self._plain(branch, seen)
            if plain is None:
                return None
            for name, sub in plain.get("properties", {}).items():
                properties[name] = {"allOf": [properties[name], sub]} if name in properties else sub
            required.extend(plain.get("required", []))
            typed = typed or plain.get("type") == "object"
        return {**({"type": "object"} if typed else {}), "properties": properties, "required": required}

    def _plain(self, branch: Any, seen: frozenset[str]) -> Optional[dict[str, Any]]:
        if isinstance(branch, dict) and set(branch) == {"$ref"} and isinstance(branch["$ref"], str):
            name = branch["$ref"].removeprefix(_DEFS)
            if name in seen or not branch["$ref"].startswith(_DEFS):
                return None
            seen, branch = seen | {name}, self.definitions.get(name)
        if isinstance(branch, dict) and "allOf" in branch:
            return self._merge_all_of(branch, seen)
        if not isinstance(branch, dict) or not set(branch) <= _PLAIN_OBJECT:
            return None
        plain = (branch.get("type", "object") == "object" and isinstance(branch.get("properties", {}), dict)
                 and isinstance(branch.get("required", []), list)
                 and branch.get("additionalProperties") in (None, True, False, {}))
        return branch if plain else None


def _bound(inclusive: Any, exclusive: Any, tighter: Any) -> tuple[Optional[float], bool]:
    """A limit from `minimum`/`maximum` and `exclusive...`, a number (JSON Schema) or a flag (OpenAPI 3.0)."""
    if _is_number(exclusive):
        if _is_number(inclusive) and tighter(inclusive, exclusive) == inclusive and inclusive != exclusive:
            return inclusive, False
        return exclusive, True
    return (inclusive, exclusive is True) if _is_number(inclusive) else (None, False)


def _pattern(pattern: Any) -> Optional[re.Pattern[str]]:
    """`pattern` compiled; one Python cannot read accepts every string rather than refusing them."""
    if not isinstance(pattern, str):
        return None
    try:
        return re.compile(pattern)
    except re.error:
        return None
