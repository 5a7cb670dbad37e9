"""The ceiling for one Tornado process: a bare handler answering the bench upstream's canned body itself.

A streaming request ("stream": true) gets the seven events of a 5-delta bench stream (five deltas, the
usage event and [DONE]), each written with its own flush, as a handler relaying events one by one would.
Same event loop (uvloop) and the same pinning as the gateway. Run: python scripts/bench_reference.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Optional

import uvloop
from bench_upstream import COMPLETION, DONE, EVENT, STREAM_TRUE, USAGE
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

STREAM_EVENTS = (EVENT,) * 5 + (USAGE, DONE)


class Canned(RequestHandler):
    """POST /v1/chat/completions answered from memory."""

    def post(self) -> Optional[Awaitable[None]]:
        # A plain method for JSON answers, so that (b)'s ceiling pays for no coroutine.
        if STREAM_TRUE.search(self.request.body) is not None:
            return self._stream()
        self.set_header("Content-Type", "application/json")
        self.finish(COMPLETION)
        return None

    async def _stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        for event in STREAM_EVENTS:
            self.write(event)
            await self.flush()
        self.finish()


async def main(port: int) -> None:
    server = HTTPServer(Application([(r"/v1/chat/completions", Canned)]))
    server.listen(port, "127.0.0.1", backlog=8192)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
