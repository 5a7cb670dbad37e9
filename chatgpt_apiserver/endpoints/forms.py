"""Multipart form checks: text fields read as the upstream reads them, then checked like JSON."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Optional

import orjson
import voluptuous as vol

from .nodes import Node

# Spellings of a boolean form value that form parsers commonly take (pydantic's set).
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})
# "name", "name[]", "name[0]" (list items) or "name[key]" (a member of an object); deeper names pass.
_FIELD = re.compile(r"([^\[\]]+)(?:\[([^\[\]]*)\])?")


def split_field(field: str) -> tuple[str, Optional[str]]:
    """("include", None) for "include[]" or "include[1]"; ("chunking_strategy", "type") for a member."""
    match = _FIELD.fullmatch(field)
    if match is None:
        return field, None
    name, member = match.group(1), match.group(2)
    return name, None if member is None or member == "" or member.isdigit() else member


def from_text(node: Node, text: str) -> Any:
    """A form value as the JSON value the schema expects: "0.5" for a number is 0.5, "true" is true."""
    kinds = node.kinds()
    stripped = text.strip()
    if kinds is None:
        return text
    if (stripped[:1] == "{" and "object" in kinds) or (stripped[:1] == "[" and "array" in kinds):
        try:
            return orjson.loads(stripped)  # a client may send an object or list as JSON text
        except orjson.JSONDecodeError:
            pass
    if "string" in kinds:
        return text
    lowered = stripped.lower()
    if "boolean" in kinds and lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    if "integer" in kinds:  # numbers bring integers
        try:
            return int(stripped)
        except ValueError:
            pass
        try:
            number = float(stripped)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    if "null" in kinds and lowered in ("", "null"):
        return None
    return text  # the check then says what it must be


def _at(name: str, node: Node, value: Any) -> None:
    try:
        node.check(value)
    except vol.Invalid as error:
        error.prepend([name])
        raise


class FormCheck:
    """Checks a form's text fields (each may repeat) and which file parts it has against one schema."""

    def __init__(self, root: Node) -> None:
        self.fields = root.fields()
        self.required = root.requires()
        self.files = frozenset(name for name, node in self.fields.items() if node.is_file())

    def __call__(self, texts: Mapping[str, list[str]], files: set[str]) -> None:
        """Raise `vol.Invalid` naming the first field at fault."""
        values: dict[str, list[str]] = {}
        members: dict[str, dict[str, list[str]]] = {}
        for field, sent in texts.items():
            name, member = split_field(field)
            if member is None:
                values.setdefault(name, []).extend(sent)
            else:
                members.setdefault(name, {})[member] = sent
        attached = {split_field(name)[0] for name in files}
        for name in self.required & (self.files - attached):
            problem = "must be a file, sent as a file part" if name in values else "is required, as a file part"
            raise vol.RequiredFieldInvalid(problem, [name])
        for name in self.required - self.files:
            if name not in values and name not in members and name not in attached:
                raise vol.RequiredFieldInvalid("is required", [name])
        for name, node in self.fields.items():
            if name in self.files:
                continue  # an optional file sent as text is the upstream's to judge
            if name in values:
                self._values(name, node, values[name])
            if name in members:
                self._members(name, node, members[name])

    def _values(self, name: str, node: Node, sent: list[str]) -> None:
        item = node.item_node() if node.admits("array") else None
        if item is not None:
            if len(sent) == 1 and sent[0].lstrip().startswith("["):
                _at(name, node, from_text(node, sent[0]))
            else:
                _at(name, node, [from_text(item, text) for text in sent])
            return
        for text in sent:
            value = from_text(node, text)
            if (value is None or text == "") and name not in self.required:
                continue  # an empty optional field is "not set", as null is in JSON
            _at(name, node, value)
        if len(set(sent)) > 1:
            # Which one would the upstream take? The gateway checked, routed and priced by one of them: the
            # client must say which (a second `model` would otherwise slip past an allow-list).
            raise vol.Invalid(f"is sent {len(sent)} times with different values; send it once", [name])

    def _members(self, name: str, node: Node, members: dict[str, list[str]]) -> None:
        fields = node.fields()
        value = {key: from_text(fields[key], sent[-1]) if key in fields else sent[-1]
                 for key, sent in members.items() if sent}
        _at(name, node, value)
