"""HTTP handlers: the OpenAI-compatible API, health routes, and JSON errors for everything else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Optional

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError
from tornado.web import HTTPError

from ..call import Call
from ..errors import ApiError, stream_error_event
from ..gateway import Gateway
from ..relay.attempts import client_error_body, open_answer, relayed_headers
from ..relay.rewrite import client_wants_usage
from ..relay.streams import relay_stream
from ..state import StoreUnavailable
from .base import REQUEST_ID, BaseHandler
from .bodies import Bodies
from .schemas import parse_chat_request
from .slow_clients import written

log = logging.getLogger("chatgpt_apiserver.handlers")

CONTROLLER_HEADER = "X-Chatgpt-Apiserver-Controller"
UPSTREAM_ID_HEADER = "X-Upstream-Request-Id"
UPSTREAM_ID_NAMES = ("x-request-id", "apim-request-id")  # OpenAI's, then Azure's
STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                  "X-Accel-Buffering": "no"}  # no proxy buffering (nginx)


def upstream_request_id(headers: Mapping[str, str]) -> str:
    """The upstream's own id for the request (users quote it to their provider), if it is safe to pass on."""
    for name in UPSTREAM_ID_NAMES:
        value = headers.get(name)
        if value and REQUEST_ID.fullmatch(value):
            return value
    return ""


class ChatCompletionsHandler(BaseHandler):
    """POST /v1/chat/completions: validate, pick a controller, relay the answer."""

    route = "chat_completions"

    _task: Optional[asyncio.Task[Any]] = None
    _client_gone = False
    _abort_reason = ""

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._task is not None:
            self._task.cancel()  # stops the upstream call or stream at once
        super().on_connection_close()

    def abort(self, reason: str) -> None:
        """End this request now (shutdown timeout): a stream gets the error event, a waiting request 503."""
        self._abort_reason = reason
        if self._task is not None:
            self._task.cancel()

    async def post(self, *args: Any) -> None:
        gateway = self.gateway
        if gateway.in_flight >= gateway.settings.max_concurrent_requests:
            raise ApiError(503, "The gateway is at its concurrent request limit; retry shortly.",
                           code="overloaded", headers={"Retry-After": "1"})
        self._task = asyncio.current_task()
        gateway.enter(self)
        try:
            await self._handle()
        except ApiError as error:
            self.send_api_error(error)
        except StreamClosedError:  # a write found the client gone, perhaps before on_connection_close ran
            log.info("client went away; request %s ended", self.request_id)
        except asyncio.CancelledError:
            if self._client_gone:
                log.info("client went away; request %s cancelled", self.request_id)
            elif self._abort_reason:
                self._finish_aborted()
            else:
                raise
        finally:
            self._task = None
            gateway.leave(self)

    def _finish_aborted(self) -> None:
        if self._finished:
            return  # the answer was complete; only its delivery was cut short
        message = f"The request was cut short: {self._abort_reason}."
        if self._headers_written:
            self.write(stream_error_event(message, "server_error", "shutting_down"))
            self.finish()
        else:
            self.send_api_error(ApiError(503, message, code="shutting_down", headers={"Retry-After": "1"}))

    async def _handle(self) -> None:
        body = self.take_body()
        limit = self.gateway.settings.max_body_size
        if len(body) > limit:
            raise ApiError(413, f"The request body is {len(body)} bytes; the limit is {limit}.",
                           code="request_too_large")
        payload = parse_chat_request(body)
        stream = bool(payload.get("stream"))
        self.model, self.stream = payload["model"], stream
        call = Call(body, payload, payload["model"], stream, self.request_id,
                    inject_usage=stream and not client_wants_usage(payload))
        answer = await open_answer(self.gateway, call)
        if self._client_gone:
            answer.close()
            return
        self.controller, self.attempts = answer.controller.name, answer.attempts
        self._headers[CONTROLLER_HEADER] = answer.controller.name  # names are checked against a safe charset
        self.upstream_request_id = upstream_request_id(answer.reply.headers)
        if self.upstream_request_id:
            self._headers[UPSTREAM_ID_HEADER] = self.upstream_request_id  # a safe charset by REQUEST_ID
        if answer.splitter is None:
            self.tokens = _total_tokens(answer.usage)
            await self._finish_body(answer.status, answer.reply.content_type, answer.body,
                                    relayed_headers(answer.reply.headers))
            return
        self._headers.update(STREAM_HEADERS)
        result = await relay_stream(answer, call, self._send_events, self.gateway.secrets)
        self.tokens = _total_tokens(result.usage)
        if not self._client_gone and not self._finished:
            self.finish()

    async def _send_events(self, events: bytes, last: bool) -> None:
        if self.ttfb is None:
            self.ttfb = self.request.request_time()
            self.gateway.metrics.ttft.observe(self.ttfb)
        if last:
            # A whole stream in hand at once leaves in one write, with a Content-Length; else this is the last chunk.
            await self._sent(self.finish(events))
            return
        if not self._headers_written:
            connection = self.request.connection
            if isinstance(connection, HTTP1Connection):
                connection.stream.set_nodelay(True)  # the stream goes on: each later event leaves at once
        self.write(events)
        await self._sent(self.flush())

    async def _sent(self, flushed: asyncio.Future[None]) -> None:
        """Wait for written bytes to reach the socket; cut off a client that accepts none for client_write_timeout.

        Such a client would otherwise hold its controller slot, an upstream connection and the bytes waiting
        for it for as long as its TCP connection lives.
        """
        if flushed.done():
            flushed.result()  # raises if the client has gone
            return
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        timeout = self.gateway.settings.client_write_timeout
        if await written(connection.stream, flushed, timeout):
            return
        log.info("client accepted no bytes for %g s; request %s disconnected", timeout, self.request_id)
        self._client_gone = True
        connection.stream.close()  # its close callback cancels this request, as when a client hangs up
        await flushed

    async def _finish_body(self, status: int, content_type: str, body: bytes, headers: dict[str, str]) -> None:
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        if status >= 400:
            body = client_error_body(body, status, self.gateway.secrets)
            content_type = "application/json"
        self.set_header("Content-Type", content_type)
        await self._sent(self.finish(body))


