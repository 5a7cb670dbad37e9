"""Every endpoint through the gateway, with the official openai client: the upstream gets the client's bytes
(but for a model alias and the usage request), streams and binary answers are relayed as they come."""

from __future__ import annotations

import http.client
import time
from typing import Any

import openai
import orjson
import pytest

from .fake_media import speech_audio
from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .sdk_checks import multipart


def client(stack: Stack, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0, timeout=30, **options)


def raw(stack: Stack, method: str, path: str, body: bytes = b"", content_type: str = "application/json",
        ) -> tuple[int, dict[str, str], bytes]:
    return stack.request(method, path, body or None, headers={"Content-Type": content_type} if body else {})


JSON_CALLS = [
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "float"}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]]}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 5}),
    ("/v1/moderations", {"model": "omni-moderation-latest", "input": "a kind word"}),
    ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "store": False, "top_k": None}),
    ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "a cat", "size": "1024x1024"}),
    ("/v1/responses/input_tokens", {"model": "gpt-4o-mini", "input": "count these"}),
    ("/v1/responses/compact", {"model": "gpt-4o-mini", "input": "compact these"}),
    ("/v1/audio/speech", {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "hello"}),
    ("/v1/conversations", {"metadata": {"topic": "bytes"}}),
]


@pytest.mark.parametrize("path,body", JSON_CALLS, ids=[c[0] + str(i) for i, c in enumerate(JSON_CALLS)])
def test_the_upstream_gets_the_clients_exact_bytes(stack: Stack, path: str, body: dict[str, Any]) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    sent = b'{ "unknown_field" : [1, 2.50], ' + orjson.dumps(body)[1:]  # odd spacing, a field nobody knows
    status, headers, answer = raw(stack, "POST", path, sent)
    assert status == 200, answer
    assert headers["x-chatgpt-apiserver-controller"] == "up"
    [seen] = fake.requests_to(path.removeprefix("/v1"))
    assert seen.body == sent
    assert seen.headers["Authorization"] == "Bearer sk-test-up-0123456789abcdef"


def test_a_model_alias_renames_only_the_model(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake, models={"small": "text-embedding-3-small"})]})
    result = client(stack).embeddings.create(model="small", input="hello", encoding_format="float")
    assert len(result.data[0].embedding) == 1536
    [seen] = fake.requests_to("/embeddings")
    assert seen.json == {"model": "text-embedding-3-small", "input": "hello", "encoding_format": "float"}


def test_embeddings_settle_the_tokens_bucket_from_the_answers_usage(stack: Stack) -> None:
    fake = stack.fake("up")
    answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5]}],
              "model": "text-embedding-3-small", "usage": {"prompt_tokens": 40, "total_tokens": 40}}
    fake.default = Cue(mode="status", status=200, body=orjson.dumps(answer))  # 40 tokens, whatever the input
    stack.gateway({"controllers": [openai_controller(fake, tpm=100_000)]})
    client(stack).embeddings.create(model="text-embedding-3-small", input=["word " * 200] * 10)  # ~2,500 reserved
    _, _, view = raw(stack, "GET", "/admin/controllers")
    level = orjson.loads(view)["controllers"][0]["buckets"]["tokens"]["level"]
    assert 100_000 - 45 <= level <= 100_000  # settled at the 40 used (plus a moment of refill), not the ~2,500


@pytest.mark.parametrize("stream", [False, True])
def test_completions(stack: Stack, stream: bool) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake, tpm=100_000)]})
    sdk = client(stack)
    if not stream:
        answer = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=5)
        assert answer.choices[0].text and answer.usage is not None
        return
    chunks = list(sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=5,
                                         stream=True))
    assert chunks and all(chunk.usage is None for chunk in chunks)  # the gateway's own usage request stripped
    assert orjson.loads(fake.requests_to("/completions")[0].body)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
def test_responses(stack: Stack, stream: bool) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    sdk = client(stack)
    if not stream:
        answer = sdk.responses.create(model="gpt-4o-mini", input="hi")
        assert answer.output_text and answer.usage is not None and answer.usage.total_tokens > 0
        return
    events = list(sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert any(event.type == "response.output_text.delta" for event in events)
    [seen] = fake.requests_to("/responses")
    assert b"stream_options" not in seen.body  # typed streams report usage in their final event


def test_a_responses_stream_is_relayed_byte_for_byte(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    body = orjson.dumps({"model": "gpt-4o-mini", "input": "hi", "stream": True, "store": False})
    _, _, through_gateway = raw(stack, "POST", "/v1/responses", body)
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    connection.request("POST", "/v1/responses", body=body, headers={"Content-Type": "application/json"})
    direct = connection.getresponse().read()
    connection.close()
    assert through_gateway.startswith(b"event: response.created\ndata: ")
    strip = [line for line in through_gateway.split(b"\n") if not line.startswith(b"data")]
    assert strip == [line for line in direct.split(b"\n") if not line.startswith(b"data")]  # every event, in order
    assert len(through_gateway) == len(direct)  # ids and times differ; sizes and shapes do not


def test_background_responses_and_their_follow_ups(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    sdk = client(stack)
    queued = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    assert queued.status in ("queued", "in_progress")
    deadline = time.monotonic() + 5
    while sdk.responses.retrieve(queued.id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    items = sdk.responses.input_items.list(queued.id)
    assert items.data
    assert sdk.responses.delete(queued.id) is None
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(queued.id)


def test_conversations(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    sdk = client(stack)
    conversation = sdk.conversations.create(metadata={"topic": "demo"})
    sdk.conversations.items.create(conversation.id, items=[{"type": "message", "role": "user", "content": "hi"}])
    answer = sdk.responses.create(model="gpt-4o-mini", input="and now?", conversation=conversation.id)
    assert answer.output_text
    assert len(sdk.conversations.items.list(conversation.id).data) >= 3
    assert sdk.conversations.retrieve(conversation.id).metadata == {"topic": "demo"}
    assert sdk.conversations.delete(conversation.id).deleted


def test_moderations(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    result = client(stack).moderations.create(model="omni-moderation-latest", input="violence")
    assert result.results[0].flagged


def test_transcriptions_are_routed_by_the_forms_model_and_relayed_as_received(stack: Stack) -> None:
    whisper, other = stack.fake("whisper"), stack.fake("other")
    stack.gateway({"controllers": [openai_controller(other, models=["gpt-4o-mini"]),
                                   openai_controller(whisper, models={"whisper": "whisper-1"})]})
    form, content_type = multipart({"model": "whisper", "response_format": "json"},
                                   {"file": ("hello.wav", b"RIFF fake audio bytes")})
    status, headers, answer = raw(stack, "POST", "/v1/audio/transcriptions", form, content_type)
    assert status == 200 and "text" in orjson.loads(answer), answer
    assert headers["x-chatgpt-apiserver-controller"] == "whisper" and not other.requests
    [seen] = whisper.requests_to("/audio/transcriptions")
    assert seen.body == form.replace(b"\r\n\r\nwhisper\r\n", b"\r\n\r\nwhisper-1\r\n")  # only the alias changed
    assert seen.headers["Content-Type"] == content_type
    text = client(stack).audio.transcriptions.create(model="whisper", file=("a.wav", b"RIFF..."))
    assert text.text
    # The same model twice is one model: the upstream gets the alias's name in both parts.
    boundary = content_type.split("boundary=")[1]
    twice = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'.encode() + form
    assert raw(stack, "POST", "/v1/audio/transcriptions", twice, content_type)[0] == 200
    sent = whisper.requests_to("/audio/transcriptions")[-1].body
    assert sent.count(b"\r\n\r\nwhisper-1\r\n") == 2 and b"\r\n\r\nwhisper\r\n" not in sent


def test_a_streamed_transcription(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    events = list(client(stack).audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", b"RIFF"),
                                                            stream=True))
    assert events[-1].type == "transcript.text.done"


def test_speech_is_relayed_as_it_arrives(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(events=4, interval=0.3)  # four pieces of audio, 0.3 s apart
    stack.gateway({"controllers": [openai_controller(fake)]})
    arrivals = []
    received = b""
    with client(stack).audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="alloy",
                                                                   input="Hello there") as response:
        assert response.headers["content-type"].startswith("audio/")
        for piece in response.iter_bytes():
            arrivals.append(time.monotonic())
            received += piece
    assert received == b"".join(speech_audio("mp3", 4))
    assert arrivals[-1] - arrivals[0] >= 0.5  # not buffered until the end


@pytest.mark.parametrize("stream", [False, True])
def test_images(stack: Stack, stream: bool) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    sdk = client(stack)
    if not stream:
        result = sdk.images.generate(model="gpt-image-1", prompt="a cat")
        assert result.data and result.data[0].b64_json
        edit = sdk.images.edit(model="gpt-image-1", prompt="hat", image=("cat.png", b"\x89PNG fake"))
        assert edit.data
        return
    events = list(sdk.images.generate(model="gpt-image-1", prompt="a cat", stream=True, partial_images=1))
    assert events[-1].type == "image_generation.completed"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK deprecates it; OpenAI serves it
def test_translations_input_tokens_and_compact_with_the_sdk(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    sdk = client(stack)
    assert sdk.audio.translations.create(model="whisper-1", file=("a.wav", b"RIFF audio")).text
    assert sdk.responses.input_tokens.count(model="gpt-4o-mini", input="count these words").input_tokens > 0
    made = sdk.responses.create(model="gpt-4o-mini", input="a long talk")
    assert sdk.responses.compact(model="gpt-4o-mini", previous_response_id=made.id).output


def test_a_stored_response_replays_as_a_stream(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    sdk = client(stack)
    made = sdk.responses.create(model="gpt-4o-mini", input="hi")
    events = list(sdk.responses.retrieve(made.id, stream=True))
    assert events[-1].type == "response.completed"


def test_models_retrieve(stack: Stack) -> None:
    fake = stack.fake("up", ("gpt-4o-mini", "text-embedding-3-small"))
    stack.gateway({"controllers": [openai_controller(fake)]})
    sdk = client(stack)
    assert sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("gpt-nope")
    assert caught.value.code == "model_not_found"


def test_the_model_may_be_left_out_where_openais_schema_allows_it(stack: Stack) -> None:
    listed, open_ended = stack.fake("listed"), stack.fake("open")
    stack.gateway({"controllers": [openai_controller(listed, models=["gpt-4o"], weight=100),
                                   openai_controller(open_ended)]})
    sdk = client(stack)
    assert sdk.moderations.create(input="hello").results
    assert sdk.images.generate(prompt="a cat").data
    assert sdk.responses.input_tokens.count(input="count these").input_tokens > 0
    assert not listed.requests  # only a controller that serves any model can take a call naming none
    status, _, body = stack.request("POST", "/v1/embeddings", {"input": "x"})  # the SDK would not send it
    assert status == 400 and orjson.loads(body)["error"]["param"] == "model"


@pytest.mark.parametrize(("payload", "allowance"), [
    ({"n": 2, "max_tokens": 700}, 1400), ({"n": 2.0, "max_tokens": 700.0}, 1400),
    ({"max_completion_tokens": 50.0, "max_tokens": 700}, 50), ({"n": True, "max_tokens": 0}, 4096),
    ({"n": 1.5, "max_tokens": "700"}, 4096), ({}, 4096), ({"max_tokens": 1e308, "n": 2}, 2**41)])
def test_a_chat_reservation_reads_counts_as_the_schema_does(payload: dict[str, Any], allowance: int) -> None:
    from chatgpt_apiserver.endpoints.catalog import estimate_chat

    assert estimate_chat(payload, 400, 4096) == 100 + allowance


def test_the_catalogue_requires_the_model_exactly_where_the_schema_does() -> None:
    from importlib import resources

    from chatgpt_apiserver.endpoints.catalog import ENDPOINTS

    document = orjson.loads(resources.files("chatgpt_apiserver.endpoints")
                            .joinpath("openai-endpoint-schemas.json").read_bytes())
    checked = 0
    for endpoint in ENDPOINTS:
        for key in filter(None, (endpoint.schema, endpoint.form_schema)):
            definition = document["$defs"][document["requests"][key]]
            required = set(definition.get("required", []))
            for part in definition.get("allOf", []):
                target = document["$defs"][part["$ref"].split("/")[-1]] if "$ref" in part else part
                required |= set(target.get("required", []))
            if endpoint.model_field is not None:
                assert endpoint.model_required == ("model" in required), key
                checked += 1
    assert checked >= 10
