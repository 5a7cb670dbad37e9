"""Clients as tenants, end to end with the official openai client: their own limits and headers, allow-lists,
model limits and budgets, on every kind of answer."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from .fake_upstream import Cue, FakeUpstream
from .harness import Stack, openai_controller

MESSAGES = [{"role": "user", "content": "Say hello"}]
Api = Callable[..., openai.OpenAI]  # the `api` fixture: api(key) is an SDK client of the gateway


def chat(client: openai.OpenAI, model: str = "gpt-4o", **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **extra)


def seconds(duration: str) -> float:
    """OpenAI's (Go's) duration notation, e.g. 1m0s, 39.98s, 20ms."""
    found = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:(\d+)ms)?", duration)
    assert found and duration, duration
    hours, minutes, secs, millis = (float(part) if part else 0.0 for part in found.groups())
    return hours * 3600 + minutes * 60 + secs + millis / 1000


def start(stack: Stack, clients: list[dict[str, Any]], fake: FakeUpstream, **config: Any) -> Stack:
    return stack.gateway({"controllers": [openai_controller(fake)], "clients": clients, **config})


def test_a_clients_rpm_gives_429_with_its_headers_while_another_client_is_unaffected(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    start(stack, [{"name": "chat", "key": "chat-key", "rpm": 3},
                  {"name": "notebooks", "key": "nb-key"}], fake)
    chat_client = api("chat-key")
    seen = []
    for _ in range(3):
        raw = chat(chat_client)
        seen.append((raw.headers["x-ratelimit-limit-requests"], raw.headers["x-ratelimit-remaining-requests"],
                     raw.headers["x-ratelimit-reset-requests"]))
    assert [s[:2] for s in seen] == [("3", "2"), ("3", "1"), ("3", "0")]
    # Until the bucket is full again, in OpenAI's notation: a request refills every 20 s.
    assert seen[0][2] == "20s"
    assert 38 < seconds(seen[1][2]) <= 40 and 56 < seconds(seen[2][2]) <= 60
    with pytest.raises(openai.RateLimitError) as refused:
        chat(chat_client)
    error = refused.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert "'chat'" in error.message and "3 requests per minute" in error.message
    assert 1 <= int(error.response.headers["retry-after"]) <= 20  # a third of a minute refills one request
    assert 0 < int(error.response.headers["retry-after-ms"]) <= 20_000
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake.chat_requests) == 3  # the refused request never reached the upstream
    other = chat(api("nb-key"))
    assert other.parse().choices[0].message.content == "hello"
    assert "x-ratelimit-limit-requests" not in other.headers  # a client without limits gets none of them


def test_a_clients_tpm_counts_the_reservation_then_the_usage_and_streams_carry_the_headers(stack: Stack,
                                                                                         api: Api) -> None:
    fake = stack.fake()
    fake.default = Cue(mode="stream", events=3)
    start(stack, [{"name": "writer", "key": "writer-key", "tpm": 1000}, {"name": "other", "key": "other-key"}], fake)
    client = api("writer-key")
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MESSAGES, stream=True, max_tokens=700) as response:
        assert response.headers["x-ratelimit-limit-tokens"] == "1000"
        remaining = int(response.headers["x-ratelimit-remaining-tokens"])
        assert 250 <= remaining <= 300  # 700 reserved for the answer plus about a quarter of the body
        assert "x-ratelimit-limit-requests" not in response.headers
        assert b"[DONE]" in response.read()
    # The stream used 8 tokens and gave the rest of its reservation back: another large request fits, and
    # while it runs (slowly) its reservation holds the bucket.
    fake.cue(Cue(mode="json", delay=1.5))
    slow = threading.Thread(target=chat, args=(client,), kwargs={"max_tokens": 700})
    slow.start()
    deadline = time.monotonic() + 10
    while len(fake.chat_requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client, max_tokens=700)
    assert "1,000 tokens per minute" in refused.value.message and "reserves" in refused.value.message
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "1000"
    assert chat(api("other-key")).http_response.status_code == 200  # another client is unaffected
    slow.join()
    raw = chat(client, max_tokens=700)  # the slow answer used 12: its reservation came back
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) >= 250
    assert len(fake.chat_requests) == 4


@pytest.mark.parametrize("whole", [int, float])
def test_the_reservation_counts_every_choice_however_the_integers_are_written(stack: Stack, api: Api,
                                                                             whole: type) -> None:
    """n=2 (or 2.0: an integer to OpenAI's schema) reserves max_tokens twice; reading 2.0 as no count would
    let a client reserve a fraction of what it asks for."""
    fake = stack.fake()
    start(stack, [{"name": "writer", "key": "writer-key", "tpm": 1000}], fake)
    raw = chat(api("writer-key"), n=whole(2), max_tokens=whole(300))
    assert 330 <= int(raw.headers["x-ratelimit-remaining-tokens"]) <= 400  # 2 x 300, plus a quarter of the body


def test_an_enormous_max_tokens_is_settled_back_exactly(stack: Stack, api: Api) -> None:
    """A reservation of 10**29 would take the bucket far below zero; giving nearly all of it back in float
    arithmetic would then land on 0, not on the capacity less what was used."""
    fake = stack.fake()
    start(stack, [{"name": "dave", "key": "dave-key", "tpm": 2000}], fake)
    client = api("dave-key")
    assert chat(client, max_tokens=10**29).http_response.status_code == 200  # it used 12 tokens
    raw = chat(client, max_tokens=1500)  # fits in what is left: 2000 - 12, and a little refilled
    assert 400 <= int(raw.headers["x-ratelimit-remaining-tokens"]) <= 500


def test_models_is_an_allow_list_and_model_limits_are_limits_of_their_own(stack: Stack, api: Api) -> None:
    fake = stack.fake(model_ids=("gpt-4o", "gpt-4o-mini", "o3"))
    start(stack, [{"name": "notebooks", "key": "nb-key", "models": ["gpt-4o", "gpt-4o-mini"],
                   "model_limits": {"gpt-4o": {"rpm": 1}}}], fake)
    client = api("nb-key")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(client, model="o3")
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"
    assert denied.value.body["type"] == "permission_error" and denied.value.body["param"] == "model"  # type: ignore[index]
    assert "'o3'" in denied.value.message and "gpt-4o, gpt-4o-mini" in denied.value.message
    assert [model.id for model in client.models.list()] == ["gpt-4o", "gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("o3")
    first = chat(client, model="gpt-4o")
    assert first.headers["x-ratelimit-limit-requests"] == "1" and first.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client, model="gpt-4o")
    assert "for the model 'gpt-4o'" in refused.value.message
    for _ in range(3):  # the other model has no limit of its own
        assert chat(client, model="gpt-4o-mini").http_response.status_code == 200
    assert [seen.json["model"] for seen in fake.chat_requests] == ["gpt-4o", *["gpt-4o-mini"] * 3]


def test_a_model_limit_holds_for_the_models_dated_snapshots(stack: Stack, api: Api) -> None:
    fake = stack.fake(model_ids=("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o"))
    start(stack, [{"name": "app", "key": "app-key", "model_limits": {"gpt-4o-mini": {"rpm": 1}}}], fake)
    client = api("app-key")
    assert chat(client, model="gpt-4o-mini").headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client, model="gpt-4o-mini-2024-07-18")  # the same model, by its snapshot's name
    assert "for the model 'gpt-4o-mini-2024-07-18'" in refused.value.message
    assert chat(client, model="gpt-4o").http_response.status_code == 200  # another model is not limited
    assert [seen.json["model"] for seen in fake.chat_requests] == ["gpt-4o-mini", "gpt-4o"]


def test_what_one_client_stores_another_cannot_read_continue_or_delete(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    start(stack, [{"name": "a", "key": "a-key"}, {"name": "b", "key": "b-key"}], fake)
    mine, theirs = api("a-key"), api("b-key")
    made = mine.responses.create(model="gpt-4o", input="hi")
    conversation = mine.conversations.create()
    seen = len(fake.requests)
    for attempt in (lambda: theirs.responses.retrieve(made.id), lambda: theirs.responses.delete(made.id),
                    lambda: theirs.responses.input_items.list(made.id),
                    lambda: theirs.conversations.retrieve(conversation.id)):
        with pytest.raises(openai.NotFoundError) as missing:
            attempt()
        assert "not found" in missing.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        theirs.responses.create(model="gpt-4o", input="and?", previous_response_id=made.id)
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert len(fake.requests) == seen  # none of them reached the upstream
    assert mine.responses.retrieve(made.id).id == made.id  # its maker still can
    assert mine.responses.create(model="gpt-4o", input="and?", previous_response_id=made.id).output_text
    assert mine.conversations.retrieve(conversation.id).id == conversation.id


def test_plain_client_keys_share_what_they_store_but_not_what_a_named_client_stores(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    start(stack, [{"name": "named", "key": "named-key"}], fake, client_keys=["k1", "k2"])
    first, second, named = api("k1"), api("k2"), api("named-key")
    shared = first.responses.create(model="gpt-4o", input="hi")
    assert second.responses.retrieve(shared.id).id == shared.id  # no mark: a reload that renumbers them loses nothing
    kept = named.responses.create(model="gpt-4o", input="hi")
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(kept.id)


def test_limits_apply_on_every_endpoint(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    start(stack, [{"name": "embedder", "key": "embed-key", "rpm": 2, "models": ["text-embedding-3-small"]}], fake)
    client = api("embed-key")
    for _ in range(2):
        raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello")
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    with pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model="gpt-4o", input="hi")
    assert len(fake.requests_to("/embeddings")) == 2 and not fake.requests_to("/responses")


def test_keys_come_as_digests_env_vars_or_files_and_wrong_keys_get_401(stack: Stack, api: Api, tmp_path: Path) -> None:
    fake = stack.fake()
    (tmp_path / "nb.key").write_text("notebook-key\n")  # next to the config file the Stack writes
    digest = hashlib.sha256(b"digest-key").hexdigest()
    stack.gateway({"controllers": [openai_controller(fake)], "clients": [
        {"name": "by-digest", "key_sha256": digest}, {"name": "by-env", "key_env": "TEAM_KEY"},
        {"name": "by-file", "key_file": "nb.key"}]}, env={"TEAM_KEY": "env-team-key"})
    for key in ("digest-key", "env-team-key", "notebook-key"):
        assert chat(api(key)).http_response.status_code == 200
    for wrong in (digest, "some-other-key"):  # the digest itself is not a key
        with pytest.raises(openai.AuthenticationError):
            chat(api(wrong))
    assert len(fake.chat_requests) == 3


def test_an_allow_list_refuses_requests_that_name_no_model_but_not_follow_ups(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    start(stack, [{"name": "limited", "key": "limited-key", "models": ["gpt-4o"]},
                  {"name": "open", "key": "open-key"}], fake)
    client = api("limited-key")
    # Left to the upstream's default model, these could spend on any model: the allow-list cannot vouch for it.
    for request in (lambda: client.moderations.create(input="hello"),
                    lambda: client.images.generate(prompt="a cat"),
                    lambda: client.responses.create(input="hi")):
        with pytest.raises(openai.PermissionDeniedError) as denied:
            request()
        error = denied.value
        assert error.code == "model_not_allowed" and error.body["param"] == "model"  # type: ignore[index]
        assert "names no model" in error.message and "'limited'" in error.message and "gpt-4o" in error.message
    assert not fake.requests_to("/moderations") and not fake.requests_to("/images/generations")
    assert api("open-key").moderations.create(input="hello").results  # a client without an allow-list may
    # Follow-ups name the stored response or conversation they act on, not a model: nothing new is spent on one.
    made = client.responses.create(model="gpt-4o", input="hi")
    assert client.responses.retrieve(made.id).id == made.id
    assert client.responses.input_items.list(made.id).data is not None
    conversation = client.conversations.create(metadata={"topic": "demo"})  # stores items, runs no model
    assert client.conversations.retrieve(conversation.id).id == conversation.id
    assert client.conversations.delete(conversation.id).deleted


def test_answers_that_admit_nothing_carry_the_clients_levels_as_they_stand(stack: Stack, api: Api) -> None:
    fake = stack.fake(model_ids=("gpt-4o", "o3"))
    start(stack, [{"name": "team", "key": "team-key", "rpm": 5, "tpm": 10_000, "models": ["gpt-4o"]}], fake)
    client = api("team-key")
    assert chat(client).headers["x-ratelimit-remaining-requests"] == "4"
    status, headers, body = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o"},
                                          headers={"Authorization": "Bearer team-key"})
    assert status == 400 and b"messages" in body
    seen = [headers]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(client, model="o3")
    seen.append(denied.value.response.headers)
    seen.append(client.models.with_raw_response.list().headers)
    seen.append(client.models.with_raw_response.retrieve("gpt-4o").headers)
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("o3")
    seen.append(missing.value.response.headers)
    for answer in seen:
        found = {name.lower(): value for name, value in answer.items()}
        assert found["x-ratelimit-limit-requests"] == "5" and found["x-ratelimit-remaining-requests"] == "4"
        assert found["x-ratelimit-limit-tokens"] == "10000" and int(found["x-ratelimit-remaining-tokens"]) > 9000
        assert 0 < seconds(found["x-ratelimit-reset-requests"]) <= 12
    assert chat(client).headers["x-ratelimit-remaining-requests"] == "3"  # none of them took a request
    assert len(fake.chat_requests) == 2