def _total_tokens(usage: Optional[dict[str, Any]]) -> Optional[int]:
    total = usage.get("total_tokens") if usage else None
    return total if isinstance(total, int) else None


class ModelsHandler(BaseHandler):
    """GET /v1/models: every model some controller serves, in OpenAI's list shape."""

    route = "models"

    async def get(self, *args: Any) -> None:
        names = await self.gateway.models()
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "chatgpt-apiserver"} for name in names]
        self.write_json({"object": "list", "data": data})


class AdminControllersHandler(BaseHandler):
    """GET /admin/controllers: every controller's limits, bucket levels, state and counts."""

    access = "admin"
    route = "admin"

    async def get(self) -> None:
        gateway = self.gateway
        self.write_json({"controllers": await gateway.describe(), "queue_length": gateway.scheduler.queue_length,
                         "in_flight": gateway.in_flight, "draining": gateway.draining,
                         "body_bytes_held": self.bodies.held})


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text."""

    access = "admin"
    route = "metrics"

    async def get(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # the metrics then show the views last read
            await self.gateway.refresh_views()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.gateway.metrics.render())


class StatusPageHandler(BaseHandler):
    """GET / and /dashboard: the live status page (one static file that reads /admin/controllers)."""

    access = "open"  # the page itself holds no data; it asks for the admin key when the data needs one
    route = "status_page"

    def initialize(self, gateway: Gateway, bodies: Bodies, page: bytes = b"") -> None:
        super().initialize(gateway, bodies)
        self.page = page  # read once, when the application is built

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.page)

    head = get


class StatusHandler(BaseHandler):
    """GET /status: the original server's liveness answer."""

    access = "open"
    route = "status"

    def get(self) -> None:
        self.write_json({"status": "ok"})

    head = get


class HealthHandler(BaseHandler):
    """GET /healthz: the process is alive and its event loop turns."""

    access = "open"
    route = "healthz"

    def get(self) -> None:
        self.write_json({"status": "ok"})

    head = get


class ReadyHandler(BaseHandler):
    """GET /readyz: at least one controller can take requests."""

    access = "open"
    route = "readyz"

    def get(self) -> None:
        if self.gateway.ready:
            self.write_json({"status": "ready", "controllers": len(self.gateway.controllers)})
        else:
            self.set_header("Retry-After", "1")
            self.write_json({"status": "not ready", "draining": self.gateway.draining}, status=503)

    head = get


class NotFoundHandler(BaseHandler):
    """Any unknown path: a JSON 404 for every method."""

    access = "open"

    def prepare(self) -> None:
        self.identify()
        if not self.is_preflight():  # a preflight to any path is answered, so the browser shows the 404
            raise HTTPError(404)

