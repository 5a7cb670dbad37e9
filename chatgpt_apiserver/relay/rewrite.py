"""The body sent upstream: the client's bytes, unless a model alias or the usage request must change them."""

from __future__ import annotations

from typing import Any

import orjson

from ..call import Call
from ..controllers import Controller
from ..endpoints.multipart import replace_field

_ASK_USAGE = b',"stream_options":{"include_usage":true}}'


def client_wants_usage(payload: dict[str, Any]) -> bool:
    """Whether the client asked for the final usage event of a stream."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def upstream_body(call: Call, controller: Controller) -> tuple[bytes, bool]:
    """The bytes for `controller`, and whether the gateway added the usage request to them.

    The client's bytes go as they came, except that a model alias renames the model (in the JSON body, or
    in the one `model` field of a form) and a stream is asked for its final usage event when the
    controller takes that (`stream_usage`).
    """
    upstream_model = controller.upstream_model(call.model) if call.model else call.model
    renamed = upstream_model != call.model
    inject = call.inject_usage and controller.takes_stream_usage
    if call.content_type.startswith("multipart/"):
        return (replace_field(call.content_type, call.body, "model", upstream_model) if renamed else call.body), False
    if not renamed and not inject:
        return call.body, False
    if not renamed and "stream_options" not in call.payload:
        # Add the usage request without re-encoding anything else: the body is a JSON object.
        end = call.body.rstrip()
        if end.endswith(b"}"):
            return end[:-1] + _ASK_USAGE, True
    payload = dict(call.payload)
    payload[call.endpoint.model_field or "model"] = upstream_model
    if inject:
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(payload), inject
