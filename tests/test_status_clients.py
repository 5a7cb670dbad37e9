"""The status page's clients table, rendered by headless Chromium behind an admin key.

The page asks for the admin key and keeps it in the tab's session storage; the test puts it there through
Chromium's DevTools protocol (as a user typing it would), reloads, and reads the rendered page.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from tornado.websocket import websocket_connect

from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .test_packaging import ARTIFACTS, chromium
from .test_process import free_port

KEY_ITEM = "chatgpt-apiserver-admin-key"  # where the page keeps the admin key (status.html)


class DevTools:
    """A minimal DevTools-protocol client over Tornado's websocket client."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.next_id = 0
        self.connection: Any = None

    async def __aenter__(self) -> DevTools:
        self.connection = await websocket_connect(self.url, max_message_size=64 * 1024 * 1024)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.connection.close()

    async def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        ident = self.next_id
        await self.connection.write_message(orjson.dumps({"id": ident, "method": method, "params": params}).decode())
        while True:
            message = await asyncio.wait_for(self.connection.read_message(), 30)
            assert message is not None, "Chromium closed the DevTools connection"
            reply = orjson.loads(message)
            if reply.get("id") == ident:
                assert "error" not in reply, reply
                return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        return (await self.call("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")


def page_target(port: int) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                targets = orjson.loads(response.read())
            found = [t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"]
            if found:
                return str(found[0])
        except OSError:
            pass
        assert time.monotonic() < deadline, "Chromium's DevTools did not come up"
        time.sleep(0.1)


def test_the_status_page_shows_clients_with_usage_against_budget(stack: Stack, tmp_path: Path) -> None:
    fake = stack.fake()
    fake.default = Cue(mode="json")
    stack.gateway({"controllers": [openai_controller(fake)], "admin_key": "admin-secret",
                   "prices": {"gpt-4o": {"input": 10_000, "output": 10_000}},
                   "clients": [{"name": "chat-frontend", "key": "chat-key", "rpm": 600, "share": 3,
                                "budget": {"usd": 0.00005}},
                               {"name": "embed-nightly", "key": "embed-key", "priority": "batch",
                                "budget": {"tokens": 20, "usd": 1}}]})
    for key in ("chat-key", "embed-key", "embed-key"):
        status, _h, _b = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": [
            {"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {key}",
                                                          "Content-Type": "application/json"})
        assert status == 200
    debug_port = free_port()
    browser = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={debug_port}",
                                "--window-size=1280,900", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def drive() -> tuple[str, bytes]:
        async with DevTools(page_target(debug_port)) as tools:
            await tools.call("Page.enable")
            await tools.call("Page.navigate", url=f"http://127.0.0.1:{stack.port}/")
            await asyncio.sleep(1.0)
            asked = await tools.evaluate("document.getElementById('login').style.display")
            await tools.evaluate(f"sessionStorage.setItem('{KEY_ITEM}', 'admin-secret'); location.reload()")
            deadline = time.monotonic() + 20
            while not await tools.evaluate("document.querySelectorAll('tr[data-client]').length"):
                assert time.monotonic() < deadline, "the clients table never filled"
                await asyncio.sleep(0.2)
            assert asked == "block"  # without the key, the page asked for it
            html = await tools.evaluate("document.documentElement.outerHTML")
            shot = await tools.call("Page.captureScreenshot", format="png")
            return str(html), base64.b64decode(shot["data"])

    try:
        html, png = asyncio.run(drive())
    finally:
        browser.terminate()
        browser.wait(30)
    assert 'data-client="chat-frontend"' in html and 'data-client="embed-nightly"' in html
    assert "interactive, share 3" in html and "batch, share 1" in html
    assert 'data-budget="tokens"' in html and "24 / 20 tokens" in html and "$0.24 / $1.00" in html
    assert "$0.12 / $0.00005" in html  # a small budget keeps its digits
    assert "bar spent over" in html  # the spent token budget shows as over
    assert "requests " in html and "600" in html  # the frontend's own request bucket
    assert "chat-key" not in html and "embed-key" not in html and "admin-secret" not in html
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "status-page-clients.png").write_bytes(png)
    assert len(png) > 10_000
