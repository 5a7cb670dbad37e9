"""Client keys, admin keys, header hygiene and keeping secrets secret."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import openai
import orjson
import pytest

from chatgpt_apiserver.cli import main
from chatgpt_apiserver.server import reload

from .fake_upstream import Cue
from .harness import Stack, openai_controller

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
CANARY = "sk-" + "canary-7f3a9c1e5b2d4f6a8c0e2b4d6f8a0c2e"  # split so it does not look like a committed key


def test_client_keys_are_required_when_set(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"client_keys": ["team-a-key", "team-b-key"], "controllers": [openai_controller(fake)]})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "team-a-key"},
                    {"Authorization": "Basic dGVhbS1hLWtleQ=="}):
        status, got, body = stack.request("POST", "/v1/chat/completions", BODY,
                                          headers={"Content-Type": "application/json", **headers})
        assert status == 401 and got["www-authenticate"] == "Bearer"
        assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
    assert not fake.chat_requests
    for key in ("team-a-key", "team-b-key"):
        client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)
        assert client.chat.completions.create(**BODY).choices  # type: ignore[call-overload]
    sent = [seen.headers["Authorization"] for seen in fake.chat_requests]
    assert sent == ["Bearer sk-test-up-0123456789abcdef"] * 2  # the client's key never goes upstream
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.base_url, api_key="nope", max_retries=0).models.list()


def test_open_routes_stay_open_and_admin_needs_the_admin_key(stack: Stack) -> None:
    stack.gateway({"client_keys": ["client"], "admin_key": "admin-secret", "controllers": [{"type": "mock"}]})
    for path in ("/status", "/healthz", "/readyz"):
        assert stack.request("GET", path)[0] == 200
    assert stack.request("GET", "/admin/controllers")[0] == 401
    assert stack.request("GET", "/admin/controllers", headers={"Authorization": "Bearer client"})[0] == 401
    assert stack.request("GET", "/admin/controllers", headers={"Authorization": "Bearer admin-secret"})[0] == 200
    # CORS preflights are answered without a key
    assert stack.request("OPTIONS", "/v1/chat/completions", headers={"Origin": "https://x"})[0] == 204


def test_keys_from_env_and_file(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("# team keys\nfile-key\n\n")
    stack.gateway({"client_keys_file": "keys.txt", "controllers": [{"type": "mock"}]},
                  env={"CHATGPT_APISERVER_CLIENT_KEYS": "env-key-1,env-key-2"})
    for key, expected in (("file-key", 200), ("env-key-2", 200), ("other", 401)):
        status = stack.request("POST", "/v1/chat/completions", BODY,
                               headers={"Authorization": f"Bearer {key}"})[0]
        assert status == expected


def test_refuses_to_listen_publicly_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.json"
    config.write_bytes(orjson.dumps({"controllers": [{"type": "mock"}]}))
    assert main(["--config-file", str(config), "--host", "0.0.0.0", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err and "--allow-unauthenticated" in err and "client_keys" in err
    assert main(["--config-file", str(config), "--host", "0.0.0.0", "--allow-unauthenticated",
                 "--check-config"]) == 0
    assert main(["--config-file", str(config), "--host", "::1", "--check-config"]) == 0


def test_hop_by_hop_headers_are_not_forwarded_either_way(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(headers={"Set-Cookie": "session=abc", "Keep-Alive": "timeout=5", "X-Hop": "1",
                                "Proxy-Authenticate": "Basic", "Upgrade": "h2c", "Trailer": "X-T",
                                "X-Ratelimit-Remaining-Requests": "5"})
    stack.gateway({"controllers": [openai_controller(fake)]})
    status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY, headers={
        "Content-Type": "application/json", "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1",
        "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic eDp5", "Upgrade": "websocket",
        "Trailer": "X-T", "Authorization": "Bearer client-key", "Cookie": "a=b"})
    assert status == 200
    for name in ("set-cookie", "keep-alive", "x-hop", "proxy-authenticate", "upgrade", "trailer",
                 "x-ratelimit-remaining-requests"):
        assert name not in headers
    sent = {k.lower() for k in fake.chat_requests[0].headers}
    for name in ("x-secret-hop", "keep-alive", "te", "proxy-authorization", "upgrade", "trailer", "cookie"):
        assert name not in sent
    assert fake.chat_requests[0].headers["Authorization"] != "Bearer client-key"


def test_a_canary_key_never_leaks(stack: Stack, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    fake = stack.fake("up", model_ids=("m1",))
    leak = ('{"error": {"message": "Incorrect API key provided: ' + CANARY + '", "type": "invalid_request_error", '
            '"param": null, "code": "invalid_api_key"}}').encode()
    config = {"controllers": [{"type": "openai", "name": "canary",
                               "config": {"api_key": CANARY, "base_url": fake.base_url}}]}
    stack.gateway(config, "--log-level", "debug")
    seen: list[bytes] = []

    def call(body: dict[str, object], cue: Cue | None = None) -> None:
        if cue is not None:
            fake.cue(cue)
        _status, headers, answer = stack.request("POST", "/v1/chat/completions", body)
        seen.append(answer + orjson.dumps(headers))

    call(BODY, Cue(mode="status", status=400, body=leak))
    call(BODY, Cue(mode="status", status=500, body=leak))
    call({**BODY, "stream": True}, Cue(mode="error_event", events=2, after=1))
    call(BODY, Cue(mode="status", status=401, body=leak))  # disables the controller, logged
    call(BODY)  # no usable controller now
    for path in ("/v1/models", "/admin/controllers", "/readyz"):
        _status, headers, answer = stack.request("GET", path)
        seen.append(answer + orjson.dumps(headers))
    for item in seen:
        assert CANARY.encode() not in item and b"7f3a9c1e5b2d" not in item
    assert any(b"[redacted]" in item for item in seen)
    logs = "\n".join(record.getMessage() for record in caplog.records)
    assert "controller canary disabled" in logs
    assert CANARY not in logs and "7f3a9c1e5b2d" not in logs

    path = tmp_path / "canary.json"
    path.write_bytes(orjson.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGPT_APISERVER", "OPENAI_"))}
    for extra in (["--check-config"], ["--help"]):
        done = subprocess.run([sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(path), *extra],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0
        assert CANARY not in done.stdout + done.stderr and "7f3a9c1e5b2d" not in done.stdout + done.stderr


def test_cors_with_an_origin_list_allows_only_those_origins(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]}, "--cors-origins", "https://chat.example,https://b.example")
    _, headers, _ = stack.request("POST", "/v1/chat/completions", BODY,
                                  headers={"Origin": "https://chat.example", "Content-Type": "application/json"})
    assert headers["access-control-allow-origin"] == "https://chat.example" and headers["vary"] == "Origin"
    for origin in ("https://evil.example", None):
        sent = {"Content-Type": "application/json", **({"Origin": origin} if origin else {})}
        status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY, headers=sent)
        assert status == 200 and "access-control-allow-origin" not in headers
        assert headers["vary"] == "Origin"  # a cache must not hand this answer to another origin


def test_a_reload_cannot_remove_the_keys_from_a_public_listener(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    stack.gateway({"host": "0.0.0.0", "client_keys": ["team-key"], "controllers": [{"type": "mock"}]})
    running = stack.running
    assert running is not None and running.sockets[0].getsockname()[0] == "0.0.0.0"
    path = stack.tmp_path / "chatgpt-apiserver.json"
    argv = ["--config-file", str(path), "--port", "0"]
    # The file now claims loopback and drops the keys; host takes a restart, so the listener stays public.
    path.write_bytes(orjson.dumps({"host": "127.0.0.1", "controllers": [{"type": "mock"}]}))
    assert stack.loop.run(reload(running, argv)) is False
    assert "the server listens on 0.0.0.0, a non-loopback address, and this config has no client keys" in caplog.text
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 401
    assert stack.request("POST", "/v1/chat/completions", BODY, headers={"Authorization": "Bearer team-key"})[0] == 200
    # A reload that keeps a key is taken.
    path.write_bytes(orjson.dumps({"client_keys": ["new-key"], "controllers": [{"type": "mock"}]}))
    assert stack.loop.run(reload(running, argv)) is True
    assert stack.request("POST", "/v1/chat/completions", BODY, headers={"Authorization": "Bearer new-key"})[0] == 200


def test_a_reload_on_a_loopback_listener_is_held_to_loopback(stack: Stack) -> None:
    stack.gateway({"client_keys": ["team-key"], "controllers": [{"type": "mock"}]})
    running = stack.running
    assert running is not None
    path = stack.tmp_path / "chatgpt-apiserver.json"
    path.write_bytes(orjson.dumps({"host": "0.0.0.0", "controllers": [{"type": "mock"}]}))
    # Taking 0.0.0.0 needs a restart, where the start-up check refuses it; until then loopback needs no key.
    assert stack.loop.run(reload(running, ["--config-file", str(path), "--port", "0"])) is True
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
