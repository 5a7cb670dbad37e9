"""The mock controller (demos, load tests) on every endpoint it serves, through the gateway, with the SDK."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import openai
import pytest

from .harness import Stack

MOCKS = {"controllers": [
    {"type": "mock", "name": "mock-a", "config": {"tokens_per_second": 1000, "first_token_delay": 0.0}},
    {"type": "mock", "name": "mock-b", "config": {"tokens_per_second": 1000, "first_token_delay": 0.0}},
]}


@pytest.fixture
def sdk(stack: Stack) -> Any:
    stack.gateway(MOCKS)
    return openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0, timeout=30)


def test_text_endpoints(sdk: Any) -> None:
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).choices
    assert sdk.completions.create(model="gpt-4o-mini", prompt="hi", max_tokens=3).choices[0].text
    assert list(sdk.completions.create(model="gpt-4o-mini", prompt="hi", max_tokens=3, stream=True))
    vectors = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=64,
                                    encoding_format="float")
    assert [len(item.embedding) for item in vectors.data] == [64, 64] and vectors.usage.prompt_tokens
    packed = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=64,
                                   encoding_format="base64")
    assert all(isinstance(item.embedding, str) for item in packed.data)  # as OpenAI sends it: the JS SDK decodes it
    decoded = [x for item in packed.data for x in struct.unpack("<64f", base64.b64decode(item.embedding))]
    floats = [x for item in vectors.data for x in item.embedding]
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(decoded, floats, strict=True))
    assert not sdk.moderations.create(model="omni-moderation-latest", input="hello").results[0].flagged
    assert sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"  # the README's examples work in the demo


def test_whole_number_floats_count_as_the_integers_they_are(sdk: Any) -> None:
    """Validation passes 2.0 where the schema says integer, as OpenAI does; the mock then reads it as 2."""
    texts = sdk.completions.create(model="gpt-4o-mini", prompt="hi", n=2.0, max_tokens=3.0)
    assert len(texts.choices) == 2 and len(texts.choices[0].text.split()) == 3
    assert texts.choices[0].finish_reason == "length"
    vectors = sdk.embeddings.create(model="text-embedding-3-small", input="a", dimensions=8.0, encoding_format="float")
    assert len(vectors.data[0].embedding) == 8
    answer = sdk.responses.create(model="gpt-4o-mini", input="hello", max_output_tokens=16.0)  # (the least)
    assert len(answer.output_text.split()) == 16


def test_responses_and_their_follow_ups(sdk: Any) -> None:
    made = sdk.responses.create(model="gpt-4o-mini", input="hello")
    assert made.output_text and made.usage.total_tokens
    events = list(sdk.responses.create(model="gpt-4o-mini", input="again", previous_response_id=made.id,
                                       stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert sdk.responses.retrieve(made.id).id == made.id
    assert sdk.responses.input_items.list(made.id).data
    assert sdk.responses.input_tokens.count(model="gpt-4o-mini", input="count").input_tokens > 0
    assert sdk.responses.cancel(made.id).status == "cancelled"
    sdk.responses.delete(made.id)
    for call in (lambda: sdk.responses.retrieve(made.id),
                 lambda: sdk.responses.create(model="gpt-4o-mini", input="x", previous_response_id=made.id)):
        with pytest.raises(openai.NotFoundError):
            call()


def test_conversations(sdk: Any) -> None:
    conversation = sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}])
    added = sdk.conversations.items.create(conversation.id,
                                           items=[{"type": "message", "role": "user", "content": "more"}])
    item = added.data[0]
    assert sdk.conversations.items.retrieve(item.id, conversation_id=conversation.id).id == item.id
    assert len(sdk.conversations.items.list(conversation.id).data) == 2
    sdk.conversations.items.delete(item.id, conversation_id=conversation.id)
    assert sdk.responses.create(model="gpt-4o-mini", input="x", conversation=conversation.id).output_text
    assert sdk.conversations.update(conversation.id, metadata={"k": "v"}).metadata == {"k": "v"}
    assert sdk.conversations.delete(conversation.id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.retrieve(conversation.id)


def test_endpoints_the_mock_does_not_serve_are_a_404(sdk: Any) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.images.generate(model="gpt-image-1", prompt="a cat")
    assert "No controller" in caught.value.message
