"""The schema compiler: every keyword of the file decided on, every definition compiled, JSON Schema
semantics where the file does not reach, deep nesting, and no input raising anything but a 400."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
import voluptuous as vol
from hypothesis import given, settings
from hypothesis import strategies as st

from chatgpt_apiserver.endpoints import validation
from chatgpt_apiserver.endpoints.compiler import HANDLED, IGNORED, Compiler
from chatgpt_apiserver.endpoints.validation import form_validator, request_keys, validator
from chatgpt_apiserver.errors import ApiError

from .endpoint_cases import (
    EMBEDDINGS,
    FORM_KEYS,
    JSON_KEYS,
    MINIMAL,
    RESPONSES,
    TRANSCRIPTIONS,
    accepted_or_a_400,
    document,
    error_of,
    json_values,
    root_fields,
)

# Every keyword the packaged schema file uses. A new one fails this list, so it is noticed and decided
# (enforce it in the compiler or list it as ignored) rather than silently passing or refusing.
KEYWORDS_IN_FILE = {
    "$recursiveAnchor", "$recursiveRef", "$ref", "additionalProperties", "allOf", "anyOf", "default",
    "discriminator", "enum", "format", "items", "maxItems", "maxLength", "maxProperties", "maximum",
    "minItems", "minLength", "minimum", "not", "nullable", "oneOf", "pattern", "properties", "propertyNames",
    "required", "type",
}


def keywords(schema: Any, found: set[str], refs: set[str]) -> None:
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        found.add(key)
        if key == "$ref":
            refs.add(value)
        elif key == "properties":
            for sub in value.values():
                keywords(sub, found, refs)
        elif key in ("items", "additionalProperties", "not", "propertyNames"):
            keywords(value, found, refs)
        elif key in ("anyOf", "oneOf", "allOf"):
            for sub in value:
                keywords(sub, found, refs)


def test_the_schema_file_uses_only_keywords_the_compiler_decided_on() -> None:
    found: set[str] = set()
    refs: set[str] = set()
    definitions = document()["$defs"]
    for schema in definitions.values():
        keywords(schema, found, refs)
    assert found == KEYWORDS_IN_FILE
    assert found <= HANDLED | IGNORED
    assert not HANDLED & IGNORED
    assert {ref.removeprefix("#/$defs/") for ref in refs} <= set(definitions)  # every $ref resolves


def test_every_definition_compiles_and_checks_without_crashing() -> None:
    definitions = document()["$defs"]
    compiler = Compiler(definitions)
    for name in definitions:
        node = compiler.define(name)
        for value in (None, {}, [], "x", 1, 1.5, True):
            try:
                node.check(value)
            except vol.Invalid as error:
                assert error.error_message, name
        assert node.what(), name


def test_every_request_of_the_file_compiles_and_takes_a_minimal_request() -> None:
    assert set(request_keys()) == set(MINIMAL)
    for key in JSON_KEYS:
        validator(key)(MINIMAL[key])
    for key in FORM_KEYS:
        form_validator(key)(*MINIMAL[key])


def test_a_validator_is_compiled_once_and_leaves_the_body_as_it_was() -> None:
    assert validator(RESPONSES) is validator(RESPONSES)
    body = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}], "extra": [1, {}]}
    before = copy.deepcopy(body)
    assert validator(RESPONSES)(body) is None
    assert body == before


def test_a_form_key_has_no_json_validator_and_the_other_way_round() -> None:
    with pytest.raises(KeyError):
        validator(TRANSCRIPTIONS)
    with pytest.raises(KeyError):
        form_validator(EMBEDDINGS)
    with pytest.raises(KeyError):
        validator("POST /v1/nothing (application/json)")


def compiled(schema: dict[str, Any], definitions: Any = None) -> Any:
    """The check of an inline schema, raising ApiError as the endpoint validators do."""
    check = Compiler(definitions or {}).compile(schema).built()

    def run(value: Any) -> None:
        try:
            check(value)
        except vol.Invalid as error:
            raise validation.api_error(error) from None
    return run


def refused(schema: dict[str, Any], value: Any, definitions: Any = None) -> str:
    with pytest.raises(ApiError) as caught:
        compiled(schema, definitions)({"v": value})
    return caught.value.message


def test_keywords_the_file_does_not_use_yet_work_as_json_schema_says() -> None:
    def holder(schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {"v": schema}, "required": ["v"]}
    compiled(holder({"const": "x"}))({"v": "x"})
    assert refused(holder({"const": "x"}), "y") == "Invalid 'v': must be 'x', got 'y'."
    assert refused(holder({"const": 1}), True) == "Invalid 'v': must be 1, got True."  # true is not 1
    bounds = holder({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})
    compiled(bounds)({"v": 0.5})
    assert refused(bounds, 0) == "Invalid 'v': must be greater than 0 and less than 1, got 0."
    assert refused(bounds, 1) == "Invalid 'v': must be greater than 0 and less than 1, got 1."
    openapi = holder({"type": "integer", "minimum": 0, "exclusiveMinimum": True})  # OpenAPI 3.0's flag
    assert refused(openapi, 0) == "Invalid 'v': must be greater than 0, got 0."
    either = holder({"type": ["string", "integer"]})
    compiled(either)({"v": 3})
    assert refused(either, 1.5) == "Invalid 'v': must be a string or an integer."
    assert refused(holder({"type": "string", "nullable": True}), 5) == "Invalid 'v': must be a string or null."
    compiled(holder({"type": "string", "nullable": True}))({"v": None})  # required, and null is allowed
    compiled(holder({"type": "string", "x-unknown-keyword": {"deny": True}}))({"v": "x"})
    compiled(holder({"type": "string", "not": {"const": "x"}}))({"v": "x"})  # `not` is not enforced


def test_all_of_merges_objects_so_required_and_null_come_from_every_branch() -> None:
    definitions = {
        "Base": {"type": "object", "properties": {"model": {"type": "string"}, "n": {"type": "integer"}}},
        "Request": {"allOf": [{"$ref": "#/$defs/Base"}, {"type": "object", "required": ["model"],
                                                          "properties": {"n": {"minimum": 1}}}]},
    }
    check = compiled({"$ref": "#/$defs/Request"}, definitions)
    check({"model": "m", "n": None})  # optional in both branches: null is "not set"
    for value, message in (({"model": None}, "Invalid 'model': must be a string."),  # required in one, typed in one
                           ({"model": "m", "n": 0}, "Invalid 'n': must be at least 1, got 0."),
                           ({"model": "m", "n": 2.5}, "Invalid 'n': must be an integer.")):
        with pytest.raises(ApiError) as caught:
            check(value)
        assert caught.value.message == message


def test_recursive_references_compile_and_check_any_depth() -> None:
    definitions = {"Tree": {"type": "object", "properties": {"name": {"type": "string"}, "children": {
        "type": "array", "items": {"$ref": "#/$defs/Tree"}}}, "required": ["name"]},
                   "Loop": {"anyOf": [{"$ref": "#/$defs/Loop"}, {"type": "string"}]}}
    tree = compiled({"$ref": "#/$defs/Tree"}, definitions)
    tree({"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]})
    with pytest.raises(ApiError) as caught:
        tree({"name": "a", "children": [{"name": "b", "children": [{}]}]})
    assert caught.value.message == "Invalid 'children[0].children[0].name': is required."
    compiled({"$ref": "#/$defs/Loop"}, definitions)("x")  # a reference to itself does not recurse forever


def nested_filters(levels: int, leaf: str) -> dict[str, Any]:
    """A responses request whose file_search filter nests `levels` compound filters around `leaf`."""
    raw = '{"type":"and","filters":[' * levels + leaf + "]}" * levels
    result: dict[str, Any] = orjson.loads('{"tools":[{"type":"file_search","vector_store_ids":["v"],"filters":'
                                          + raw + "}]}")
    return result


def test_deep_nesting_is_a_400_and_leaves_the_validator_working() -> None:
    good, bad = '{"type":"eq","key":"a","value":1}', '{"type":"x"}'
    validator(RESPONSES)(nested_filters(20, good))  # the schema is recursive: any depth is valid
    error = error_of(RESPONSES, nested_filters(400, good))  # within orjson's limit, beyond the stack's
    assert error.status == 400 and error.message == "The request body is nested too deeply to check."
    deep = error_of(RESPONSES, nested_filters(3, bad))
    assert deep.param == "tools[0].filters.filters[0].filters[0].filters[0].type"
    assert "must be one of 'eq'" in deep.message


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(JSON_KEYS), body=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_any_json_object_is_accepted_or_a_400(key: str, body: dict[str, Any]) -> None:
    accepted_or_a_400(lambda: validator(key)(body))


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A minimal request with a few of its endpoint's own fields set to arbitrary (plausible) JSON."""
    key = draw(st.sampled_from(JSON_KEYS))
    body = dict(MINIMAL[key])
    fields = sorted(root_fields(key)[0])
    for name in draw(st.lists(st.sampled_from(fields), max_size=3)):
        body[name] = draw(json_values | st.lists(json_values, max_size=3))
    return key, body


@settings(max_examples=400, deadline=None)
@given(near_valid())
def test_near_valid_requests_are_accepted_or_a_400_and_left_unchanged(case: tuple[str, dict[str, Any]]) -> None:
    key, body = case
    before = copy.deepcopy(body)
    accepted_or_a_400(lambda: validator(key)(body))
    assert body == before
