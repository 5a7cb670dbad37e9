"""From an HTTP request to a `Call`: decode and validate the body as its endpoint declares, find the model,
the stream flag, and the stored response or conversation the call names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional
from urllib.parse import parse_qs, quote

import orjson

from ..call import Call
from ..endpoints.base import Body, Endpoint
from ..endpoints.catalog import CHAT
from ..endpoints.multipart import parse_form
from ..endpoints.validation import form_validator, validator
from ..errors import ApiError, invalid_request
from ..relay.rewrite import client_wants_usage
from .schemas import parse_chat_request

TRUE = frozenset(("true", "1"))


def _json(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return payload


def _model(endpoint: Endpoint, value: Any) -> str:
    if endpoint.model_field is None or (value is None and not endpoint.model_required):
        return ""  # routed by the id it names, or by the controllers that serve any model
    if not isinstance(value, str) or not value.strip():
        field = endpoint.model_field
        raise ApiError(400, f"Invalid '{field}': must be a non-empty string naming the model.", param=field,
                       code="invalid_value" if value is not None else "missing_required_parameter")
    return value


def _named_id(endpoint: Endpoint, payload: Mapping[str, Any], path_args: Mapping[str, str]) -> Optional[str]:
    """The stored response or conversation this call reads or continues, if it names one."""
    ident = path_args.get("id")
    if ident:
        return ident
    for name in endpoint.names:
        value = payload.get(name)
        if isinstance(value, dict):
            value = value.get("id")
        if isinstance(value, str) and value:
            return value
    return None


def read_call(endpoint: Endpoint, body: bytes, content_type: str, path_args: Mapping[str, str], query: str,
              request_id: str) -> Call:
    """The call a request makes, validated; a client's mistake raises a 400 naming the field."""
    if endpoint is CHAT:
        chat = parse_chat_request(body)
        wants_stream = bool(chat.get("stream"))
        return Call(body, chat, chat["model"], wants_stream, request_id,
                    inject_usage=wants_stream and not client_wants_usage(chat))
    media = content_type.split(";", 1)[0].strip().lower()
    payload: dict[str, Any] = {}
    if endpoint.body is Body.NONE:
        pass
    elif media == "multipart/form-data":
        if not endpoint.takes_form:
            raise ApiError(415, f"{endpoint.public_path} takes a JSON body, not multipart/form-data.",
                           code="unsupported_media_type")
        assert endpoint.form_schema is not None
        fields, files = parse_form(content_type, body)
        form_validator(endpoint.form_schema)(fields, files)
        payload = {name: values[0] for name, values in fields.items() if values}
    elif endpoint.takes_json:
        if endpoint.body is Body.MULTIPART and endpoint.schema is None:
            raise ApiError(415, f"{endpoint.public_path} takes a multipart/form-data body.",
                           code="unsupported_media_type")
        payload = _json(body) if body or endpoint.schema else {}
        if endpoint.schema is not None:
            validator(endpoint.schema)(payload)
    else:
        raise ApiError(415, f"{endpoint.public_path} takes a multipart/form-data body.", code="unsupported_media_type")
    model = _model(endpoint, payload.get(endpoint.model_field) if endpoint.model_field else None)
    stream_field = payload.get("stream")
    if endpoint.body is Body.NONE:  # a GET that replays a stored stream says so in its query
        stream_field = parse_qs(query).get("stream", [""])[0]
    stream = endpoint.can_stream and (stream_field is True or (isinstance(stream_field, str)
                                                               and stream_field.lower() in TRUE))
    asked = endpoint.stream_asked
    if asked is not None and not stream:
        stream = payload.get(asked[0]) == asked[1]
    path = endpoint.path.format(**{name: quote(value, safe="") for name, value in path_args.items()})
    if query:
        path += "?" + query
    return Call(body, payload, model, stream, request_id,
                inject_usage=stream and endpoint.inject_usage and not client_wants_usage(payload),
                endpoint=endpoint, path=path, content_type=content_type or "application/json",
                owner_of=_named_id(endpoint, payload, path_args))

