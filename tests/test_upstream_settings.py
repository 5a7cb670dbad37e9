"""openai controller settings that must really take effect: organization, project, headers, base URL."""

from __future__ import annotations

from .harness import Stack, openai_controller

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_organization_project_and_extra_headers_are_sent(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake, config={
        "organization": "org-1", "project": "proj-2", "headers": {"X-Team": "search", "api-key": "azure-style"}})]})
    status, _, _ = stack.request("POST", "/v1/chat/completions", BODY, headers={
        "Content-Type": "application/json", "Authorization": "Bearer client-own-key", "Cookie": "a=b",
        "X-Custom-Client": "1"})
    assert status == 200
    headers = fake.chat_requests[0].headers
    assert headers["Openai-Organization"] == "org-1" and headers["Openai-Project"] == "proj-2"
    assert headers["X-Team"] == "search" and headers["Api-Key"] == "azure-style"
    assert headers["Authorization"] == "Bearer sk-test-up-0123456789abcdef"
    assert "Cookie" not in headers and "X-Custom-Client" not in headers


def test_base_url_with_a_path_prefix(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake, config={"base_url": fake.base_url + "/"})]})
    status, _, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and fake.chat_requests[0].path == "/v1/chat/completions"


def test_upstream_connections_are_kept_alive_and_reused(stack: Stack) -> None:
    from .fake_upstream import Cue

    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    for index in range(12):
        fake.cue(Cue(mode="stream", events=2) if index % 3 == 0 else Cue())
        body = {**BODY, "stream": True} if index % 3 == 0 else BODY
        assert stack.request("POST", "/v1/chat/completions", body)[0] == 200
    fake.cue(Cue(mode="status", status=400))
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 400
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    assert len({seen.connection for seen in fake.chat_requests}) == 1  # one connection carried them all


def test_gzip_answers_are_decoded(stack: Stack) -> None:
    import gzip

    import orjson

    from .fake_upstream import Cue, completion

    fake = stack.fake("up")
    payload = orjson.dumps(completion("m", "compressed"))
    fake.default = Cue(body=gzip.compress(payload), headers={"Content-Encoding": "gzip"})
    stack.gateway({"controllers": [openai_controller(fake)]})
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and body == payload
