"""Secrets cannot be printed by accident, and key-like text is scrubbed."""

from __future__ import annotations

import pickle

import pytest

from chatgpt_apiserver.secret import Secret, scrub, scrub_text

KEY = "sk-" + "proj-abcdefghijklmnopqrstuvwxyz012345"  # split so it does not look like a committed key


def test_secret_shows_only_a_prefix() -> None:
    secret = Secret(KEY)
    formatted = "{}".format(secret)  # noqa: UP032 - str.format is one more way to print it
    for text in (str(secret), repr(secret), f"{secret}", formatted, str([secret])):
        assert "abcdefghijkl" not in text
    assert secret.reveal() == KEY
    assert str(Secret("short")) == "(redacted)"


def test_secret_cannot_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret(KEY))


def test_scrub_removes_key_like_strings_and_known_values() -> None:
    text = f"bad key {KEY} and rk-live-0123456789 and custom-token-value".encode()
    cleaned = scrub(text, (b"custom-token-value",))
    assert b"abcdefghijkl" not in cleaned and b"0123456789" not in cleaned and b"custom-token-value" not in cleaned
    assert cleaned.startswith(b"bad key sk-[redacted]")
    assert scrub_text("task-manager is fine") == "task-manager is fine"


def test_scrub_removes_json_web_tokens_it_was_never_told_about() -> None:
    # An Entra ID token renewed in a token file after the scrubber learnt the secrets.
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzIn0.c2lnbmF0dXJlLWJ5dGVz"
    cleaned = scrub_text(f"upstream said: bad token {token} (expired)")
    assert token not in cleaned and "c2lnbmF0dXJl" not in cleaned
    assert cleaned == "upstream said: bad token [redacted-token] (expired)"
    assert scrub_text("eyJ alone, or eyJabc.def is not a token") == "eyJ alone, or eyJabc.def is not a token"
