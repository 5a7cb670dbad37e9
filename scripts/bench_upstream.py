"""A very fast fake OpenAI upstream for benchmarks: raw asyncio + uvloop, canned replies.

What it does is read from the request body's "bench" object, which the gateway relays untouched:
  {"bench": {"delay_ms": 100, "events": 20, "interval_ms": 50, "role_first": 1}}
With role_first, the stream opens like OpenAI's: a role event leaves with the headers, then the paced events.
POST /v1/embeddings answers a canned ~2 MB batch (figure i); POST /v1/responses streams typed events (j).
Streams (when "stream": true) are sent with chunked framing, one chunk per event, then a usage event
and [DONE]; a stream with no interval is sent in one write.

Run: python scripts/bench_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import re
import sys

import uvloop

COMPLETION = (b'{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench",'
              b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},'
              b'"logprobs":null,"finish_reason":"stop"}],'
              b'"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}')
JSON_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
             b"Content-Length: " + str(len(COMPLETION)).encode() + b"\r\n\r\n")
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n")
EVENT = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
         b'"choices":[{"index":0,"delta":{"content":"tok "},"logprobs":null,"finish_reason":null}]}\n\n')
USAGE = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
         b'"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":20,"total_tokens":29}}\n\n')
ROLE = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n')
DONE = b"data: [DONE]\n\n"
# Figure (i): 100 inputs x 1,536 floats, about 2 MB, as OpenAI answers an embeddings batch.
EMBEDDINGS = b"".join((
    b'{"object":"list","data":[',
    b",".join(b'{"object":"embedding","index":%d,"embedding":[' % i
              + b",".join(b"%.9f" % (((i * 1536 + j) % 997) / 997 - 0.5) for j in range(1536)) + b"]}"
              for i in range(100)),
    b'],"model":"text-embedding-3-small","usage":{"prompt_tokens":812,"total_tokens":812}}'))
EMBEDDINGS_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                   b"Content-Length: " + str(len(EMBEDDINGS)).encode() + b"\r\n\r\n")
# Figure (j): a Responses stream: typed events, the first with the headers, no [DONE].
RESPONSE = (b'{"id":"resp_bench","object":"response","created_at":1,"status":"%s","model":"bench","output":[],'
            b'"usage":%s}')
CREATED = (b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":'
           + RESPONSE % (b"in_progress", b"null") + b"}\n\n")
DELTA = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,'
         b'"item_id":"msg_bench","output_index":0,"content_index":0,"delta":"tok "}\n\n')
COMPLETED = (b'event: response.completed\ndata: {"type":"response.completed","sequence_number":2,"response":'
             + RESPONSE % (b"completed", b'{"input_tokens":9,"output_tokens":20,"total_tokens":29}') + b"}\n\n")
MODELS = b'{"object":"list","data":[{"id":"bench","object":"model","created":0,"owned_by":"bench"}]}'

NUMBER = {name: re.compile(rb'"' + name + rb'"\s*:\s*([0-9.]+)') for name in (b"delay_ms", b"events", b"interval_ms",
                                                                                   b"role_first")}
STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def param(body: bytes, name: bytes, default: float) -> float:
    if b'"bench"' not in body:
        return default
    found = NUMBER[name].search(body)
    return float(found.group(1)) if found else default


class Upstream(asyncio.Protocol):
    """One connection: parse pipelined HTTP/1.1 requests and answer each in order."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.queue: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                length = int(lower[at + 15:lower.find(b"\r\n", at) if lower.find(b"\r\n", at) > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        delay = param(body, b"delay_ms", 0)
        streaming = STREAM_TRUE.search(body) is not None
        if head.startswith(b"GET /v1/models"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(MODELS)).encode() + b"\r\n\r\n" + MODELS)
            return
        if head.startswith(b"POST /v1/embeddings"):
            self.transport.write(EMBEDDINGS_HEAD + EMBEDDINGS)
            return
        if not streaming and not delay and not self.busy:
            self.transport.write(JSON_HEAD + COMPLETION)
            return
        self.queue.append((head, body))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        assert self.transport is not None
        while self.queue:
            _head, body = self.queue.pop(0)
            delay = param(body, b"delay_ms", 0)
            if delay:
                await asyncio.sleep(delay / 1000)
            if STREAM_TRUE.search(body) is None:
                self.transport.write(JSON_HEAD + COMPLETION)
                continue
            events = int(param(body, b"events", 20))
            interval = param(body, b"interval_ms", 0) / 1000
            if _head.startswith(b"POST /v1/responses"):
                await self.respond(events, interval)
                continue
            role = chunk(ROLE) if param(body, b"role_first", 0) else b""
            if not interval:  # an unpaced stream leaves in one write, as a fast upstream's would
                self.transport.write(STREAM_HEAD + role + chunk(EVENT) * events + chunk(USAGE) + chunk(DONE)
                                     + b"0\r\n\r\n")
                continue
            self.transport.write(STREAM_HEAD + role)
            for _ in range(events):
                await asyncio.sleep(interval)
                if self.transport.is_closing():
                    return
                self.transport.write(chunk(EVENT))
            self.transport.write(chunk(USAGE) + chunk(DONE) + b"0\r\n\r\n")
        self.busy = False


    async def respond(self, events: int, interval: float) -> None:
        """A Responses stream: response.created with the headers, deltas `interval` apart, then completed."""
        assert self.transport is not None
        self.transport.write(STREAM_HEAD + chunk(CREATED))
        for _ in range(events):
            await asyncio.sleep(interval)
            if self.transport.is_closing():
                return
            self.transport.write(chunk(DELTA))
        self.transport.write(chunk(COMPLETED) + b"0\r\n\r\n")


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=8192, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
