"""The fake upstream's other OpenAI endpoints, driven directly with the official SDK (no gateway).

Answers are validated strictly against the SDK's types (the SDK's own parse accepts anything), streams event
by event.
"""

from __future__ import annotations

import base64
import time

import openai
import orjson
import pytest
from openai.types import (
    Completion,
    CreateEmbeddingResponse,
    ImageEditStreamEvent,
    ImageGenStreamEvent,
    ImagesResponse,
    ModerationCreateResponse,
)
from openai.types.audio import (
    Transcription,
    TranscriptionDiarized,
    TranscriptionStreamEvent,
    TranscriptionVerbose,
    Translation,
    TranslationVerbose,
)

from .fake_media import png, speech_audio
from .fake_upstream import Cue
from .harness import Stack
from .sdk_checks import Sdk, multipart, raw, strict, strict_event

EMBEDDING = "text-embedding-3-small"
INSTRUCT = "gpt-3.5-turbo-instruct"
AUDIO = bytes(range(256)) * 125  # 32,000 bytes: the fake takes it for 2 s of audio
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_embeddings_are_deterministic_in_both_encodings(stack: Stack, sdk: Sdk) -> None:
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


def test_embeddings_take_token_arrays_and_dimensions(stack: Stack, sdk: Sdk) -> None:
    client = sdk(stack.fake())
    many = client.embeddings.create(model=EMBEDDING, input=[[1, 2, 3], [4, 5]], dimensions=256,
                                    encoding_format="float")
    assert [len(item.embedding) for item in many.data] == [256, 256] and many.usage.prompt_tokens == 5
    one = client.embeddings.create(model=EMBEDDING, input=[7, 8, 9], encoding_format="float")
    assert len(one.data) == 1 and one.usage.total_tokens == 3
    for bad, param in (({"input": []}, "input"), ({"input": "x", "dimensions": 0}, "dimensions"),
                       ({"input": "x", "encoding_format": "int8"}, "encoding_format")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=EMBEDDING, **bad)
        assert isinstance(caught.value.body, dict) and caught.value.body["param"] == param


def test_a_two_megabyte_embeddings_answer(stack: Stack) -> None:
    fake = stack.fake()
    request = {"model": EMBEDDING, "input": [f"document {index}" for index in range(100)], "encoding_format": "float"}
    status, headers, body = raw(fake, "POST", "/v1/embeddings", request)
    assert status == 200 and len(body) > 2_000_000 and int(headers["content-length"]) == len(body)
    answer = strict(CreateEmbeddingResponse, orjson.loads(body))
    assert len(answer.data) == 100 and len({tuple(item.embedding[:4]) for item in answer.data}) > 90


