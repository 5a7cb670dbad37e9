"""Follow-ups go where their state is: stored responses and conversations live with the key that made them."""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
import pytest

from chatgpt_apiserver.server import start_server

from .fake_upstream import Cue, FakeUpstream
from .harness import Stack, openai_controller
from .redis_server import RedisServer


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=30)


def fakes(stack: Stack, *names: str) -> list[FakeUpstream]:
    return [stack.fake(name) for name in names]


def controllers(pool: list[FakeUpstream], **extra: Any) -> list[dict[str, Any]]:
    """The last fake is the heaviest: it makes the first response, so a search in pool order (a, b, c) would
    ask the others first, and the tests see it."""
    return [openai_controller(fake, weight=100 if fake is pool[-1] else 1, **extra) for fake in pool]


def owner_of(ident: str, pool: list[FakeUpstream]) -> FakeUpstream:
    [found] = [fake for fake in pool if ident in fake.response_ids or ident in fake.conversation_ids]
    return found


def test_a_five_turn_chain_stays_on_its_owner(stack: Stack) -> None:
    pool = fakes(stack, "a", "b", "c")
    stack.gateway({"controllers": controllers(pool)})
    sdk = client(stack.base_url)
    answer = sdk.responses.create(model="gpt-4o-mini", input="turn 1")
    owner = owner_of(answer.id, pool)
    assert owner is pool[-1]
    for turn in range(2, 6):
        answer = sdk.responses.create(model="gpt-4o-mini", input=f"turn {turn}", previous_response_id=answer.id,
                                      stream=turn % 2 == 0)  # type: ignore[call-overload]
        if turn % 2 == 0:  # a stream: the id comes in its first event
            answer = next(event.response for event in answer if event.type == "response.completed")
        assert owner_of(answer.id, pool) is owner
    assert len(owner.requests_to("/responses")) == 5
    assert all(not fake.requests for fake in pool if fake is not owner)  # the others never heard of it
    assert sdk.responses.retrieve(answer.id).id == answer.id
    assert sdk.responses.input_items.list(answer.id).data
    assert all(not fake.requests for fake in pool if fake is not owner)


def test_an_id_made_before_a_restart_is_found_and_then_remembered(stack: Stack) -> None:
    pool = fakes(stack, "a", "b", "c")
    config = {"controllers": controllers(pool)}
    stack.gateway(config)
    made = client(stack.base_url).responses.create(model="gpt-4o-mini", input="before the restart")
    owner = owner_of(made.id, pool)
    stack.loop.run(stack.running.stop(grace=1.0))  # type: ignore[union-attr]
    stack.gateway(config)  # a fresh process: nothing remembered, no Redis
    before = {fake.name: len(fake.requests) for fake in pool}
    sdk = client(stack.base_url)
    follow = sdk.responses.create(model="gpt-4o-mini", input="after", previous_response_id=made.id)
    assert owner_of(follow.id, pool) is owner
    asked = {fake.name: len(fake.requests) - before[fake.name] for fake in pool}
    assert all(count <= 1 for count in asked.values()) and asked[owner.name] == 1  # each at most once
    again = {fake.name: len(fake.requests) for fake in pool}
    sdk.responses.retrieve(made.id)
    assert {fake.name: len(fake.requests) - again[fake.name] for fake in pool} == {
        fake.name: int(fake is owner) for fake in pool}  # remembered: straight to the owner


def test_an_id_nobody_holds_gets_the_upstreams_404(stack: Stack) -> None:
    pool = fakes(stack, "a", "b")
    stack.gateway({"controllers": [openai_controller(fake) for fake in pool]})
    with pytest.raises(openai.NotFoundError) as caught:
        client(stack.base_url).responses.retrieve("resp_" + "0" * 48)
    assert caught.value.status_code == 404
    assert [len(fake.requests) for fake in pool] == [1, 1]  # asked each once, then gave the 404


def test_two_instances_sharing_redis_know_each_others_ids(stack: Stack, redis_server: RedisServer) -> None:
    pool = fakes(stack, "a", "b", "c")
    config = {"redis_url": redis_server.url, "controllers": controllers(pool)}
    stack.gateway(config)
    other = stack.loop.run(start_server(stack.settings(config)))
    try:
        made = client(stack.base_url).responses.create(model="gpt-4o-mini", input="on instance 1")
        owner = owner_of(made.id, pool)
        time.sleep(0.1)  # the owner is on its way to Redis
        before = {fake.name: len(fake.requests) for fake in pool}
        follow = client(f"http://127.0.0.1:{other.port}/v1").responses.create(
            model="gpt-4o-mini", input="on instance 2", previous_response_id=made.id)
        assert owner_of(follow.id, pool) is owner
        assert {fake.name: len(fake.requests) - before[fake.name] for fake in pool} == {
            fake.name: int(fake is owner) for fake in pool}  # no search: instance 2 knew
    finally:
        stack.loop.run(other.stop(grace=1.0))


def test_conversations_and_their_responses_go_to_the_conversations_owner(stack: Stack) -> None:
    pool = fakes(stack, "a", "b", "c")
    stack.gateway({"controllers": controllers(pool)})
    sdk = client(stack.base_url)
    conversation = sdk.conversations.create()
    owner = owner_of(conversation.id, pool)
    for index in range(3):
        sdk.responses.create(model="gpt-4o-mini", input=f"message {index}",
                             conversation={"id": conversation.id} if index % 2 else conversation.id)
    sdk.conversations.items.list(conversation.id)
    assert all(not fake.requests for fake in pool if fake is not owner)
    sdk.conversations.delete(conversation.id)
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.retrieve(conversation.id)


def test_a_state_group_shares_follow_ups(stack: Stack) -> None:
    first, second = fakes(stack, "first", "second")
    second.store = first.store  # two keys of one OpenAI project: they see each other's responses
    stack.gateway({"controllers": [openai_controller(first, state_group="project-x"),
                                   openai_controller(second, state_group="project-x")]})
    sdk = client(stack.base_url)
    made = sdk.responses.create(model="gpt-4o-mini", input="hi")
    served = [sdk.responses.create(model="gpt-4o-mini", input="again", previous_response_id=made.id)
              for _ in range(4)]
    assert len(served) == 4
    assert first.requests_to("/responses") and second.requests_to("/responses")  # both of the group served


def test_a_follow_up_waits_for_its_busy_owner_instead_of_going_elsewhere(stack: Stack) -> None:
    pool = fakes(stack, "a", "b")
    stack.gateway({"controllers": [openai_controller(fake, max_concurrency=1) for fake in pool]},
                  "--max-queue-wait", "10")
    sdk = client(stack.base_url)
    made = sdk.responses.create(model="gpt-4o-mini", input="hi")
    owner = owner_of(made.id, pool)
    owner.cue(Cue(delay=1.0))  # the owner's next answer is slow: its one slot is taken meanwhile
    results: list[Any] = []
    slow = threading.Thread(target=lambda: results.append(sdk.responses.retrieve(made.id)))
    slow.start()
    time.sleep(0.3)
    started = time.monotonic()
    follow = sdk.responses.create(model="gpt-4o-mini", input="next", previous_response_id=made.id)
    slow.join(10)
    assert owner_of(follow.id, pool) is owner and results
    assert time.monotonic() - started > 0.4  # it waited for the owner's slot
