"""What an endpoint is: a small declaration the one request pipeline reads. Nothing here does I/O."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

MAX_LABEL_LENGTH = 128  # OpenAI's model names are a few dozen characters; a client may send any string
LONG_NAME = "(long model name)"


class Body(Enum):
    """What the client sends (an endpoint that takes forms may take JSON too: images/edits)."""

    JSON = "json"
    MULTIPART = "multipart"
    NONE = "none"


class Streams(Enum):
    """How the answer streams when the client asks for `"stream": true`."""

    NEVER = "never"
    DATA = "data"  # `data:` lines only, ending in `data: [DONE]` (chat, legacy completions)
    TYPED = "typed"  # `event:` lines naming each event's type, no [DONE] (responses, audio, images)


# Estimates the tokens a request reserves in the tpm bucket: (payload, body size, default completion) -> tokens.
Estimate = Callable[[dict[str, Any], int, int], float]


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI route, as data: how to read it, route it, stream it and account for it."""

    route: str  # the label of metrics and the access log, e.g. "embeddings"
    method: str
    path: str  # relative to /v1 and to a controller's base URL, e.g. "/responses/{id}/cancel"
    body: Body = Body.JSON  # NONE, or what it takes: JSON (with `schema`), multipart (with `form_schema`)
    model_field: Optional[str] = "model"  # where the model is (JSON body or form field); None: routed by id
    model_required: bool = True  # False where OpenAI's schema lets a request leave the model out
    schema: Optional[str] = None  # the key of its JSON request schema in endpoints/openai-endpoint-schemas.json
    form_schema: Optional[str] = None  # the key of its multipart/form-data schema, when it takes forms
    streams: Streams = Streams.NEVER
    stream_ends: frozenset[str] = frozenset()  # event types after which a stream has ended well
    stream_asked: Optional[tuple[str, str]] = None  # a field and value that ask for a stream too (speech's SSE)
    stream_error: str = "data"  # how the gateway ends a broken stream: "data" ({"error"}) or "typed" (error)
    estimate: Optional[Estimate] = None  # None: no tokens reserved (a follow-up that reads stored state)
    inject_usage: bool = False  # the gateway asks for stream_options.include_usage to settle tokens
    creates: Optional[str] = None  # the prefix of ids its answers create ("resp_", "conv_"): learn their owner
    names: tuple[str, ...] = ()  # body fields that may name such an id: the request goes to its owner
    forgets: bool = False  # a successful answer deletes the id named in the path
    binary: bool = False  # the answer may be binary (audio): relayed as it arrives, never parsed
    # Its answer shows the usage of a stored response that ran before (a fetch, a cancel): no controller counts
    # it again, and a client is charged it once per response (a background response's usage shows only here).
    shows_stored_usage: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(regex))

    @property
    def public_path(self) -> str:
        """The route the client calls."""
        return "/v1" + self.path

    @property
    def routed_by_id(self) -> bool:
        """Whether the path names the stored response or conversation it reads."""
        return "{id}" in self.path

    @property
    def takes_json(self) -> bool:
        """Whether a JSON body is accepted."""
        return self.body is Body.JSON or self.schema is not None

    @property
    def takes_form(self) -> bool:
        """Whether a multipart/form-data body is accepted."""
        return self.form_schema is not None

    @property
    def can_stream(self) -> bool:
        """Whether `"stream": true` is meaningful here."""
        return self.streams is not Streams.NEVER

    def label(self, model: str) -> str:
        """The scope of breakers and counts: the model, or the route for calls without one. A name longer
        than any model's is counted as "(long model name)": it would be a metric label of that length."""
        if len(model) > MAX_LABEL_LENGTH:
            return LONG_NAME
        return model or f"({self.route})"