def test_completions_give_n_choices_per_prompt(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    answer = client.completions.with_raw_response.create(model=INSTRUCT, prompt=["a", "b"], n=2)
    completion = strict(Completion, orjson.loads(answer.http_response.content))
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert {choice.text for choice in completion.choices} == {"hello"} and completion.object == "text_completion"
    assert completion.usage is not None and completion.usage.completion_tokens == 4 * 2
    echoed = client.completions.create(model=INSTRUCT, prompt="Say: ", echo=True)
    assert echoed.choices[0].text == "Say: hello"


def test_a_completion_stream_ends_with_usage_then_done(stack: Stack, sdk: Sdk) -> None:
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


def test_moderations_flag_the_category_the_text_names(stack: Stack, sdk: Sdk) -> None:
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


def test_transcriptions_in_every_format(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    create = client.audio.transcriptions.with_raw_response.create
    tokens = strict(Transcription, orjson.loads(create(file=("a.wav", AUDIO), model="gpt-4o-transcribe").content))
    assert tokens.text == "hello" and tokens.usage is not None and tokens.usage.type == "tokens"
    seconds = strict(Transcription, orjson.loads(create(file=("a.wav", AUDIO), model="whisper-1").content))
    assert seconds.usage is not None and seconds.usage.type == "duration" and seconds.usage.seconds == 2
    assert AUDIO in fake.requests_to("/audio/transcriptions")[0].body
    transcribe = client.audio.transcriptions.create
    assert transcribe(file=("a.wav", AUDIO), model="whisper-1", response_format="text") == "hello\n"
    assert "00:00:00,000 --> 00:00:02,000\nhello" in transcribe(file=("a.wav", AUDIO), model="whisper-1",
                                                                response_format="srt")
    assert transcribe(file=("a.wav", AUDIO), model="whisper-1", response_format="vtt").startswith("WEBVTT\n\n")
    verbose = create(file=("a.wav", AUDIO), model="whisper-1", response_format="verbose_json")
    assert strict(TranscriptionVerbose, orjson.loads(verbose.content)).duration == 2.0
    diarized = create(file=("a.wav", AUDIO), model="gpt-4o-transcribe-diarize", response_format="diarized_json")
    assert strict(TranscriptionDiarized, orjson.loads(diarized.content)).segments[0].speaker == "A"
    with pytest.raises(openai.BadRequestError) as caught:
        transcribe(file=("a.wav", AUDIO), model="whisper-1", response_format="mp4")
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "response_format"


def test_a_transcription_stream_sends_deltas_then_done(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.default = Cue(events=3, text="w")
    client = sdk(fake)
    events = list(client.audio.transcriptions.create(file=("a.wav", AUDIO), model="gpt-4o-mini-transcribe",
                                                     stream=True))
    for event in events:
        strict_event(TranscriptionStreamEvent, event)
    assert [event.type for event in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    done = events[-1]
    assert done.type == "transcript.text.done" and done.text == "w0 w1 w2 "
    assert done.usage is not None and done.usage.total_tokens > done.usage.output_tokens
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(file=("a.wav", AUDIO), model="whisper-1", stream=True)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK deprecates it; OpenAI serves it
def test_translations_answer_json_verbose_json_and_text(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    create = client.audio.translations.with_raw_response.create
    assert strict(Translation, orjson.loads(create(file=("a.mp3", AUDIO), model="whisper-1").content)).text == "hello"
    verbose = create(file=("a.mp3", AUDIO), model="whisper-1", response_format="verbose_json")
    assert strict(TranslationVerbose, orjson.loads(verbose.content)).language == "english"
    body, content_type = multipart({"model": "whisper-1", "response_format": "text"}, {"file": ("a.mp3", AUDIO)})
    status, headers, answer = raw(fake, "POST", "/v1/audio/translations", body, {"Content-Type": content_type})
    assert (status, answer) == (200, b"hello\n") and headers["content-type"].startswith("text/plain")
    assert fake.requests[-1].body == body  # the exact bytes the client sent


def test_speech_is_sent_in_pieces_with_pauses(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.default = Cue(events=3, interval=0.3)
    client = sdk(fake)
    arrivals, data = [], b""
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="alloy",
                                                            input="hi") as response:
        assert response.headers["content-type"] == "audio/mpeg"
        for piece in response.iter_bytes():
            arrivals.append(time.monotonic())
            data += piece
    assert data == b"".join(speech_audio("mp3", 3)) and len(data) == 3 * 4096
    assert arrivals[-1] - arrivals[0] >= 0.3  # pieces written 0.3 s apart, 0.6 s first to last: not buffered
    fake.default = Cue()
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input="hi",
                                                            response_format="wav") as wav:
        assert wav.headers["content-type"] == "audio/wav" and wav.read().startswith(b"RIFF")
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", response_format="mp4")


def test_speech_as_server_sent_events(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="alloy", input="hi",
                                                            stream_format="sse") as answer:
        assert answer.headers["content-type"] == "text/event-stream"
        content = answer.read()
    events = [orjson.loads(line[6:]) for line in content.split(b"\n") if line.startswith(b"data: ")]
    assert [event["type"] for event in events] == ["speech.audio.delta"] * 3 + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    assert audio == b"".join(speech_audio("mp3", 3)) and events[-1]["usage"]["total_tokens"] > 0
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", stream_format="sse")


def test_image_generation_answers_tiny_pngs_with_usage(stack: Stack, sdk: Sdk) -> None:
    client = sdk(stack.fake())
    answer = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a red fox", n=2)
    images = strict(ImagesResponse, orjson.loads(answer.http_response.content))
    assert images.data is not None and len(images.data) == 2
    assert all(base64.b64decode(image.b64_json or "").startswith(PNG_SIGNATURE) for image in images.data)
    assert images.usage is not None and images.usage.output_tokens == 2 * 272
    assert images.usage.input_tokens_details.text_tokens == images.usage.input_tokens == 3
    assert (images.size, images.quality, images.output_format) == ("1024x1024", "high", "png")
    classic = client.images.generate(model="dall-e-3", prompt="a red fox")
    assert classic.data is not None and classic.data[0].url and classic.data[0].revised_prompt == "a red fox"


def test_image_streams_send_partial_images_then_completed(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    generated = list(client.images.generate(model="gpt-image-1", prompt="fox", stream=True, partial_images=2))
    for event in generated:
        strict_event(ImageGenStreamEvent, event)
    assert [event.type for event in generated] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    assert [getattr(event, "partial_image_index", None) for event in generated] == [0, 1, None]
    edited = list(client.images.edit(model="gpt-image-1", image=("a.png", png(1, 2, 3)), prompt="hat",
                                     stream=True, partial_images=1))
    for event in edited:
        strict_event(ImageEditStreamEvent, event)
    assert [event.type for event in edited] == ["image_edit.partial_image", "image_edit.completed"]
    _status, _headers, body = raw(fake, "POST", "/v1/images/generations",
                                  {"model": "gpt-image-1", "prompt": "fox", "stream": True, "partial_images": 1})
    assert body.startswith(b"event: image_generation.partial_image\ndata: {")


def test_image_edits_take_multipart_or_json(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    client = sdk(fake)
    edited = client.images.edit(model="gpt-image-1", prompt="hat",
                                image=[("a.png", png(1, 2, 3)), ("b.png", png(4, 5, 6))])
    assert edited.usage is not None and edited.usage.input_tokens_details.image_tokens == 2 * 65
    assert png(4, 5, 6) in fake.requests_to("/images/edits")[0].body
    image_url = "data:image/png;base64," + base64.b64encode(png(1, 2, 3)).decode()
    status, _headers, body = raw(fake, "POST", "/v1/images/edits",
                                 {"model": "gpt-image-1", "prompt": "hat", "images": [{"image_url": image_url}]})
    assert status == 200 and strict(ImagesResponse, orjson.loads(body)).data is not None
    status, _headers, body = raw(fake, "POST", "/v1/images/edits", {"model": "gpt-image-1", "prompt": "hat"})
    assert status == 400 and orjson.loads(body)["error"]["param"] == "image"
