"""The relay's own HTTP client over TLS, against a fake upstream with a certificate from a test CA."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import pytest

from .certificates import make_certificates
from .fake_upstream import Cue, FakeUpstream
from .harness import Stack

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_relay_over_tls_streams_and_reuses_the_connection(stack: Stack, tls_upstream: FakeUpstream) -> None:
    stack.gateway({"controllers": [{"type": "openai", "name": "tls", "config": {
        "api_key": "sk-tls-0123456789abcdef", "base_url": f"https://127.0.0.1:{tls_upstream.port}/v1"}}]})
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    tls_upstream.cue(Cue(mode="stream", events=3))
    status, _, body = stack.request("POST", "/v1/chat/completions", {**BODY, "stream": True})
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert len({seen.connection for seen in tls_upstream.chat_requests}) == 1


def test_an_untrusted_certificate_fails_over(stack: Stack, tls_upstream: FakeUpstream) -> None:
    os.environ.pop("SSL_CERT_FILE")  # now the test CA is unknown
    plain = stack.fake("plain")
    stack.gateway({"controllers": [
        {"type": "openai", "name": "tls", "weight": 9, "config": {
            "api_key": "sk-tls-0123456789abcdef", "base_url": f"https://127.0.0.1:{tls_upstream.port}/v1"}},
        {"type": "openai", "name": "plain", "config": {
            "api_key": "sk-plain-0123456789abcdef", "base_url": plain.base_url}}]})
    status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "plain"
    assert not tls_upstream.chat_requests


def test_every_tls_upstream_shares_one_context_with_verification_on(stack: Stack, tls_upstream: FakeUpstream) -> None:
    from chatgpt_apiserver.transport.client import Transport
    from chatgpt_apiserver.transport.http1 import Http1Client

    first, second = (Http1Client(f"https://127.0.0.1:{port}/v1", [], Transport()) for port in (tls_upstream.port, 443))
    context = first.pool.tls
    assert context is not None and context is second.pool.tls  # the CA store is read once per process
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert Http1Client(f"http://127.0.0.1:{tls_upstream.port}/v1", [], Transport()).pool.tls is None


def test_the_upstream_is_told_the_host_name_it_is_asked_for(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SNI: a server with one certificate per name (most TLS front ends) picks it by the name the client sends."""
    ca, cert, key = make_certificates(tmp_path)
    names: list[Any] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    context.sni_callback = lambda _socket, name, _context: names.append(name)
    fake = FakeUpstream("named")
    stack.loop.call(fake.start, context)
    stack.fakes.append(fake)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    stack.gateway({"controllers": [{"type": "openai", "name": "named", "config": {
        "api_key": "sk-named-0123456789abcdef", "base_url": f"https://localhost:{fake.port}/v1"}}]})
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    assert names == ["localhost"]
