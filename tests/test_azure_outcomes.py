"""What Azure's answers mean for scheduling: 429 timing, quota headers, the content filter, missing deployments,
and Entra ID tokens renewed in a file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from .fake_azure import CUT_WORD, FILTERED_WORD, FakeAzure, azure_controller, rate_limited, start_azure
from .fake_upstream import Cue
from .harness import LoopThread, Stack
from .redis_server import RedisServer
from .test_scheduling import wait_for

GPT = {"gpt-4o": "gpt4o"}


Client = Callable[[], openai.OpenAI]  # the gateway_client fixture (conftest.py)


def admin(stack: Stack) -> dict[str, dict[str, Any]]:
    status, _, body = stack.request("GET", "/admin/controllers")
    assert status == 200
    return {c["name"]: c for c in orjson.loads(body)["controllers"]}


def chat(stack: Stack, content: str = "hi", **extra: Any) -> tuple[int, dict[str, str], bytes]:
    return stack.request("POST", "/v1/chat/completions",
                         {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra})


def two_regions(stack: Stack, **options: Any) -> tuple[FakeAzure, FakeAzure]:
    """East (weight 5, tried first) and west, both serving gpt-4o."""
    east = start_azure(stack, "east", ("gpt4o",))
    west = start_azure(stack, "west", ("gpt4o",))
    stack.gateway({"controllers": [azure_controller(east, GPT, weight=5, **options),
                                   azure_controller(west, GPT, **options)]})
    return east, west


def test_a_429_with_retry_after_ms_cools_down_for_that_long_not_for_retry_after(stack: Stack) -> None:
    east, _west = two_regions(stack)
    east.cue(Cue(**rate_limited(retry_after_ms=1500, retry_after=30)))
    started = time.monotonic()
    status, headers, _ = chat(stack)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "west"  # failed over at once
    view = admin(stack)["east"]
    assert view["state"] == "cooling" and 0.5 < view["cooling_for"] <= 1.5  # not 30 s (Retry-After)
    time.sleep(max(0.0, started + 1.6 - time.monotonic()))
    assert chat(stack)[1]["x-chatgpt-apiserver-controller"] == "east"  # back after 1.5 s
    assert len(east.requests_to("/chat/completions")) == 2


def test_azures_remaining_requests_header_drains_the_controllers_bucket(stack: Stack) -> None:
    east = start_azure(stack, "east", ("gpt4o",))
    west = start_azure(stack, "west", ("gpt4o",))
    east.quota = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "90000"}
    stack.gateway({"controllers": [azure_controller(east, GPT, weight=5, rpm=6),
                                   azure_controller(west, GPT)]})
    served = [chat(stack)[1]["x-chatgpt-apiserver-controller"] for _ in range(3)]
    # Without the header, east's bucket (6 a minute, burst 6) would take all three.
    assert served[0] == "east" and served[1:] == ["west", "west"]
    assert admin(stack)["east"]["buckets"]["requests"]["level"] < 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_content_filter_400_is_relayed_and_never_failed_over(stack: Stack, gateway_client: Client,
                                                               stream: bool) -> None:
    east, west = two_regions(stack)
    with pytest.raises(openai.BadRequestError) as caught:
        gateway_client().chat.completions.create(model="gpt-4o", stream=stream,
                                              messages=[{"role": "user", "content": f"tell me a {FILTERED_WORD}"}])
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "content_filter" and error["param"] == "prompt"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["violence"] == {"filtered": True, "severity": "medium"}
    assert caught.value.response.headers["x-chatgpt-apiserver-controller"] == "east"
    assert len(east.calls) == 1 and west.calls == []  # the request's fault: no other region is asked
    for _ in range(11):  # and never counted against a controller (weights 5:1 share them out)
        with pytest.raises(openai.BadRequestError):
            gateway_client().chat.completions.create(model="gpt-4o",
                                                     messages=[{"role": "user", "content": FILTERED_WORD}])
    assert (len(east.calls), len(west.calls)) == (10, 2)  # one upstream call per request
    for view in admin(stack).values():
        assert view["state"] == "ok" and view["counts"]["failures"] == 0 and view["consecutive_failures"] == 0
    assert chat(stack)[0] == 200


def test_a_stream_the_filter_ends_is_a_normal_end(stack: Stack, gateway_client: Client) -> None:
    _east, west = two_regions(stack)
    events = list(gateway_client().chat.completions.create(
        model="gpt-4o", stream=True, messages=[{"role": "user", "content": f"a story, then {CUT_WORD}"}]))
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == "Once upon"
    assert events[-1].choices[0].finish_reason == "content_filter"
    status, _, body = chat(stack, CUT_WORD, stream=True)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body
    view = admin(stack)["east"]
    assert view["counts"]["successes"] == 2 and view["counts"]["failures"] == 0 and west.calls == []


def test_a_missing_deployment_disables_that_model_on_that_controller_only(stack: Stack, gateway_client: Client,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    east = start_azure(stack, "east", ("emb-east",))  # its gpt-4o deployment was deleted
    west = start_azure(stack, "west", ("gpt4o-west",))
    stack.gateway({"controllers": [
        azure_controller(east, {"gpt-4o": "gpt4o-east", "text-embedding-3-small": "emb-east"}, weight=5),
        azure_controller(west, {"gpt-4o": "gpt4o-west"})]})
    served = [chat(stack) for _ in range(4)]
    assert [(status, headers["x-chatgpt-apiserver-controller"]) for status, headers, _ in served] == [(200, "west")] * 4
    assert east.refused == ["deployment gpt4o-east"]  # asked once, then never again
    metrics = stack.request("GET", "/metrics")[2].decode()
    assert 'chatgpt_apiserver_upstream_attempts_total{controller="east",outcome="no_model"} 1.0' in metrics
    view = admin(stack)["east"]
    assert view["state"] == "ok" and list(view["disabled_models"]) == ["gpt-4o"]
    assert "DeploymentNotFound" in view["disabled_models"]["gpt-4o"]
    assert gateway_client().embeddings.create(model="text-embedding-3-small", input="x").data  # east's other model
    assert admin(stack)["west"]["state"] == "ok" and "disabled_models" not in admin(stack)["west"]
    logged = [r.getMessage() for r in caplog.records if "disabled for model gpt-4o" in r.getMessage()]
    assert len(logged) == 1 and "controller east" in logged[0] and "until the config is reloaded" in logged[0]
    # A reload (the deployment was recreated) lifts it.
    east.deployments.add("gpt4o-east")
    running = stack.running
    assert running is not None
    stack.loop.run(running.gateway.reload(running.gateway.settings))
    assert "disabled_models" not in admin(stack)["east"]
    assert chat(stack)[1]["x-chatgpt-apiserver-controller"] == "east"


def test_a_model_whose_only_deployment_is_missing_leaves_the_model_list(stack: Stack, gateway_client: Client) -> None:
    east = start_azure(stack, "east", ("emb-east",))
    stack.gateway({"controllers": [
        azure_controller(east, {"gpt-4o": "gpt4o-east", "text-embedding-3-small": "emb-east"})]})
    assert [m.id for m in gateway_client().models.list()] == ["gpt-4o", "text-embedding-3-small"]
    assert chat(stack)[0] >= 500  # DeploymentNotFound: gpt-4o is disabled on its only controller
    assert [m.id for m in gateway_client().models.list()] == ["text-embedding-3-small"]
    assert stack.request("GET", "/v1/models/gpt-4o")[0] == 404
    east.deployments.add("gpt4o-east")
    running = stack.running
    assert running is not None
    stack.loop.run(running.gateway.reload(running.gateway.settings))
    assert [m.id for m in gateway_client().models.list()] == ["gpt-4o", "text-embedding-3-small"]


def test_every_instance_sharing_redis_stops_asking_for_a_missing_deployment(
        stack: Stack, loop_thread: LoopThread, tmp_path: Path, redis_server: RedisServer) -> None:
    east = start_azure(stack, "east", ())  # no deployment left at all
    west = start_azure(stack, "west", ("gpt4o",))
    # (A Redis call stalled past the 0.1 s default on a loaded machine would make this an outage test.)
    config = {"redis_url": redis_server.url, "redis_timeout": 2,
              "controllers": [azure_controller(east, GPT, weight=5), azure_controller(west, GPT)]}
    stack.gateway(config)
    (tmp_path / "other").mkdir()
    other = Stack(loop_thread, tmp_path / "other")
    try:
        other.gateway(config)
        assert chat(stack)[1]["x-chatgpt-apiserver-controller"] == "west"
        assert wait_for(lambda: "gpt-4o" in admin(other)["east"].get("disabled_models", {}))
        assert [chat(other)[1]["x-chatgpt-apiserver-controller"] for _ in range(3)] == ["west"] * 3
        assert east.refused == ["deployment gpt4o"]  # asked once, by the first instance only
    finally:
        other.close()


def test_only_missing_deployments_disable_a_model(stack: Stack) -> None:
    east, west = two_regions(stack)
    # A 404 on a classic URL is the controller's (a wrong endpoint, front path or api_version): the gateway
    # built the URL. It fails over, and counts against east, but disables no model.
    east.cue(Cue(mode="status", status=404, body=b'{"error": {"code": "404", "message": "Resource not found"}}'))
    status, headers, _ = chat(stack)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "west"
    assert "disabled_models" not in admin(stack)["east"] and len(west.calls) == 1


def test_a_model_whose_only_deployment_is_missing_gets_503s_never_a_500(stack: Stack) -> None:
    east = start_azure(stack, "east", ())  # gpt-4o is declared, but the resource has no such deployment
    stack.gateway({"controllers": [azure_controller(east, GPT)]})
    for _ in range(3):
        status, headers, body = chat(stack)
        error = orjson.loads(body)["error"]
        assert status in (500, 503) and error["code"] != "internal_error", body
        assert headers["x-should-retry"] == "false" or status == 500
    assert status == 503 and error["code"] == "upstream_unavailable" and "retry-after" not in headers
    assert "gpt-4o" in error["message"] and len(east.calls) == 1  # asked once: then off until a reload


def write_token(path: Path, token: str) -> None:
    """As an agent does: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(token + "\n")
    fresh.replace(path)


