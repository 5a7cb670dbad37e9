"""The fake upstream's other OpenAI endpoints, driven directly with the official SDK (no gateway).

Answers are validated strictly against the SDK's types (the SDK's own parse accepts anything), streams event
by event.
"""

from __future__ import annotations

import openai
import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse, ModerationCreateResponse

from .fake_upstream import Cue
from .harness import Stack
from .sdk_checks import raw, sdk, strict

EMBEDDING = "text-embedding-3-small"
INSTRUCT = "gpt-3.5-turbo-instruct"


def test_embeddings_are_deterministic_in_both_encodings(stack: Stack) -> None:
    fake = stack.fake()
    client = sdk(fake)
    decoded = client.embeddings.create(model=EMBEDDING, input=["alpha", "beta", "alpha"])
    assert fake.requests_to("/embeddings")[0].json["encoding_format"] == "base64"  # what the SDK asks for
    as_floats = client.embeddings.with_raw_response.create(model=EMBEDDING, input=["alpha", "beta", "alpha"],
                                                           encoding_format="float")
    floats = strict(CreateEmbeddingResponse, orjson.loads(as_floats.http_response.content))
    vectors = [item.embedding for item in floats.data]
    assert [len(vector) for vector in vectors] == [1536] * 3 and [item.index for item in floats.data] == [0, 1, 2]
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    for packed, plain in zip(decoded.data, floats.data, strict=True):
        assert max(abs(a - b) for a, b in zip(packed.embedding, plain.embedding, strict=True)) < 1e-6
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 2 + 1 + 2


def test_embeddings_take_token_arrays_and_dimensions(stack: Stack) -> None:
    client = sdk(stack.fake())
    many = client.embeddings.create(model=EMBEDDING, input=[[1, 2, 3], [4, 5]], dimensions=256,
                                    encoding_format="float")
    assert [len(item.embedding) for item in many.data] == [256, 256] and many.usage.prompt_tokens == 5
    one = client.embeddings.create(model=EMBEDDING, input=[7, 8, 9], encoding_format="float")
    assert len(one.data) == 1 and one.usage.total_tokens == 3
    for bad, param in (({"input": []}, "input"), ({"input": "x", "dimensions": 0}, "dimensions"),
                       ({"input": "x", "encoding_format": "int8"}, "encoding_format")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=EMBEDDING, **bad)  # type: ignore[arg-type]
        assert isinstance(caught.value.body, dict) and caught.value.body["param"] == param


def test_a_two_megabyte_embeddings_answer(stack: Stack) -> None:
    fake = stack.fake()
    request = {"model": EMBEDDING, "input": [f"document {index}" for index in range(100)], "encoding_format": "float"}
    status, headers, body = raw(fake, "POST", "/v1/embeddings", request)
    assert status == 200 and len(body) > 2_000_000 and int(headers["content-length"]) == len(body)
    answer = strict(CreateEmbeddingResponse, orjson.loads(body))
    assert len(answer.data) == 100 and len({tuple(item.embedding[:4]) for item in answer.data}) > 90


def test_completions_give_n_choices_per_prompt(stack: Stack) -> None:
    fake = stack.fake()
    client = sdk(fake)
    answer = client.completions.with_raw_response.create(model=INSTRUCT, prompt=["a", "b"], n=2)
    completion = strict(Completion, orjson.loads(answer.http_response.content))
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert {choice.text for choice in completion.choices} == {"hello"} and completion.object == "text_completion"
    assert completion.usage is not None and completion.usage.completion_tokens == 4 * 2
    echoed = client.completions.create(model=INSTRUCT, prompt="Say: ", echo=True)
    assert echoed.choices[0].text == "Say: hello"


def test_a_completion_stream_ends_with_usage_then_done(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(events=2, text="t")
    client = sdk(fake)
    chunks = list(client.completions.create(model=INSTRUCT, prompt="x", n=2, stream=True,
                                            stream_options={"include_usage": True}))
    for chunk in chunks:  # OpenAI's chunks carry finish_reason null until the last; the SDK's type wants a value
        data = chunk.to_dict()
        strict(Completion, {**data, "choices": [{**choice, "finish_reason": choice["finish_reason"] or "length"}
                                                for choice in data["choices"]]})
    texts = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == {0: "t0 t1 ", 1: "t0 t1 "}
    assert [c.choices[0].finish_reason for c in chunks[-3:-1]] == ["stop", "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    _status, _headers, body = raw(fake, "POST", "/v1/completions", {"model": INSTRUCT, "prompt": "x", "stream": True})
    assert body.startswith(b'data: {"id":"cmpl-') and body.endswith(b"}\n\ndata: [DONE]\n\n")


def test_moderations_flag_the_category_the_text_names(stack: Stack) -> None:
    client = sdk(stack.fake())
    answer = client.moderations.with_raw_response.create(input=["a kind word", "graphic violence"])
    results = strict(ModerationCreateResponse, orjson.loads(answer.http_response.content)).results
    assert not results[0].flagged and results[1].flagged
    assert results[1].categories.violence and not results[1].categories.hate
    assert results[1].category_scores.violence > 0.5 > results[0].category_scores.violence
    mixed = client.moderations.create(model="omni-moderation-latest", input=[
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}])
    assert len(mixed.results) == 1 and mixed.results[0].category_applied_input_types.violence == ["text", "image"]
    assert mixed.results[0].category_applied_input_types.harassment == ["text"]
