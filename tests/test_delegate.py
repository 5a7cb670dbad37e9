"""A request reaches its handler admitted on its headers, and its method runs once the body is in
(web/delegate.py), with a handler's prepare() sync or async, refusing or not, and a client gone mid-body."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
from typing import Any, Optional

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.web import HTTPError, RequestHandler, stream_request_body

from chatgpt_apiserver.web.connections import ClientServer
from chatgpt_apiserver.web.delegate import ROUTES_KEPT, GatewayApplication

EVENTS: list[str] = []
TASKS: list[tuple[str, Optional[asyncio.Task[Any]]]] = []  # the task each step ran in


@stream_request_body
class Recorder(RequestHandler):
    """Records what it sees, in order; answers with it."""

    def prepare(self) -> Optional[Any]:
        EVENTS.append(f"prepare {len(self.request.body or b'')}")
        TASKS.append(("prepare", asyncio.current_task()))
        if self.request.headers.get("X-Refuse"):
            raise HTTPError(403)
        return None

    def data_received(self, chunk: bytes) -> None:
        EVENTS.append(f"data {len(chunk)}")

    def post(self) -> None:
        EVENTS.append("post")
        TASKS.append(("post", asyncio.current_task()))
        self.write({"events": EVENTS})

    def on_connection_close(self) -> None:
        EVENTS.append("closed")
        super().on_connection_close()


class AsyncPrepare(Recorder):
    """A prepare() that waits for a timer (a future of its own) or for one turn of the loop (a bare yield)."""

    async def prepare(self) -> None:  # type: ignore[override]
        EVENTS.append("prepare starts")
        TASKS.append(("prepare", asyncio.current_task()))
        await asyncio.sleep(float(self.request.headers.get("X-Sleep", "0")))
        EVENTS.append("prepare ends")


class Whole(RequestHandler):
    """No stream_request_body: Tornado's own delegate, the body read whole before anything runs."""

    def post(self) -> None:
        self.write({"length": len(self.request.body)})


class Item(RequestHandler):
    """A route that takes an id from its path."""

    def post(self, item: str) -> None:
        self.write({"item": item})


@pytest.fixture
def app() -> GatewayApplication:
    EVENTS.clear()
    TASKS.clear()
    return GatewayApplication([("/record", Recorder), ("/async", AsyncPrepare), ("/whole", Whole),
                               (r"/items/(?P<item>\d+)", Item), (r"/files/.*", Whole)])


async def post(client: AsyncHTTPClient, url: str, body: bytes, **headers: str) -> tuple[int, Any]:
    response = await client.fetch(url, method="POST", body=body, headers=headers, raise_error=False)
    return response.code, orjson.loads(response.body) if response.code == 200 else None


@pytest.mark.gen_test
async def test_prepare_runs_on_the_headers_and_the_method_once_the_body_is_in(http_client: AsyncHTTPClient,
                                                                             base_url: str) -> None:
    code, answer = await post(http_client, base_url + "/record", b"x" * 100_000)
    assert code == 200
    events = answer["events"]
    assert events[0] == "prepare 0" and events[-1] == "post"
    assert sum(int(event.split()[1]) for event in events[1:-1]) == 100_000  # every piece, before the method


@pytest.mark.gen_test
async def test_prepare_runs_as_the_headers_are_read_and_the_method_in_a_task_of_its_own(
        http_server: Any, http_port: int) -> None:
    def two_requests() -> list[int]:  # on one keep-alive connection
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        statuses = []
        for _ in range(2):
            connection.request("POST", "/record", b"x" * 10)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()
        return statuses

    assert await asyncio.get_running_loop().run_in_executor(None, two_requests) == [200, 200]
    assert [step for step, _task in TASKS] == ["prepare", "post", "prepare", "post"]
    (_, first), (_, post1), (_, second), (_, post2) = TASKS
    assert first is second  # the connection's own reading task: prepare ran inside headers_received
    assert len({id(first), id(post1), id(post2)}) == 3  # each method in a task of its own


@pytest.mark.gen_test
@pytest.mark.parametrize("sleep", ["0", "0.05"])
async def test_an_async_prepare_is_waited_for_before_the_method(http_client: AsyncHTTPClient, base_url: str,
                                                                sleep: str) -> None:
    code, answer = await post(http_client, base_url + "/async", b"y" * 5000, **{"X-Sleep": sleep})
    assert code == 200
    events = answer["events"]
    assert events[:2] == ["prepare starts", "prepare ends"] and events[-1] == "post"
    assert sum(int(event.split()[1]) for event in events[2:-1]) == 5000
    assert TASKS[0][1] is TASKS[1][1]  # a coroutine prepare() keeps Tornado's way: in the request's own task


@pytest.mark.gen_test
async def test_a_refusal_in_prepare_answers_and_the_method_never_runs(http_client: AsyncHTTPClient,
                                                                      base_url: str) -> None:
    code, _ = await post(http_client, base_url + "/record", b"z" * 1000, **{"X-Refuse": "1"})
    assert code == 403
    await asyncio.sleep(0.05)
    assert EVENTS[0] == "prepare 0" and "post" not in EVENTS


@pytest.mark.gen_test
async def test_a_handler_without_stream_request_body_gets_its_body_whole(http_client: AsyncHTTPClient,
                                                                         base_url: str) -> None:
    code, answer = await post(http_client, base_url + "/whole", b"w" * 70_000)
    assert code == 200 and answer == {"length": 70_000}


@pytest.mark.gen_test
async def test_a_client_gone_mid_body_is_told_to_the_handler_and_nothing_fails(
        http_server: Any, http_port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", http_port))
        await loop.sock_sendall(sock, b"POST /record HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        while "data 10" not in EVENTS:
            await asyncio.sleep(0.01)
    for _ in range(500):  # up to 5 s
        if "closed" in EVENTS:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the parked method's task, had it been started, would run here
    assert EVENTS == ["prepare 0", "data 10", "closed"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.gen_test
async def test_a_paths_route_is_remembered_only_for_routes_that_take_nothing_from_it(
        http_server: Any, http_client: AsyncHTTPClient, base_url: str, app: GatewayApplication) -> None:
    assert isinstance(http_server, ClientServer)  # (these tests run on the gateway's own connections)
    for path in ("/record", "/record", "/whole", "/items/7", "/items/8", "/nowhere"):
        response = await http_client.fetch(base_url + path, method="POST", body=b"{}", raise_error=False)
        assert response.code == (404 if path == "/nowhere" else 200), path
    assert sorted(app._routes) == ["/record", "/whole"]  # not the paths carrying an id, nor an unknown one
    assert orjson.loads((await http_client.fetch(base_url + "/items/9", method="POST", body=b""))
                        .body) == {"item": "9"}
    for number in range(2 * ROUTES_KEPT):  # a route that matches any number of paths: bounded, emptied when full
        path = f"/files/{number}"
        delegate = app.find_handler(HTTPServerRequest(start_line=RequestStartLine("GET", path, "HTTP/1.1"),
                                                      headers=HTTPHeaders({"Host": "x"})))
        assert delegate.handler_class is Whole and path in app._routes and len(app._routes) <= ROUTES_KEPT