def token_gateway(stack: Stack, tmp_path: Path, first: str) -> tuple[FakeAzure, Path]:
    token_file = tmp_path / "azure-east.token"
    write_token(token_file, first)
    fake = start_azure(stack, "east", ("gpt4o",), tokens={first})
    stack.gateway({"controllers": [azure_controller(fake, GPT, config={"bearer_token_file": str(token_file)})]})
    return fake, token_file


def bearers(fake: FakeAzure) -> list[str]:
    """The token each request carried; no request carried an api-key."""
    assert all("api-key" not in {name.lower() for name in seen.headers} for seen in fake.calls)
    return [seen.headers["Authorization"].removeprefix("Bearer ") for seen in fake.calls]


def test_a_renewed_token_is_used_once_its_file_changes(stack: Stack, tmp_path: Path) -> None:
    first, second = "eyJ0eXAiOiJKV1QifQ.eyJ0b2tlbiI6MX0.first-token", "eyJ0eXAiOiJKV1QifQ.eyJ0b2tlbiI6Mn0.second-token"
    fake, token_file = token_gateway(stack, tmp_path, first)
    assert chat(stack)[0] == 200
    write_token(token_file, second)
    fake.tokens = {first, second}  # both valid for a while, as Entra's are
    assert wait_for(lambda: chat(stack)[0] == 200 and bearers(fake)[-1] == second, timeout=5)
    assert bearers(fake)[0] == first and fake.refused == []  # taken up without a 401, and without a restart


