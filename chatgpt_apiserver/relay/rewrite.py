"""The body sent upstream: the client's bytes, unless a model alias or the usage request must change them."""

from __future__ import annotations

from typing import Any

import orjson

from ..call import Call

_ASK_USAGE = b',"stream_options":{"include_usage":true}}'


def client_wants_usage(payload: dict[str, Any]) -> bool:
    """Whether the client asked for the final usage event of a stream."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def upstream_body(call: Call, upstream_model: str) -> bytes:
    """The bytes for an upstream that knows the model as `upstream_model`."""
    renamed = upstream_model != call.model
    if not renamed and not call.inject_usage:
        return call.body
    if not renamed and "stream_options" not in call.payload:
        # Add the usage request without re-encoding anything else: the body is a JSON object.
        end = call.body.rstrip()
        if end.endswith(b"}"):
            return end[:-1] + _ASK_USAGE
    payload = dict(call.payload)
    payload["model"] = upstream_model
    if call.inject_usage:
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(payload)


def estimate_tokens(call: Call, default_completion: int) -> float:
    """A cheap, conservative reservation: a quarter of the body's bytes plus the answer's allowance."""
    payload = call.payload
    allowance = payload.get("max_completion_tokens") or payload.get("max_tokens") or default_completion
    choices = payload.get("n") or 1
    return len(call.body) / 4 + max(1, allowance) * choices
