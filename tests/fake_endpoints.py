"""Every OpenAI endpoint of the fake upstream besides chat completions and models (see fake_upstream.py).

`FakeUpstream.start` registers `routes(fake)`. Each endpoint speaks OpenAI's wire format, checked against the
official `openai` SDK (tests/test_fake_endpoints.py), and follows the fake's cues (`fake.cue(...)`,
`fake.model_cues`, `fake.default`) as fake_wire.py describes, as well as `fake.limit(...)` and
`fake.valid_keys`. Every request is recorded in `fake.requests` (path with query, headers, raw body).

| endpoint | module |
|---|---|
| POST /v1/embeddings, /v1/completions, /v1/moderations | fake_text.py |
| /v1/responses and everything under it | fake_responses.py (store: fake_store.py) |
| /v1/conversations and everything under it | fake_conversations.py |
| /v1/audio/{transcriptions,translations,speech}, /v1/images/{generations,edits} | fake_media.py |

Any other path under /v1 answers OpenAI's 404 "Invalid URL"; a wrong method answers 405.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fake_conversations import conversation_routes
from .fake_media import media_routes
from .fake_responses import response_routes
from .fake_text import text_routes
from .fake_wire import UnknownHandler

if TYPE_CHECKING:
    from .fake_upstream import FakeUpstream


def routes(fake: FakeUpstream) -> list[tuple[str, Any, dict[str, Any]]]:
    """The route table of every endpoint above, each handler given `fake`."""
    table = text_routes() + response_routes() + conversation_routes() + media_routes()
    return [(pattern, handler, {"fake": fake}) for pattern, handler in table]


def fallback_routes(fake: FakeUpstream) -> list[tuple[str, Any, dict[str, Any]]]:
    """The catch-all for unknown /v1 paths: register it after every other route."""
    return [(r"/v1/.*", UnknownHandler, {"fake": fake})]