def test_a_401_reads_the_token_file_again_and_retries_once_on_the_same_controller(stack: Stack,
                                                                                  tmp_path: Path) -> None:
    first, second = "eyJ0eXAiOiJKV1QifQ.eyJ0b2tlbiI6MX0.old-token", "eyJ0eXAiOiJKV1QifQ.eyJ0b2tlbiI6Mn0.new-token"
    fake, token_file = token_gateway(stack, tmp_path, first)
    assert chat(stack)[0] == 200
    stamp = token_file.stat()
    token_file.write_text(second + "\n")  # in place, same size, and the old time put back: the file looks
    os.utime(token_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # unchanged until a 401 makes it read
    fake.tokens = {second}  # the old one is refused at once
    time.sleep(1.1)  # past the once-a-second look, which sees nothing new
    status, headers, _ = chat(stack)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "east"
    assert bearers(fake) == [first, first, second] and fake.refused == ["a wrong bearer token"]
    assert admin(stack)["east"]["state"] == "ok"


def test_requests_refused_together_after_a_renewal_are_all_retried_with_the_new_token(stack: Stack,
                                                                                     tmp_path: Path) -> None:
    first, second = "eyJ0eXAiOiJKV1QifQ.eyJ0b2tlbiI6MX0.old-token", "eyJ0eXAiOiJKV1QifQ.eyJ0b2tlbiI6Mn0.new-token"
    fake, token_file = token_gateway(stack, tmp_path, first)
    assert chat(stack)[0] == 200
    stamp = token_file.stat()
    token_file.write_text(second + "\n")  # looks unchanged until a 401 makes it read (as above)
    os.utime(token_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    fake.tokens = {second}
    time.sleep(1.1)
    fake.refusal_delay = 0.3  # every request is sent with the old token before the first refusal comes back
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: chat(stack)[0], range(8)))
    assert statuses == [200] * 8
    assert admin(stack)["east"]["state"] == "ok"
    assert bearers(fake).count(first) >= 2  # several were refused together, and each tried again


def test_a_refused_token_that_was_not_renewed_disables_the_controller_for_a_while(stack: Stack,
                                                                                 tmp_path: Path) -> None:
    fake, _token_file = token_gateway(stack, tmp_path, "eyJ0eXAiOiJKV1QifQ.eyJ0b2tlbiI6MX0.expired")
    fake.tokens = set()
    status, _, body = chat(stack)
    assert status == 500 and b"expired" not in body  # the token is never quoted back
    assert len(fake.calls) == 1  # the file had nothing new: no second try
    view = admin(stack)["east"]
    assert view["state"] == "disabled" and 25 < view["disabled_for"] <= 30  # not until a reload
    assert "token" in view["disabled_reason"]
