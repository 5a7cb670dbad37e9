"""The ceiling for one Tornado process: a bare handler answering the bench upstream's canned body itself.

Same event loop (uvloop) and the same pinning as the gateway. Run: python scripts/bench_reference.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from bench_upstream import COMPLETION
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler


class Canned(RequestHandler):
    """POST /v1/chat/completions answered from memory."""

    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(COMPLETION)


async def main(port: int) -> None:
    server = HTTPServer(Application([(r"/v1/chat/completions", Canned)]))
    server.listen(port, "127.0.0.1", backlog=8192)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
