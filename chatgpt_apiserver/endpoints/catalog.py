"""Every endpoint the gateway serves, declared once. Adding one is one entry here (and its fake in tests/)."""

from __future__ import annotations

from typing import Any, Optional

from .base import Body, Endpoint, Streams
from .checks import whole_number

# The most tokens one request reserves, whatever its max_tokens says: settling takes a reservation off a
# bucket and gives most of it back, which float arithmetic only does exactly well below 2**53.
MAX_RESERVATION = 2**40


def first_count(payload: dict[str, Any], *fields: str) -> Optional[int]:
    """The first of `fields` that holds a positive whole number (`2` or `2.0`), or None; at most
    MAX_RESERVATION (a max_tokens of 1e308 times n would not even be a float)."""
    for name in fields:
        value = payload.get(name)
        if value is not None:
            count = whole_number(value)
            if count is not None and count > 0:
                return min(count, MAX_RESERVATION)
    return None


def estimate_chat(payload: dict[str, Any], size: int, default: int) -> float:
    """A quarter of the body's bytes plus the answer's allowance per choice."""
    allowance = first_count(payload, "max_completion_tokens", "max_tokens") or default
    return size / 4 + allowance * (first_count(payload, "n") or 1)


def estimate_completion(payload: dict[str, Any], size: int, default: int) -> float:
    """Legacy completions: the prompt, plus max_tokens per choice (best_of of them are generated)."""
    return size / 4 + (first_count(payload, "max_tokens") or default) * (first_count(payload, "best_of", "n") or 1)


def estimate_response(payload: dict[str, Any], size: int, default: int) -> float:
    """Responses: the input, plus max_output_tokens."""
    return size / 4 + (first_count(payload, "max_output_tokens") or default)


def estimate_input(payload: dict[str, Any], size: int, default: int) -> float:
    """Embeddings, moderations, speech: what is sent is what is counted."""
    return size / 4


def estimate_flat(payload: dict[str, Any], size: int, default: int) -> float:
    """Audio and images: the usage is unknown until the answer says it; reserve the default allowance."""
    return float(default)


TEXT_STREAM_ENDS = frozenset(("[DONE]",))
RESPONSE_NAMES = ("previous_response_id", "conversation")

CHAT = Endpoint("chat_completions", "POST", "/chat/completions", streams=Streams.DATA, stream_ends=TEXT_STREAM_ENDS,
                estimate=estimate_chat, inject_usage=True)

ENDPOINTS: tuple[Endpoint, ...] = (
    CHAT,
    Endpoint("completions", "POST", "/completions", schema="POST /v1/completions (application/json)",
             streams=Streams.DATA, stream_ends=TEXT_STREAM_ENDS, estimate=estimate_completion, inject_usage=True),
    Endpoint("embeddings", "POST", "/embeddings", schema="POST /v1/embeddings (application/json)",
             estimate=estimate_input),
    Endpoint("moderations", "POST", "/moderations", schema="POST /v1/moderations (application/json)",
             estimate=estimate_input, model_required=False),
    # Exact paths before the ones with an {id}: the first route that matches serves.
    Endpoint("responses", "POST", "/responses", schema="POST /v1/responses (application/json)",
             streams=Streams.TYPED, stream_ends=frozenset(("response.completed", "response.incomplete")),
             stream_error="typed", estimate=estimate_response, creates="resp_", names=RESPONSE_NAMES,
             model_required=False),
    Endpoint("responses_input_tokens", "POST", "/responses/input_tokens",
             schema="POST /v1/responses/input_tokens (application/json)", names=RESPONSE_NAMES,
             model_required=False),
    Endpoint("responses_compact", "POST", "/responses/compact",
             schema="POST /v1/responses/compact (application/json)", estimate=estimate_response,
             names=RESPONSE_NAMES),
    Endpoint("responses_get", "GET", "/responses/{id}", body=Body.NONE, model_field=None,
             streams=Streams.TYPED, stream_ends=frozenset(("response.completed", "response.incomplete")),
             stream_error="typed", shows_stored_usage=True),
    Endpoint("responses_delete", "DELETE", "/responses/{id}", body=Body.NONE, model_field=None, forgets=True),
    Endpoint("responses_cancel", "POST", "/responses/{id}/cancel", body=Body.NONE, model_field=None,
             shows_stored_usage=True),
    Endpoint("responses_input_items", "GET", "/responses/{id}/input_items", body=Body.NONE, model_field=None),
    Endpoint("conversations", "POST", "/conversations", schema="POST /v1/conversations (application/json)",
             model_field=None, creates="conv_"),
    Endpoint("conversations_get", "GET", "/conversations/{id}", body=Body.NONE, model_field=None),
    Endpoint("conversations_update", "POST", "/conversations/{id}",
             schema="POST /v1/conversations/{conversation_id} (application/json)", model_field=None),
    Endpoint("conversations_delete", "DELETE", "/conversations/{id}", body=Body.NONE, model_field=None,
             forgets=True),
    Endpoint("conversation_items", "GET", "/conversations/{id}/items", body=Body.NONE, model_field=None),
    Endpoint("conversation_items_create", "POST", "/conversations/{id}/items", model_field=None),
    Endpoint("conversation_item", "GET", "/conversations/{id}/items/{item}", body=Body.NONE, model_field=None),
    Endpoint("conversation_item_delete", "DELETE", "/conversations/{id}/items/{item}", body=Body.NONE,
             model_field=None),
    Endpoint("audio_transcriptions", "POST", "/audio/transcriptions", body=Body.MULTIPART,
             form_schema="POST /v1/audio/transcriptions (multipart/form-data)", streams=Streams.TYPED,
             stream_ends=frozenset(("transcript.text.done",)), stream_error="typed", estimate=estimate_flat),
    Endpoint("audio_translations", "POST", "/audio/translations", body=Body.MULTIPART,
             form_schema="POST /v1/audio/translations (multipart/form-data)", estimate=estimate_flat),
    Endpoint("audio_speech", "POST", "/audio/speech", schema="POST /v1/audio/speech (application/json)",
             estimate=estimate_input, binary=True, streams=Streams.TYPED, stream_asked=("stream_format", "sse"),
             stream_ends=frozenset(("speech.audio.done",)), stream_error="typed"),
    Endpoint("images_generations", "POST", "/images/generations",
             schema="POST /v1/images/generations (application/json)", streams=Streams.TYPED,
             stream_ends=frozenset(("image_generation.completed",)), stream_error="typed", estimate=estimate_flat,
             model_required=False),
    Endpoint("images_edits", "POST", "/images/edits", body=Body.MULTIPART,
             form_schema="POST /v1/images/edits (multipart/form-data)",
             schema="POST /v1/images/edits (application/json)", streams=Streams.TYPED,
             stream_ends=frozenset(("image_edit.completed",)), stream_error="typed", estimate=estimate_flat,
             model_required=False),
)
