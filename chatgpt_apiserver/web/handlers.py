"""HTTP handlers: the OpenAI-compatible API, health routes, and JSON errors for everything else."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Optional, Union

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders, format_timestamp
from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, RequestHandler

from ..call import Call
from ..errors import ApiError, stream_error_event
from ..gateway import Gateway
from ..relay.attempts import client_error_body, open_answer, relayed_headers
from ..relay.rewrite import client_wants_usage
from ..relay.streams import relay_stream
from .schemas import parse_chat_request
from .slow_clients import written

log = logging.getLogger("chatgpt_apiserver.handlers")

STATUS_PAGE = Path(__file__).with_name("static") / "status.html"
EXPOSED_HEADERS = "X-Request-Id, X-Chatgpt-Apiserver-Controller, Retry-After"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
CONTROLLER_HEADER = "X-Chatgpt-Apiserver-Controller"
STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                  "X-Accel-Buffering": "no"}  # no proxy buffering (nginx)
_HTTP_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return format_timestamp(second)


def _implemented(cls: type) -> list[str]:
    return [m for m in _HTTP_METHODS
            if getattr(cls, m.lower()) is not getattr(RequestHandler, m.lower()) or m == "OPTIONS"]


class BaseHandler(RequestHandler):
    """JSON errors in OpenAI's shape, CORS, request ids, and who may call the route."""

    gateway: Gateway
    access = "client"  # client: needs a client key when keys are set; admin: the admin key; open: anyone
    route = "other"  # the metrics label
    request_id = ""
    # What the access log reports about this request; class defaults until a request sets them.
    model = ""
    stream = False
    controller = ""
    attempts = 0
    bytes_out = 0
    ttfb: Optional[float] = None
    tokens: Optional[int] = None

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def clear(self) -> None:
        """Tornado's clear(), minus its per-request cost: the Date header is formatted once a second, and
        no Server header advertises the Tornado version. tests/test_http_api.py checks it against Tornado's."""
        self._headers = HTTPHeaders({"Content-Type": "text/html; charset=UTF-8", "Date": _http_date(int(time.time()))})
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def write(self, chunk: Union[str, bytes, dict[str, Any]]) -> None:
        if isinstance(chunk, bytes):
            self.bytes_out += len(chunk)
        super().write(chunk)

    def set_default_headers(self) -> None:
        # Runs before initialize() and again after clear(), so it reads the application's settings.
        # Values written straight into _headers are constant or checked already: set_header's checks
        # would only cost time.
        headers = self._headers
        if self.request_id:
            headers["X-Request-Id"] = self.request_id
        origins = self.settings.get("cors_origins")
        if not origins:
            return
        origin = self.request.headers.get("Origin")
        if "*" not in origins:
            headers["Vary"] = "Origin"  # the answer depends on it, whether or not it matches
            if origin is None or origin not in origins:
                return
            self.set_header("Access-Control-Allow-Origin", origin)
        elif origin is None:
            return  # not a cross-origin request: browsers always send Origin with those
        else:
            headers["Access-Control-Allow-Origin"] = "*"
        headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS

    def prepare(self) -> None:
        given = self.request.headers.get("X-Request-Id")
        self.request_id = given if given and REQUEST_ID.match(given) else os.urandom(12).hex()
        self._headers["X-Request-Id"] = self.request_id  # a safe charset by REQUEST_ID or by construction
        if self.access != "open" and self.request.method != "OPTIONS":
            self._authenticate()

    def _authenticate(self) -> None:
        gateway = self.gateway
        admin = self.access == "admin" and bool(gateway.admin_keys)
        ring = gateway.admin_keys if admin else gateway.client_keys
        if ring and not ring.check(self.request.headers.get("Authorization")):
            which = "admin key" if admin else "API key"
            raise ApiError(401, f"Missing or invalid {which}: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):
            return  # an answer, not a fault
        super().log_exception(typ, value, tb)

    def options(self, *args: Any) -> None:
        """CORS preflight: allow this route's methods and whatever headers the browser asks for."""
        self.set_status(204)
        if self.settings.get("cors_origins"):
            self.set_header("Access-Control-Allow-Methods", ", ".join(_implemented(type(self))))
            asked = self.request.headers.get("Access-Control-Request-Headers", "")
            allowed = {"authorization", "content-type", "x-request-id"}
            allowed.update(h.strip().lower() for h in asked.split(",") if h.strip())
            self.set_header("Access-Control-Allow-Headers", ", ".join(sorted(allowed)))
            self.set_header("Access-Control-Max-Age", "43200")
        self.finish()

    def send_api_error(self, error: ApiError) -> None:
        """Finish with `error` in OpenAI's shape."""
        self.set_status(error.status)
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(error.body())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            self.send_api_error(exc)
            return
        if status_code == 405:
            allowed = _implemented(type(self))
            self.set_header("Allow", ", ".join(allowed))
            message = f"Method {self.request.method} is not allowed on {self.request.path}; use {', '.join(allowed)}."
            error = ApiError(405, message, code="method_not_allowed")
        elif status_code == 404:
            error = ApiError(404, f"Unknown path {self.request.path}.", code="unknown_url")
        elif status_code < 500:
            reason = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else self._reason
            error = ApiError(status_code, reason)
        else:
            error = ApiError(status_code, f"Internal error; quote request id {self.request_id} when reporting it.")
        self.send_api_error(error)

    def write_json(self, value: Any, status: int = 200) -> None:
        """Finish with a JSON body."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(value))


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
        body = self.request.body
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

    def get(self) -> None:
        self.write_json({"controllers": self.gateway.describe(), "queue_length": self.gateway.scheduler.queue_length,
                         "in_flight": self.gateway.in_flight, "draining": self.gateway.draining})


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text."""

    access = "admin"
    route = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.gateway.metrics.render())


class StatusPageHandler(BaseHandler):
    """GET / and /dashboard: the live status page (one static file that reads /admin/controllers)."""

    access = "open"  # the page itself holds no data; it asks for the admin key when the data needs one
    route = "status_page"

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(STATUS_PAGE.read_bytes())


class StatusHandler(BaseHandler):
    """GET /status: the original server's liveness answer."""

    access = "open"
    route = "status"

    def get(self) -> None:
        self.write_json({"status": "ok"})


class HealthHandler(BaseHandler):
    """GET /healthz: the process is alive and its event loop turns."""

    access = "open"
    route = "healthz"

    def get(self) -> None:
        self.write_json({"status": "ok"})


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


class NotFoundHandler(BaseHandler):
    """Any unknown path: a JSON 404 for every method."""

    access = "open"

    def prepare(self) -> None:
        super().prepare()
        raise HTTPError(404)

