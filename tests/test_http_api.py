"""The HTTP surface in-process with pytest-tornado: validation errors, routes, methods, CORS."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.web import Application, RequestHandler

from chatgpt_apiserver.config.settings import parse_settings
from chatgpt_apiserver.gateway import Gateway
from chatgpt_apiserver.web.app import make_app
from chatgpt_apiserver.web.base import client_request_id
from chatgpt_apiserver.web.handlers import StatusHandler

GOOD = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def app(tmp_path: Path) -> Application:
    config = tmp_path / "chatgpt-apiserver.json"
    config.write_bytes(orjson.dumps({"controllers": [
        {"type": "mock", "config": {"tokens_per_second": 10000, "first_token_delay": 0}}]}))
    settings, _ = parse_settings(["--config-file", str(config)], {})
    return make_app(Gateway.from_settings(settings))


async def fetch(client: AsyncHTTPClient, url: str, method: str = "POST", body: Any = None,
                headers: Any = None) -> HTTPResponse:
    if body is not None and not isinstance(body, bytes):
        body = orjson.dumps(body)
    return await client.fetch(url, method=method, body=body, headers=headers, raise_error=False,
                              allow_nonstandard_methods=True)


def with_(**changes: Any) -> dict[str, Any]:
    body = dict(GOOD)
    body.update(changes)
    return body


BAD_REQUESTS = [
    (b"", None, "invalid_json"),
    (b"{not json", None, "invalid_json"),
    (b"null", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_json"),
    (b'"text"', None, "invalid_json"),
    ({"messages": GOOD["messages"]}, "model", "invalid_value"),
    (with_(model=7), "model", "invalid_value"),
    (with_(messages=[]), "messages", "invalid_value"),
    (with_(messages="hi"), "messages", "invalid_value"),
    ({"model": "m"}, "messages", "invalid_value"),
    (with_(messages=["hi"]), "messages[0]", "invalid_value"),
    (with_(messages=[{"content": "hi"}]), "messages[0].role", "invalid_value"),
    (with_(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role", "invalid_value"),
    (with_(messages=[{"role": "user"}]), "messages[0].content", "invalid_value"),
    (with_(messages=[{"role": "user", "content": 5}]), "messages[0].content", "invalid_value"),
    (with_(messages=[{"role": "user", "content": []}]), "messages[0].content", "invalid_value"),
    (with_(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0]", "invalid_value"),
    (with_(stream="yes"), "stream", "invalid_value"),
    (with_(stream=1), "stream", "invalid_value"),
    (with_(temperature=2.5), "temperature", "invalid_value"),
    (with_(temperature="hot"), "temperature", "invalid_value"),
    (with_(top_p=1.1), "top_p", "invalid_value"),
    (with_(n=0), "n", "invalid_value"),
    (with_(n=129), "n", "invalid_value"),
    (with_(n=1.5), "n", "invalid_value"),
    (with_(n=True), "n", "invalid_value"),
    (with_(presence_penalty=-3), "presence_penalty", "invalid_value"),
    (with_(frequency_penalty=2.1), "frequency_penalty", "invalid_value"),
    (with_(max_tokens="10"), "max_tokens", "invalid_value"),
    (with_(max_completion_tokens=1.5), "max_completion_tokens", "invalid_value"),
    (with_(top_logprobs=21), "top_logprobs", "invalid_value"),
    (with_(logprobs="true"), "logprobs", "invalid_value"),
    (with_(stop=5), "stop", "invalid_value"),
    (with_(stream_options={"include_usage": "yes"}), "stream_options.include_usage", "invalid_value"),
    (with_(stream_options=[]), "stream_options", "invalid_value"),
    (with_(logit_bias={"50256": "x"}), "logit_bias.50256", "invalid_value"),
    (with_(tools={"type": "function"}), "tools", "invalid_value"),
    (with_(response_format="json"), "response_format", "invalid_value"),
    (with_(user=5), "user", "invalid_value"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("body,param,code", BAD_REQUESTS)
async def test_bad_requests_get_400_naming_the_field(http_client: AsyncHTTPClient, base_url: str,
                                                     body: Any, param: Any, code: str) -> None:
    response = await fetch(http_client, base_url + "/v1/chat/completions", body=body if body != b"" else b"")
    assert response.code == 400, response.body
    error = orjson.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    if param:
        assert param in error["message"]


GOOD_VARIANTS = [
    with_(stream=None, temperature=None, top_p=None, n=None, max_tokens=None, seed=None, stop=None,
          stream_options=None, logit_bias=None, logprobs=None, presence_penalty=None),
    with_(temperature=0, top_p=1, n=128, presence_penalty=-2, frequency_penalty=2, top_logprobs=20),
    with_(max_tokens=-1, max_completion_tokens=0, seed=-(2**63)),
    with_(stop=["a", "b"], logit_bias={"50256": -100}, parallel_tool_calls=False, store=True),
    with_(messages=[{"role": "system", "content": "s"},
                    {"role": "developer", "content": [{"type": "text", "text": "d"}]},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
                    {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                                          "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "assistant", "content": None},
                    {"role": "tool", "content": "r", "tool_call_id": "1"},
                    {"role": "function", "content": None, "name": "f"}]),
    with_(reasoning_effort="low", verbosity="low", service_tier="auto", metadata={"a": "b"},
          prediction={"type": "content", "content": "x"}, web_search_options={}, modalities=["text"]),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("body", GOOD_VARIANTS)
async def test_everything_openai_accepts_is_accepted(http_client: AsyncHTTPClient, base_url: str,
                                                     body: Any) -> None:
    response = await fetch(http_client, base_url + "/v1/chat/completions", body=body)
    assert response.code == 200, response.body


@pytest.mark.gen_test
async def test_trailing_slash_is_served_without_redirect(http_client: AsyncHTTPClient, base_url: str) -> None:
    response = await fetch(http_client, base_url + "/v1/chat/completions/", body=GOOD)
    assert response.code == 200
    assert orjson.loads(response.body)["object"] == "chat.completion"


@pytest.mark.gen_test
async def test_unknown_path_is_a_json_404(http_client: AsyncHTTPClient, base_url: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        response = await fetch(http_client, base_url + "/v1/nothing", method=method,
                               body=b"{}" if method == "POST" else None)
        assert response.code == 404
        assert orjson.loads(response.body)["error"]["code"] == "unknown_url"


@pytest.mark.gen_test
async def test_wrong_method_is_a_json_405_with_allow(http_client: AsyncHTTPClient, base_url: str) -> None:
    response = await fetch(http_client, base_url + "/v1/chat/completions", method="GET")
    assert response.code == 405
    assert response.headers["Allow"] == "POST, OPTIONS"
    assert orjson.loads(response.body)["error"]["type"] == "invalid_request_error"
    response = await fetch(http_client, base_url + "/status", method="DELETE")
    assert response.code == 405 and "GET" in response.headers["Allow"]


@pytest.mark.gen_test
async def test_cors_preflight_allows_authorization(http_client: AsyncHTTPClient, base_url: str) -> None:
    response = await fetch(http_client, base_url + "/v1/chat/completions", method="OPTIONS", headers={
        "Origin": "https://chat.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang"})
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-lang"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


@pytest.mark.gen_test
async def test_cors_headers_answer_cross_origin_requests_only(http_client: AsyncHTTPClient, base_url: str) -> None:
    url = base_url + "/v1/chat/completions"
    response = await fetch(http_client, url, body=GOOD, headers={"Origin": "https://chat.example"})
    assert response.code == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"X-Request-Id", "X-Chatgpt-Apiserver-Controller", "Retry-After"} <= exposed
    response = await fetch(http_client, url, body=GOOD)  # no Origin: not a browser's cross-origin call
    assert response.code == 200 and "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Expose-Headers" not in response.headers


@pytest.mark.gen_test
async def test_request_id_is_echoed_when_valid(http_client: AsyncHTTPClient, base_url: str) -> None:
    response = await fetch(http_client, base_url + "/v1/chat/completions", body=GOOD,
                           headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    response = await fetch(http_client, base_url + "/v1/chat/completions", body=b"{",
                           headers={"X-Request-Id": "bad id with spaces"})
    assert response.code == 400
    assert response.headers["X-Request-Id"] != "bad id with spaces"
    assert len(response.headers["X-Request-Id"]) == 24


def test_our_clear_resets_what_tornados_does(app: Application) -> None:
    """BaseHandler.clear() replaces Tornado's for speed; if Tornado's ever resets more, this fails."""

    class Connection:  # just enough to build a handler outside a server
        def set_close_callback(self, callback: Any) -> None:
            pass

    deps = next(rule.target_kwargs for rule in app.wildcard_router.rules if rule.target is StatusHandler)
    request = HTTPServerRequest(start_line=RequestStartLine("GET", "/status", "HTTP/1.1"),
                                headers=HTTPHeaders({"Host": "x", "Origin": "https://x"}), connection=Connection())  # type: ignore[arg-type]
    handler = StatusHandler(app, request, **deps)
    handler.request_id = "id-1"
    handler.clear()
    ours, our_headers = dict(vars(handler)), dict(handler._headers)
    RequestHandler.clear(handler)
    theirs, their_headers = dict(vars(handler)), dict(handler._headers)
    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k != "_headers"} == {k: v for k, v in theirs.items() if k != "_headers"}
    assert their_headers.pop("Server").startswith("TornadoServer")  # we do not advertise the version
    our_date = parsedate_to_datetime(our_headers.pop("Date"))
    assert abs((parsedate_to_datetime(their_headers.pop("Date")) - our_date).total_seconds()) <= 1
    assert our_headers == their_headers and our_headers["X-Request-Id"] == "id-1"


def test_request_id_must_match_in_full() -> None:
    assert client_request_id("abc-123") == "abc-123"
    for bad in ("abc\n", "abc\r\n", "\nabc", "a b", "x" * 129, "", None):
        fresh = client_request_id(bad)
        assert fresh != bad and len(fresh) == 24 and "\n" not in fresh


@pytest.mark.gen_test
async def test_a_preflight_to_any_path_is_answered(http_client: AsyncHTTPClient, base_url: str) -> None:
    preflight = {"Origin": "https://chat.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    for path, method in (("/v1/nothing", "POST"), ("/v1/responses", "POST"), ("/v1/models", "DELETE")):
        response = await fetch(http_client, base_url + path, method="OPTIONS",
                               headers={**preflight, "Access-Control-Request-Method": method})
        assert response.code == 204, path
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert method in response.headers["Access-Control-Allow-Methods"].split(", ")
        assert "authorization" in response.headers["Access-Control-Allow-Headers"]
    # The real request then gets our JSON 404, with the CORS headers the browser needs to show it.
    response = await fetch(http_client, base_url + "/v1/nothing", body=b"{}",
                           headers={"Origin": "https://chat.example"})
    assert response.code == 404 and orjson.loads(response.body)["error"]["code"] == "unknown_url"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    # A plain OPTIONS (no preflight) to an unknown path is still a 404.
    response = await fetch(http_client, base_url + "/v1/nothing", method="OPTIONS")
    assert response.code == 404


@pytest.mark.gen_test
async def test_open_get_routes_answer_head(http_client: AsyncHTTPClient, base_url: str) -> None:
    for path in ("/status", "/healthz", "/readyz", "/", "/dashboard"):
        got = await fetch(http_client, base_url + path, method="GET")
        head = await fetch(http_client, base_url + path, method="HEAD")
        assert head.code == got.code == 200, path
        assert head.body == b"" and got.body
        assert head.headers["Content-Length"] == str(len(got.body))
        assert head.headers["Content-Type"] == got.headers["Content-Type"]
    response = await fetch(http_client, base_url + "/v1/models", method="HEAD")
    assert response.code == 405  # not an open route: its GET may call upstreams


@pytest.mark.gen_test
async def test_the_status_page_is_read_once(http_client: AsyncHTTPClient, base_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    page = (Path(__file__).parent.parent / "chatgpt_apiserver" / "web" / "static" / "status.html").read_bytes()

    def no_disk(self: Path) -> bytes:
        raise OSError("the status page must not be read per request")

    monkeypatch.setattr(Path, "read_bytes", no_disk)
    response = await fetch(http_client, base_url + "/", method="GET")
    assert response.code == 200 and response.body == page
