"""Reading token usage from every endpoint's answers, large ones without parsing them whole."""

from __future__ import annotations

import orjson
import pytest

from chatgpt_apiserver.endpoints.usage import Usage, find_usage, usage_of


def embeddings_answer(count: int, dimensions: int = 1536) -> bytes:
    return orjson.dumps({"object": "list", "data": [
        {"object": "embedding", "index": i, "embedding": [0.001 * j for j in range(dimensions)]}
        for i in range(count)], "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 812, "total_tokens": 812}})


@pytest.mark.parametrize("document,expected", [
    ({"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 3}}}, Usage(5, 7, 3, 12)),
    ({"usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13,
                "input_tokens_details": {"cached_tokens": 0}}}, Usage(9, 4, 0, 13)),
    ({"type": "response.completed", "response": {"usage": {"input_tokens": 2, "output_tokens": 3}}}, Usage(2, 3)),
    ({"usage": {"prompt_tokens": 812, "total_tokens": 812}}, Usage(812, 0, 0, 812)),
    ({"usage": {"prompt_tokens": 4, "completion_tokens": 1,  # more cached than prompt: at most the prompt
                "prompt_tokens_details": {"cached_tokens": 9}}}, Usage(4, 1, 4)),
    ({"usage": {"type": "duration", "seconds": 4}}, None),  # a transcription billed by time: no tokens
    ({"usage": None}, None),
    ({"choices": []}, None),
    ([1, 2], None),
])
def test_every_shape_of_usage(document: object, expected: Usage | None) -> None:
    assert usage_of(document) == expected
    assert find_usage(orjson.dumps(document)) == expected


def test_a_large_answer_is_read_from_its_end() -> None:
    body = embeddings_answer(100)
    assert len(body) > 1_000_000
    assert find_usage(body) == Usage(812, 0, 0, 812)


def test_usage_text_inside_a_large_answer_is_not_mistaken_for_it() -> None:
    body = orjson.dumps({"object": "list", "data": [{"text": 'say "usage": {"prompt_tokens": 1}' * 10_000}],
                        "usage": {"prompt_tokens": 3, "total_tokens": 3}, "model": "m"})
    assert find_usage(body) == Usage(3, 0, 0, 3)  # usage is not the last key: parsed whole, still right
    body = orjson.dumps({"data": ["x" * 70_000], "note": 'ends with "usage": {"prompt_tokens": 99}'})
    assert find_usage(body) is None


def test_malformed_answers_have_no_usage() -> None:
    assert find_usage(b"not json") is None
    assert find_usage(b'{"data": [' + b"1," * 40_000 + b'], "usage": {"prompt_tokens": 4') is None
