"""Multipart forms of the audio and image-edit endpoints: text read as the upstream reads it, each mistake a
400 naming the field, and no form raising anything but that 400."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatgpt_apiserver.endpoints.validation import form_validator
from chatgpt_apiserver.errors import ApiError

from .endpoint_cases import (
    FORM_KEYS,
    IMAGE_EDITS_FORM,
    TRANSCRIPTIONS,
    TRANSLATIONS,
    accepted_or_a_400,
    root_fields,
)


def form_error(key: str, fields: dict[str, list[str]], files: set[str]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        form_validator(key)(fields, files)
    return caught.value


GOOD_FORMS = [
    (TRANSCRIPTIONS, {"model": ["gpt-4o-transcribe"]}, {"file"}),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "response_format": ["verbose_json"], "temperature": ["0.5"],
                      "timestamp_granularities[]": ["word", "segment"], "language": ["en"]}, {"file"}),
    (TRANSCRIPTIONS, {"model": ["gpt-4o-transcribe"], "include[]": ["logprobs"], "stream": ["true"],
                      "chunking_strategy": ["auto"], "known_speaker_names[]": ["a", "b"]}, {"file"}),
    (TRANSCRIPTIONS, {"model": ["gpt-4o-transcribe"], "chunking_strategy[type]": ["server_vad"],
                      "chunking_strategy[threshold]": ["0.4"], "chunking_strategy[prefix_padding_ms]": ["300"]},
     {"file"}),
    (TRANSCRIPTIONS, {"model": ["gpt-4o-transcribe"], "chunking_strategy": ['{"type": "server_vad"}'],
                      "timestamp_granularities": ["word"], "temperature": [""], "x_vendor_option": ["1"]}, {"file"}),
    (TRANSLATIONS, {"model": ["whisper-1"], "prompt": ["Hello"], "response_format": ["srt"], "temperature": ["0"]},
     {"file"}),
    (TRANSLATIONS, {"model": ["whisper-1", "whisper-1"]}, {"file"}),  # the same value twice says one thing
    (IMAGE_EDITS_FORM, {"model": ["gpt-image-1"], "prompt": ["Create a lovely gift basket"]},
     {"image[]", "image[1]"}),
    (IMAGE_EDITS_FORM, {"model": ["dall-e-2"], "prompt": ["A sunlit indoor lounge area"], "n": ["1"],
                        "size": ["1024x1024"], "stream": ["false"], "output_compression": ["80"]}, {"image", "mask"}),
]


@pytest.mark.parametrize("key,fields,files", GOOD_FORMS)
def test_forms_read_text_as_the_upstream_does(key: str, fields: dict[str, list[str]], files: set[str]) -> None:
    form_validator(key)(fields, files)


BAD_FORMS = [
    (TRANSCRIPTIONS, {"model": ["whisper-1"]}, set(), "file", "Invalid 'file': is required, as a file part."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "file": ["audio.mp3"]}, set(), "file",
     "Invalid 'file': must be a file, sent as a file part."),
    (TRANSCRIPTIONS, {}, {"file"}, "model", "Invalid 'model': is required."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "temperature": ["hot"]}, {"file"}, "temperature",
     "Invalid 'temperature': must be a number."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "timestamp_granularities[]": ["word", "char"]}, {"file"},
     "timestamp_granularities[1]",
     "Invalid 'timestamp_granularities[1]': must be one of 'word', 'segment', got 'char'."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "response_format": ["xml"]}, {"file"}, "response_format",
     "Invalid 'response_format': must be one of 'json', 'text', 'srt', 'verbose_json', 'vtt', 'diarized_json', "
     "got 'xml'."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "stream": ["maybe"]}, {"file"}, "stream",
     "Invalid 'stream': must be a boolean or null."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "chunking_strategy[type]": ["server_vad"],
                      "chunking_strategy[threshold]": ["high"]}, {"file"}, "chunking_strategy.threshold",
     "Invalid 'chunking_strategy.threshold': must be a number."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "known_speaker_names[]": ["a", "b", "c", "d", "e"]}, {"file"},
     "known_speaker_names", "Invalid 'known_speaker_names': must have at most 4 items, got 5."),
    (IMAGE_EDITS_FORM, {"prompt": ["p"]}, set(), "image", "Invalid 'image': is required, as a file part."),
    (IMAGE_EDITS_FORM, {"prompt": ["p"], "n": ["11"]}, {"image[]"}, "n", "Invalid 'n': must be between 1 and 10, "
     "got 11."),
    (IMAGE_EDITS_FORM, {"prompt": ["p"], "n": ["1", "2.5"]}, {"image"}, "n",
     "Invalid 'n': must be an integer or null."),
    (TRANSCRIPTIONS, {"model": ["whisper-1", "gpt-4o-transcribe"]}, {"file"}, "model",
     "Invalid 'model': is sent 2 times with different values; send it once."),
    (IMAGE_EDITS_FORM, {"prompt": ["p"], "model": ["gpt-image-1"], "size": ["1024x1024", "auto", "auto"]},
     {"image"}, "size", "Invalid 'size': is sent 3 times with different values; send it once."),
    (TRANSLATIONS, {"model": ["whisper-1"], "temperature": ["1e999"]}, {"file"}, "temperature",
     "Invalid 'temperature': must be a number."),
]


@pytest.mark.parametrize("key,fields,files,param,message", BAD_FORMS)
def test_form_mistakes_are_a_400_naming_the_field(key: str, fields: dict[str, list[str]], files: set[str],
                                                  param: str, message: str) -> None:
    error = form_error(key, fields, files)
    assert (error.status, error.param, error.message) == (400, param, message)


@st.composite
def forms(draw: st.DrawFn) -> tuple[str, dict[str, list[str]], set[str]]:
    key = draw(st.sampled_from(FORM_KEYS))
    names = sorted(root_fields(key)[0])
    spelled = st.sampled_from(names).flatmap(lambda name: st.sampled_from(
        [name, f"{name}[]", f"{name}[0]", f"{name}[type]", f"{name}[threshold]", f"{name}[a][b]"]))
    texts = st.text(max_size=8) | st.sampled_from(["true", "0.5", "1e999", "-3", "[\"word\"]", "{\"type\": 1}",
                                                   "null", "", " 7 ", "9" * 5000])
    fields = draw(st.dictionaries(spelled | st.text(max_size=6), st.lists(texts, min_size=1, max_size=3),
                                  max_size=5))
    files = draw(st.sets(st.sampled_from([*names, "image[]", "x"]), max_size=3))
    return key, fields, files


@settings(max_examples=300, deadline=None)
@given(forms())
def test_any_form_is_accepted_or_a_400(case: tuple[str, dict[str, list[str]], set[str]]) -> None:
    key, fields, files = case
    accepted_or_a_400(lambda: form_validator(key)(fields, files))
