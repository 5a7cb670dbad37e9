"""The fake upstream's Responses and Conversations APIs, driven directly with the official SDK (no gateway).

Each fake is one OpenAI project: what it stores, only it knows, so a follow-up that reaches another fake gets
OpenAI's 404. Answers are validated strictly against the SDK's types, not only parsed.
"""

from __future__ import annotations

import time

import openai
import orjson
import pytest
from openai.types.conversations import Conversation, ConversationItemList
from openai.types.responses import (
    CompactedResponse,
    InputTokenCountResponse,
    Response,
    ResponseCompactionItem,
    ResponseCompletedEvent,
    ResponseItemList,
    ResponseStreamEvent,
)

from .fake_upstream import Cue
from .harness import Stack
from .sdk_checks import Sdk, raw, strict, strict_event

MODEL = "gpt-4.1-mini"
STREAM_TYPES = ["response.created", "response.in_progress", "response.output_item.added",
                "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done", "response.output_item.done",
                "response.completed"]


def test_a_response_is_stored_and_a_follow_up_builds_on_it(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake("a")
    fake.default = Cue(text="Paris.")
    client = sdk(fake)
    first = client.responses.with_raw_response.create(model=MODEL, input="Capital of France?",
                                                      instructions="Be brief.")
    response = first.parse()
    strict(Response, orjson.loads(first.http_response.content))
    assert response.output_text == "Paris."
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens == response.usage.input_tokens + 2
    assert fake.response_ids == [response.id]
    assert client.responses.retrieve(response.id).output_text == "Paris."

    follow_up = client.responses.create(model=MODEL, input="And of Spain?", previous_response_id=response.id)
    assert follow_up.previous_response_id == response.id
    assert follow_up.usage is not None and response.usage is not None
    assert follow_up.usage.input_tokens > response.usage.total_tokens  # the earlier turn counts as input
    assert fake.requests_to("/responses")[-1].json["previous_response_id"] == response.id


def test_a_follow_up_that_reaches_another_fake_is_not_found(stack: Stack, sdk: Sdk) -> None:
    first, second = stack.fake("a"), stack.fake("b")
    response = sdk(first).responses.create(model=MODEL, input="hi")
    conversation = sdk(first).conversations.create()
    other = sdk(second)
    with pytest.raises(openai.NotFoundError) as caught:
        other.responses.create(model=MODEL, input="more", previous_response_id=response.id)
    assert caught.value.body == {"message": f"Previous response with id '{response.id}' not found.",
                                 "type": "invalid_request_error", "param": "previous_response_id",
                                 "code": "previous_response_not_found"}
    for call in (lambda: other.responses.create(model=MODEL, input="x", conversation={"id": conversation.id}),
                 lambda: other.responses.input_tokens.count(model=MODEL, input="x", conversation=conversation.id),
                 lambda: other.responses.compact(model=MODEL, previous_response_id=response.id)):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] in (
            "conversation_not_found", "previous_response_not_found")
    for call in (lambda: other.responses.retrieve(response.id), lambda: other.responses.delete(response.id),
                 lambda: other.responses.input_items.list(response.id),
                 lambda: other.conversations.retrieve(conversation.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert second.response_ids == [] and second.conversation_ids == []
    assert sdk(first).responses.retrieve(response.id).id == response.id


def test_the_stream_is_openais_typed_sse(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.default = Cue(events=2, text="w")
    client = sdk(fake)
    events = list(client.responses.create(model=MODEL, input="hi", stream=True))
    assert [event.type for event in events] == STREAM_TYPES
    assert [event.sequence_number for event in events] == list(range(len(STREAM_TYPES)))
    for event in events:
        strict_event(ResponseStreamEvent, event)
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.output_text == "w0 w1 " and completed.response.usage is not None
    assert events[0].response.status == "in_progress" and events[0].response.id == completed.response.id
    assert completed.response.id in fake.response_ids

    with client.responses.stream(model=MODEL, input="hi") as stream:  # the SDK's accumulating helper
        assert stream.get_final_response().output_text == "w0 w1 "

    status, headers, body = raw(fake, "POST", "/v1/responses", {"model": MODEL, "input": "x", "stream": True})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert body.startswith(b'event: response.created\ndata: {"type":"response.created"')
    assert body.endswith(b"}\n\n") and b"[DONE]" not in body


def test_a_stored_response_replays_its_events_after_a_sequence_number(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    response = client.responses.create(model=MODEL, input="hi")
    events = list(client.responses.retrieve(response.id, stream=True, starting_after=2))
    assert [event.sequence_number for event in events][:2] == [3, 4]
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "hello"


def test_store_false_keeps_nothing(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    response = client.responses.create(model=MODEL, input="hi", store=False)
    assert response.output_text == "hello" and fake.response_ids == []
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="more", previous_response_id=response.id)


def test_a_background_response_is_queued_then_completes(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.store.background_seconds = 0.3
    client = sdk(fake)
    queued = client.responses.create(model=MODEL, input="hi", background=True)
    assert queued.status == "queued" and queued.output == [] and queued.background
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        current = client.responses.retrieve(queued.id)
        statuses.append(current.status)
        if current.status == "completed":
            break
        time.sleep(0.02)
    assert statuses[-1] == "completed" and current.output_text == "hello"
    assert set(statuses) <= {"queued", "in_progress", "completed"}
    events = list(client.responses.create(model=MODEL, input="hi", background=True, stream=True))
    assert events[0].response.status == "queued" and events[-1].type == "response.completed"
    assert events[-1].response.background and events[-1].response.id in fake.response_ids


def test_cancel_stops_a_background_response_only(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.store.background_seconds = 0.3
    client = sdk(fake)
    queued = client.responses.create(model=MODEL, input="hi", background=True)
    assert client.responses.cancel(queued.id).status == "cancelled"
    time.sleep(0.45)  # past the moment it would have completed
    assert client.responses.retrieve(queued.id).status == "cancelled"
    assert client.responses.cancel(queued.id).status == "cancelled"  # idempotent
    foreground = client.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(foreground.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_unknown")


def test_delete_removes_a_response(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    response = client.responses.create(model=MODEL, input="hi")
    status, _headers, body = raw(fake, "DELETE", f"/v1/responses/{response.id}")
    assert status == 200 and orjson.loads(body) == {"id": response.id, "object": "response.deleted", "deleted": True}
    assert fake.response_ids == []
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_input_items_page_with_limit_order_and_after(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    messages = [{"role": "user", "content": f"m{index}"} for index in range(5)]
    response = client.responses.create(model=MODEL, input=messages)
    texts = [item.content[0].text for item in client.responses.input_items.list(response.id, limit=2, order="asc")]
    assert texts == ["m0", "m1", "m2", "m3", "m4"]  # the SDK followed `after` over three pages
    pages = fake.requests_to("/input_items")
    assert len(pages) == 3 and "limit=2" in pages[1].path and "after=" in pages[1].path
    status, _headers, body = raw(fake, "GET", f"/v1/responses/{response.id}/input_items?limit=2")
    page = strict(ResponseItemList, orjson.loads(body))
    assert status == 200 and page.has_more and [item.content[0].text for item in page.data] == ["m4", "m3"]
    status, _headers, body = raw(fake, "GET", f"/v1/responses/{response.id}/input_items?limit=500")
    assert status == 400 and orjson.loads(body)["error"]["param"] == "limit"


def test_input_tokens_and_compact_build_on_stored_context(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    first = client.responses.create(model=MODEL, input="a long first question " * 5)
    alone = client.responses.input_tokens.with_raw_response.count(model=MODEL, input="next")
    strict(InputTokenCountResponse, orjson.loads(alone.http_response.content))
    with_context = client.responses.input_tokens.count(model=MODEL, input="next", previous_response_id=first.id)
    assert with_context.object == "response.input_tokens"
    assert with_context.input_tokens > alone.parse().input_tokens > 0

    compacted = client.responses.with_raw_response.compact(model=MODEL, input="and then", previous_response_id=first.id)
    body = orjson.loads(compacted.http_response.content)
    assert compacted.parse().object == "response.compaction" and body["id"].startswith("resp_")
    # OpenAI documents the output as "all user messages, followed by a single compaction item".
    assert [item["role"] for item in body["output"][:-1]] == ["user", "user"]
    strict(ResponseCompactionItem, body["output"][-1])
    strict(CompactedResponse, {**body, "output": body["output"][-1:]})


def test_conversations_and_their_items(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    created = client.conversations.with_raw_response.create(items=[{"role": "user", "content": "hello"}],
                                                            metadata={"topic": "demo"})
    conversation = strict(Conversation, orjson.loads(created.http_response.content))
    assert conversation.id.startswith("conv_") and fake.conversation_ids == [conversation.id]
    assert client.conversations.retrieve(conversation.id).metadata == {"topic": "demo"}
    assert client.conversations.update(conversation.id, metadata={"topic": "new"}).metadata == {"topic": "new"}

    added = client.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}])
    assert [item.role for item in added.data] == ["assistant", "user"]
    listed = [item.id for item in client.conversations.items.list(conversation.id, limit=2, order="asc")]
    assert len(listed) == 3 and listed[1:] == [item.id for item in added.data]
    status, _headers, body = raw(fake, "GET", f"/v1/conversations/{conversation.id}/items")
    assert status == 200 and strict(ConversationItemList, orjson.loads(body)).data[0].id == listed[-1]

    assert client.conversations.items.retrieve(listed[0], conversation_id=conversation.id).id == listed[0]
    after_delete = client.conversations.items.delete(listed[0], conversation_id=conversation.id)
    assert after_delete.id == conversation.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(listed[0], conversation_id=conversation.id)
    assert client.conversations.delete(conversation.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)


def test_a_response_in_a_conversation_appends_its_items(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.default = Cue(text="Hi there.")
    client = sdk(fake)
    conversation = client.conversations.create()
    response = client.responses.create(model=MODEL, input="Hello?", conversation=conversation.id)
    assert response.conversation is not None and response.conversation.id == conversation.id
    client.responses.create(model=MODEL, input="Again?", conversation={"id": conversation.id})
    items = list(client.conversations.items.list(conversation.id, order="asc"))
    assert [(item.role, item.content[0].text) for item in items] == [
        ("user", "Hello?"), ("assistant", "Hi there."), ("user", "Again?"), ("assistant", "Hi there.")]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="x", conversation=conversation.id, previous_response_id=response.id)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "conversation"
