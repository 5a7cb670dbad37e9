"""Controllers behind an http:// proxy: absolute-form requests to http upstreams, CONNECT tunnels to https ones,
streaming both ways, credentials from the proxy URL, and refusals."""

from __future__ import annotations

import base64

import openai
import orjson
import pytest

from .fake_proxy import FakeProxy
from .fake_upstream import Cue, FakeUpstream
from .harness import Stack, openai_controller

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
KEY = "sk-proxied-0123456789abcdef"


@pytest.fixture
def proxy(stack: Stack) -> FakeProxy:
    started = FakeProxy()
    stack.loop.run(started.start())
    yield started  # type: ignore[misc]
    stack.loop.run(started.stop())


def tls_controller(fake: FakeUpstream, proxy_url: str, name: str = "tls", **extra: object) -> dict[str, object]:
    return {"type": "openai", "name": name, **extra, "config": {
        "api_key": KEY, "base_url": f"https://127.0.0.1:{fake.port}/v1", "proxy": proxy_url}}


def stream_text(stack: Stack) -> str:
    client = openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)
    chunks = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_an_http_upstream_is_asked_in_absolute_form_streams_included(stack: Stack, proxy: FakeProxy) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake, config={
        "base_url": fake.base_url + "?api-version=2024-06-01", "proxy": proxy.url})]})
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    fake.cue(Cue(mode="stream", events=4, interval=0.02))
    assert stream_text(stack) == "hello0 hello1 hello2 hello3 "
    target = f"http://127.0.0.1:{fake.port}/v1/chat/completions?api-version=2024-06-01"
    assert [(p.method, p.target) for p in proxy.seen] == [("POST", target), ("POST", target)]
    assert proxy.seen[0].headers["host"] == f"127.0.0.1:{fake.port}"
    assert [seen.path for seen in fake.chat_requests] == ["/v1/chat/completions"] * 2
    assert proxy.connections == 1  # the connection to the proxy is kept alive


def test_an_https_upstream_is_reached_through_a_connect_tunnel_streams_included(
        stack: Stack, proxy: FakeProxy, tls_upstream: FakeUpstream) -> None:
    stack.gateway({"controllers": [tls_controller(tls_upstream, proxy.url)]})
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"] == "hello"
    tls_upstream.cue(Cue(mode="stream", events=5, interval=0.02))
    assert stream_text(stack) == "hello0 hello1 hello2 hello3 hello4 "
    assert [(p.method, p.target) for p in proxy.seen] == [("CONNECT", f"127.0.0.1:{tls_upstream.port}")]
    assert len({seen.connection for seen in tls_upstream.chat_requests}) == 1  # one tunnel carried both
    assert tls_upstream.chat_requests[0].headers["Authorization"] == f"Bearer {KEY}"


def test_proxy_credentials_come_from_its_url_and_go_to_the_proxy_only(
        stack: Stack, tls_upstream: FakeUpstream) -> None:
    expected = "Basic " + base64.b64encode(b"team user:p@ss:word").decode()
    proxy = FakeProxy(authorization=expected)
    stack.loop.run(proxy.start())
    plain = stack.fake("plain")
    try:
        url = f"http://team%20user:p%40ss%3Aword@127.0.0.1:{proxy.port}"
        stack.gateway({"controllers": [tls_controller(tls_upstream, url, models=["gpt-4o"]),
                                       openai_controller(plain, config={"proxy": url}, models=["plain-model"])]})
        assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
        assert stack.request("POST", "/v1/chat/completions", {**BODY, "model": "plain-model"})[0] == 200
    finally:
        stack.loop.run(proxy.stop())
    assert [p.headers.get("proxy-authorization") for p in proxy.seen] == [expected, expected]
    assert "Proxy-Authorization" not in tls_upstream.chat_requests[0].headers
    assert "Proxy-Authorization" not in plain.chat_requests[0].headers


@pytest.fixture
def unwelcoming(stack: Stack) -> tuple[FakeProxy, FakeProxy]:
    """A proxy that wants credentials, and one that refuses every tunnel."""
    proxies = (FakeProxy(authorization="Basic c2VjcmV0"), FakeProxy(refuse=403))
    for started in proxies:
        stack.loop.run(started.start())
    yield proxies  # type: ignore[misc]
    for started in proxies:
        stack.loop.run(started.stop())


def test_missing_proxy_credentials_and_a_refused_tunnel_are_reported(
        stack: Stack, tls_upstream: FakeUpstream, unwelcoming: tuple[FakeProxy, FakeProxy]) -> None:
    wants_credentials, refusing = unwelcoming
    stack.gateway({"controllers": [tls_controller(tls_upstream, wants_credentials.url, name="needs-auth"),
                                   tls_controller(tls_upstream, refusing.url, name="refused")]})
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    message = orjson.loads(body)["error"]["message"]
    assert status == 500 and "the proxy wants credentials (407)" in message
    assert "the proxy refused the tunnel to the upstream (403)" in message
    assert not tls_upstream.chat_requests


def test_a_refused_tunnel_fails_over(stack: Stack, tls_upstream: FakeUpstream,
                                     unwelcoming: tuple[FakeProxy, FakeProxy]) -> None:
    direct = stack.fake("direct")
    stack.gateway({"controllers": [tls_controller(tls_upstream, unwelcoming[1].url, name="refused", weight=9),
                                   openai_controller(direct)]})
    status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "direct"
    assert [p.method for p in unwelcoming[1].seen] == ["CONNECT"]


def test_an_untrusted_upstream_certificate_through_a_tunnel_is_refused(
        stack: Stack, proxy: FakeProxy, tls_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")
    stack.gateway({"controllers": [tls_controller(tls_upstream, proxy.url)]})
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    message = orjson.loads(body)["error"]["message"]
    assert status == 500 and "cannot connect to the upstream (certificate verification failed" in message, message
    assert not tls_upstream.chat_requests
