"""anyOf and oneOf: which alternatives to try for a value, and which error to report when none fits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import voluptuous as vol

from .checks import JSON_TYPES, join, json_type, one_of, shown

if TYPE_CHECKING:
    from .nodes import Node


class Choice:
    """anyOf/oneOf: tries only the alternatives that the value's type and tag leave possible."""

    def __init__(self, node: Node) -> None:
        self.node, self.tag = node, node.tag
        options = [(alternative, alternative.built()) for alternative in node.alternatives]
        self.by_type = {kind: [option for option in options if option[0].admits(kind)] for kind in JSON_TYPES}
        # Floats go by json_type: one without a fraction is an integer.
        self.by_class = {str: self.by_type["string"], int: self.by_type["integer"], bool: self.by_type["boolean"],
                         dict: self.by_type["object"], list: self.by_type["array"], type(None): self.by_type["null"]}
        # Classes an alternative takes whole, such as str for anyOf [{"type": "string"}, ...]: no call needed.
        self.always = frozenset().union(*(alternative.whole() for alternative in node.alternatives))
        objects = self.by_type["object"]
        marks = [alternative.tags().get(self.tag) for alternative, _ in objects]
        self.names = list(dict.fromkeys(name for values in marks if values for name in sorted(values)))
        self.untagged = [option for option, values in zip(objects, marks, strict=True) if values is None]
        self.by_tag = {name: [option for option, values in zip(objects, marks, strict=True)
                              if values is None or name in values] for name in self.names}

    def check(self, value: Any) -> Any:
        """Pass `value` if one alternative takes it; try only those its type and tag leave possible."""
        kind = value.__class__
        if kind in self.always:
            return value
        if kind is dict and self.names and (mark := value.get(self.tag)) is not None:
            tried = self.by_tag.get(mark, self.untagged) if mark.__class__ is str else self.untagged
        else:
            found = self.by_class.get(kind)
            tried = found if found is not None else self.by_type.get(json_type(value), [])
        if len(tried) == 1:  # the common case: the type or the tag leaves one
            try:
                return tried[0][1](value)
            except vol.Invalid as error:
                raise self.explain(value, [tried[0][0]], [error]) from None
        errors = []
        for _, run in tried:
            try:
                return run(value)
            except vol.Invalid as error:
                errors.append(error)
        raise self.explain(value, [node for node, _ in tried], errors)

    def explain(self, value: Any, tried: list[Node], errors: list[vol.Invalid]) -> vol.Invalid:
        """The error to report: the one alternative that fits, where they agree, or what the value must be."""
        is_object = isinstance(value, dict)
        if not tried:
            if is_object and self.by_type["object"]:
                return vol.Invalid(f"must be {one_of(self.names)}, got {shown(value.get(self.tag))}", [self.tag])
            return vol.Invalid(f"must be {self.node.what()}")
        if is_object and self.names and value.get(self.tag) is None and all(
                self.tag in node.requires() for node in tried):
            return vol.RequiredFieldInvalid(f"is required, {one_of(self.names)}", [self.tag])
        ranks = [_rank(value, node, error) for node, error in zip(tried, errors, strict=True)]
        best = [error for error, rank in zip(errors, ranks, strict=True) if rank == min(ranks)]
        if all(error.path == best[0].path for error in best):
            return best[0]
        return vol.Invalid(f"must be {join(node.what() for node in tried)}")


def _rank(value: Any, node: Node, error: vol.Invalid) -> tuple[int, int, int, tuple[int, ...]]:
    """How far an alternative got, least first: keys of the value it does not know, errors, then the
    deepest path and the furthest list item (["a", "b", 3] as a list of strings fails at [2])."""
    unknown = sum(1 for key in value if key not in node.fields()) if isinstance(value, dict) else 0
    count = len(error.errors) if isinstance(error, vol.MultipleInvalid) else 1
    indexes = tuple(-part for part in error.path if isinstance(part, int) and not isinstance(part, bool))
    return unknown, count, -len(error.path), indexes

