"""Fair share when the keys are the bottleneck: the waiting queue is served client by client, interactive
before batch and by share within a class, with the official openai client against a slow fake upstream."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from typing import Any

import openai
import orjson

from .fake_upstream import Cue, FakeUpstream
from .harness import Stack, openai_controller

SLOT = 0.25  # seconds the upstream takes per request: one service slot


def clients_config(fake: FakeUpstream, clients: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"controllers": [openai_controller(fake, max_concurrency=1)], "clients": clients,
            "max_queue_wait": 60, **extra}


def order(fake: FakeUpstream) -> list[str]:
    """Who each request the upstream received came from, in the order it received them."""
    return [seen.json["messages"][0]["content"] for seen in fake.chat_requests]


def flood(stack: Stack, key: str, label: str, count: int) -> threading.Thread:
    """`count` concurrent requests from one client, in a thread of their own."""
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)
        try:
            await asyncio.gather(*(client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"{label}-{i}"}]) for i in range(count)))
        finally:
            await client.close()

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    return thread


def wait_for_queue(stack: Stack, length: int) -> None:
    assert stack.running is not None
    scheduler = stack.running.gateway.scheduler
    deadline = time.monotonic() + 20
    while scheduler.queue_length < length:
        assert time.monotonic() < deadline, f"only {scheduler.queue_length} waiting"
        time.sleep(0.01)


def test_an_interactive_request_waits_at_most_one_slot_behind_a_batch_flood(stack: Stack, api: Any) -> None:
    fake = stack.fake()
    fake.default = Cue(delay=SLOT)
    stack.gateway(clients_config(fake, [{"name": "nightly", "key": "batch-key", "priority": "batch"},
                                        {"name": "chat", "key": "chat-key"}]))
    batch = flood(stack, "batch-key", "batch", 30)
    wait_for_queue(stack, 25)
    chat = api("chat-key", timeout=60)
    for index in range(3):
        batch_before = sum(label.startswith("batch") for label in order(fake))
        started = time.monotonic()
        chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"chat-{index}"}])
        waited = time.monotonic() - started
        seen = order(fake)
        batch_ahead = sum(label.startswith("batch") for label in seen[:seen.index(f"chat-{index}")]) - batch_before
        assert batch_ahead <= 1, seen  # the batch request in service when it came, at most
        assert waited < 2 * SLOT + 1.0  # its own slot plus at most one more (with room for a loaded machine)
    assert stack.running is not None and stack.running.gateway.scheduler.queue_length >= 15
    batch.join(60)
    assert len(fake.chat_requests) == 33


def test_interactive_requests_sent_together_go_ahead_of_the_whole_batch_queue(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(delay=SLOT / 2)
    stack.gateway(clients_config(fake, [{"name": "nightly", "key": "batch-key", "priority": "batch"},
                                        {"name": "chat", "key": "chat-key"}]))
    batch = flood(stack, "batch-key", "batch", 30)
    wait_for_queue(stack, 25)
    chat = flood(stack, "chat-key", "chat", 3)
    chat.join(30)
    batch.join(60)
    seen = order(fake)
    first_chat = min(seen.index(f"chat-{i}") for i in range(3))
    assert sorted(seen[first_chat:first_chat + 3]) == ["chat-0", "chat-1", "chat-2"], seen
    assert first_chat <= 30 - 25 + 1, seen  # behind what had started before they came, and at most one more


def test_two_interactive_clients_with_shares_three_to_one_are_served_three_to_one(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(delay=0.04)
    stack.gateway(clients_config(fake, [{"name": "big", "key": "big-key", "share": 3},
                                        {"name": "small", "key": "small-key", "share": 1}]))
    floods = [flood(stack, "big-key", "big", 45), flood(stack, "small-key", "small", 45)]
    wait_for_queue(stack, 80)  # both are flooding the queue now
    for thread in floods:
        thread.join(60)
    seen = order(fake)
    # From the moment both were waiting until the big one ran out: three of its requests per one of the other.
    window = seen[len(seen) - 80:len(seen) - 80 + 40]
    big = sum(label.startswith("big") for label in window)
    assert 27 <= big <= 33, window  # 30 of 40 at exactly 3:1


def test_one_client_cannot_fill_the_queue(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(delay=1.0)
    stack.gateway(clients_config(fake, [{"name": "nightly", "key": "batch-key", "priority": "batch"},
                                        {"name": "chat", "key": "chat-key"}], max_queue_size=10,
                                 max_client_queue_share=0.5))
    results: list[Any] = []

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=stack.base_url, api_key="batch-key", max_retries=0, timeout=60)
        try:
            results.extend(await asyncio.gather(*(client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"batch-{i}"}]) for i in range(9)),
                return_exceptions=True))
        finally:
            await client.close()

    asyncio.run(run())
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    # One in service, five waiting (half of max_queue_size), the other three refused at once.
    assert len(refused) == 3, results
    assert all("The client 'nightly' has" in r.message and "its share of the queue" in r.message for r in refused)


def test_without_clients_the_queue_is_first_in_first_out(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(delay=0.3)
    stack.gateway({"controllers": [openai_controller(fake, max_concurrency=1)], "max_queue_wait": 30})
    threads = []
    for i in range(8):  # each is in service or in the queue before the next is sent: a known arrival order
        threads.append(flood_one(stack, f"anonymous-{i}"))
        if i:
            wait_for_queue(stack, i)
        else:
            while not fake.chat_requests:
                time.sleep(0.005)
    for thread in threads:
        thread.join(30)
    assert order(fake) == [f"anonymous-{i}" for i in range(8)]


def flood_one(stack: Stack, label: str) -> threading.Thread:
    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
        connection.request("POST", "/v1/chat/completions", body=orjson.dumps(
            {"model": "gpt-4o", "messages": [{"role": "user", "content": label}]}))
        assert connection.getresponse().status == 200
        connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread
