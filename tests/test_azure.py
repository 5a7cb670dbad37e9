"""The `azure` controller type on the wire: Azure's URLs, api-version and key, every endpoint it serves, pools.

Clients use the plain `openai.OpenAI` client against the gateway: its `AzureOpenAI` class is never needed.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from .fake_azure import API_VERSION, FakeAzure, azure_controller, start_azure
from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .sdk_checks import multipart
from .test_scheduling import wait_for

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
DEPLOYMENTS = {"gpt-4o": "gpt4o-east", "text-embedding-3-small": "emb-east", "whisper": "whisper-east"}
AUDIO = b"RIFF" + b"\0" * 32000  # two seconds, as the fake counts it


Client = Callable[[], openai.OpenAI]  # the gateway_client fixture (conftest.py)


def east(stack: Stack, api: str) -> FakeAzure:
    """One resource, and a gateway with one azure controller on it over `api`."""
    version = API_VERSION if api == "classic" else None
    fake = start_azure(stack, "east", tuple(DEPLOYMENTS.values()), api_version=version)
    stack.gateway({"controllers": [azure_controller(fake, DEPLOYMENTS, config={"api": api})]})
    return fake


def url_of(api: str, model: str, path: str) -> str:
    """Where a call for `model` must go."""
    if api == "classic":
        return f"/openai/deployments/{DEPLOYMENTS[model]}/{path}?api-version={API_VERSION}"
    return f"/openai/v1/{path}"


def sent_model(api: str, model: str) -> str:
    """The model the body must name: the client's on classic URLs, the deployment on v1."""
    return model if api == "classic" else DEPLOYMENTS[model]


def assert_key_only(fake: FakeAzure) -> None:
    """Every request carried the resource's api-key and no Authorization, and none was refused."""
    assert fake.calls and fake.refused == []
    for seen in fake.calls:
        headers = {name.lower(): value for name, value in seen.headers.items()}
        assert headers["api-key"] == fake.api_key and "authorization" not in headers


@pytest.mark.parametrize("api", ["classic", "v1"])
def test_chat_with_and_without_a_stream(stack: Stack, gateway_client: Client, api: str) -> None:
    fake = east(stack, api)
    raw = gateway_client().chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "hello"
    assert raw.headers["x-chatgpt-apiserver-controller"] == "east"
    events = list(gateway_client().chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert events[0].choices == []  # Azure's prompt_filter_results event, relayed as it came
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == "hello0 hello1 hello2 "
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "stop"
    assert [seen.path for seen in fake.calls] == [url_of(api, "gpt-4o", "chat/completions")] * 2
    plain, streamed = (orjson.loads(seen.body) for seen in fake.calls)
    assert plain == {"model": sent_model(api, "gpt-4o"), "messages": MESSAGES}
    assert streamed["model"] == sent_model(api, "gpt-4o") and streamed["stream"] is True
    assert_key_only(fake)


@pytest.mark.parametrize("api", ["classic", "v1"])
def test_embeddings_and_transcriptions(stack: Stack, gateway_client: Client, api: str) -> None:
    fake = east(stack, api)
    vectors = gateway_client().embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 100
    text = gateway_client().audio.transcriptions.create(model="whisper", file=("a.wav", io.BytesIO(AUDIO)))
    assert text.text == "hello"
    assert [seen.path for seen in fake.calls] == [url_of(api, "text-embedding-3-small", "embeddings"),
                                                  url_of(api, "whisper", "audio/transcriptions")]
    embeddings, form = (seen.body for seen in fake.calls)
    assert orjson.loads(embeddings)["model"] == sent_model(api, "text-embedding-3-small")
    assert b'name="model"\r\n\r\n' + sent_model(api, "whisper").encode() + b"\r\n" in form
    assert AUDIO in form  # the upload went as the client sent it
    assert_key_only(fake)


def test_the_other_endpoints_of_classic_urls(stack: Stack, gateway_client: Client) -> None:
    deployments = {"gpt-35-turbo-instruct": "instruct-east", "whisper": "whisper-east", "tts": "tts-east",
                   "dall-e-3": "dalle-east"}
    fake = start_azure(stack, "east", tuple(deployments.values()))
    stack.gateway({"controllers": [azure_controller(fake, deployments)]})
    sdk = gateway_client()
    assert sdk.completions.create(model="gpt-35-turbo-instruct", prompt="Say hi").choices[0].text
    form, content_type = multipart({"model": "whisper"}, {"file": ("a.wav", AUDIO)})  # the SDK's call is deprecated
    status, _, body = stack.request("POST", "/v1/audio/translations", form, {"Content-Type": content_type})
    assert status == 200 and orjson.loads(body)["text"] == "hello"
    with sdk.audio.speech.with_streaming_response.create(model="tts", voice="alloy", input="Hello there") as speech:
        assert speech.read().startswith(b"ID3")  # the audio's bytes, as they came
    assert sdk.images.generate(model="dall-e-3", prompt="a lighthouse").data[0].revised_prompt == "a lighthouse"
    assert [seen.path.split("?")[0] for seen in fake.calls] == [
        "/openai/deployments/instruct-east/completions", "/openai/deployments/whisper-east/audio/translations",
        "/openai/deployments/tts-east/audio/speech", "/openai/deployments/dalle-east/images/generations"]
    assert all(seen.path.endswith(f"?api-version={API_VERSION}") for seen in fake.calls)
    assert_key_only(fake)


def test_classic_urls_relay_the_clients_body_byte_for_byte(stack: Stack) -> None:
    fake = east(stack, "classic")
    body = b'{"messages": [{"role": "user", "content": "hi"}],\n  "model":"gpt-4o", "temperature": 0.50}'
    status, _, _ = stack.request("POST", "/v1/chat/completions", body)
    assert status == 200 and fake.calls[0].body == body


def test_a_clients_api_version_never_goes_upstream_beside_the_controllers(stack: Stack) -> None:
    fake = east(stack, "classic")
    status, _, _ = stack.request("POST", "/v1/embeddings?api-version=1999-01-01&x=1",
                                 {"model": "text-embedding-3-small", "input": "hi"})
    assert status == 200 and fake.refused == []
    path, _, query = fake.calls[0].path.partition("?")
    assert path.endswith("/embeddings") and query == f"api-version={API_VERSION}&x=1"


def test_the_responses_api_is_served_over_v1_only(stack: Stack, gateway_client: Client) -> None:
    classic = start_azure(stack, "classic", ("gpt4o-east",))
    v1 = start_azure(stack, "v1", ("gpt4o-v1",), api_version=None)
    stack.gateway({"controllers": [
        azure_controller(classic, {"gpt-4o": "gpt4o-east"}),
        azure_controller(v1, {"gpt-4o": "gpt4o-v1"}, config={"api": "v1"}, weight=1)]})
    created = gateway_client().responses.create(model="gpt-4o", input="hello")
    again = gateway_client().responses.retrieve(created.id)  # a follow-up goes where the response is stored
    assert again.id == created.id and again.output_text == created.output_text
    assert [seen.path for seen in v1.calls] == ["/openai/v1/responses", f"/openai/v1/responses/{created.id}"]
    assert orjson.loads(v1.calls[0].body)["model"] == "gpt4o-v1"
    assert classic.calls == []  # never asked: classic URLs have no Responses API
    assert_key_only(v1)


def test_endpoints_a_classic_resource_does_not_serve_are_refused_by_name(stack: Stack,
                                                                         gateway_client: Client) -> None:
    fake = east(stack, "classic")
    with pytest.raises(openai.NotFoundError) as caught:
        gateway_client().responses.create(model="gpt-4o", input="hello")
    assert "serves POST /v1/responses" in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        gateway_client().moderations.create(model="gpt-4o", input="hello")
    assert "serves POST /v1/moderations" in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        gateway_client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert fake.calls == []


def test_a_pool_of_one_openai_and_two_azure_controllers_is_balanced_by_weight(stack: Stack,
                                                                             gateway_client: Client) -> None:
    plain = stack.fake("openai")
    eastus = start_azure(stack, "eastus", ("gpt4o-east",))
    westeu = start_azure(stack, "westeurope", ("gpt4o-west",))
    stack.gateway({"pool": {"type": "balanced"}, "controllers": [
        openai_controller(plain, models=["gpt-4o"], weight=3),
        azure_controller(eastus, {"gpt-4o": "gpt4o-east"}, weight=2),
        azure_controller(westeu, {"gpt-4o": "gpt4o-west"}, weight=1)]})
    served: Counter[str] = Counter()
    for _ in range(60):
        status, headers, _ = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES})
        assert status == 200
        served[headers["x-chatgpt-apiserver-controller"]] += 1
    assert served == {"openai": 30, "eastus": 20, "westeurope": 10}
    assert len(plain.chat_requests) == 30
    assert {seen.path for seen in eastus.calls} == {url_of("classic", "gpt-4o", "chat/completions")}
    assert {seen.path.split("?")[0] for seen in westeu.calls} == {"/openai/deployments/gpt4o-west/chat/completions"}
    assert "api-key" not in {name.lower() for name in plain.chat_requests[0].headers}  # each its own kind of key
    assert_key_only(eastus)
    assert_key_only(westeu)
    assert [m.id for m in gateway_client().models.list().data] == ["gpt-4o"]


def test_azures_request_id_reaches_the_access_log_and_the_client(stack: Stack, gateway_client: Client,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chatgpt_apiserver.access")
    east(stack, "classic")
    raw = gateway_client().chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    ident = raw.headers["x-upstream-request-id"]
    assert len(ident) == 36  # the fake's apim-request-id, a UUID

    def logged() -> list[dict[str, Any]]:  # the line is written once the answer is out: it may come a little later
        return [record.fields for record in caplog.records  # type: ignore[attr-defined]
                if record.name == "chatgpt_apiserver.access"]

    assert wait_for(lambda: bool(logged()))
    assert [fields["upstream_request_id"] for fields in logged()] == [ident]


def test_the_key_never_leaves_for_the_client_the_log_or_the_admin_view(stack: Stack,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fake = start_azure(stack, "east", ("gpt4o-east",))
    assert fake.api_key is not None
    stack.gateway({"controllers": [azure_controller(fake, {"gpt-4o": "gpt4o-east"})]})
    # An upstream that quotes the key back in a 400 (the relayed answer) and in a 500 (logged).
    echo = orjson.dumps({"error": {"code": "BadRequest", "message": f"bad request for key {fake.api_key}"}})
    fake.cue(Cue(mode="status", status=400, body=echo), Cue(mode="status", status=500, body=echo))
    status, _, body = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES})
    assert status == 400 and b"[redacted]" in body
    status, _, body = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES})
    assert status == 500
    seen = [body]
    for path in ("/admin/controllers", "/metrics", "/v1/models"):
        seen.append(stack.request("GET", path)[2])
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "answered 500: " in logged
    for text in [*seen, logged.encode()]:
        assert fake.api_key.encode() not in text
    admin = orjson.loads(seen[1])["controllers"][0]
    assert admin["type"] == "azure" and admin["credential"] == "api-key"
    assert admin["models"] == {"gpt-4o": "gpt4o-east"} and admin["endpoint"] == fake.endpoint
