"""What every route shares: JSON errors in OpenAI's shape, CORS, request ids, keys, and reading the body.

A request is admitted when its headers arrive (`prepare`): its method, its key, the size it declares and
room among the bodies held at once are checked before a byte of its body is read. Only then does the body
come in, counted as it does, and the route's method runs once it is whole.
"""

from __future__ import annotations

import functools
import os
import re
import time
from asyncio import Future
from typing import Any, Optional, Union, overload

import orjson
from tornado.httputil import HTTPHeaders, _normalize_header, format_timestamp
from tornado.web import HTTPError, RequestHandler, stream_request_body

from ..clients import Client
from ..errors import ApiError
from ..gateway import Gateway
from .bodies import Bodies
from .connections import ClientConnection, declares_body, headers_of

EXPOSED_HEADERS = ("X-Request-Id, X-Upstream-Request-Id, X-Chatgpt-Apiserver-Controller, Retry-After, "
                   "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
                   "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # used with fullmatch: no trailing newline
_HTTP_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")
UNBOUNDED = 1 << 62  # the connection's own body cap, once ours (declared length, then bytes counted) is in force


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return format_timestamp(second)


def client_request_id(given: Optional[str]) -> str:
    """The client's X-Request-Id if it is safe to echo, log and send upstream; else a fresh one."""
    return given if given and REQUEST_ID.fullmatch(given) else os.urandom(12).hex()


def _implemented(cls: type) -> tuple[str, ...]:
    return tuple(m for m in _HTTP_METHODS
                 if getattr(cls, m.lower()) is not getattr(RequestHandler, m.lower()) or m == "OPTIONS")


@overload
def header(headers: HTTPHeaders, name: str) -> Optional[str]: ...
@overload
def header(headers: HTTPHeaders, name: str, default: str) -> str: ...
def header(headers: HTTPHeaders, name: str, default: Optional[str] = None) -> Optional[str]:
    """`headers.get(name, default)` at a fraction of its cost on every request (Tornado's `get` goes through
    Mapping.get and a KeyError for an absent header): repeated headers joined with "," as Tornado does."""
    values = headers._as_list.get(_normalize_header(name))
    return ",".join(values) if values else default


@stream_request_body  # so that prepare() runs when the headers arrive, before any body byte is read
class BaseHandler(RequestHandler):
    """JSON errors in OpenAI's shape, CORS, request ids, who may call the route, and the request body."""

    gateway: Gateway
    bodies: Bodies
    access = "client"  # client: needs a client key when keys are set; admin: the admin key; open: anyone
    route = "other"  # the metrics label
    request_id = ""
    client: Optional[Client] = None  # who is calling, when clients are configured
    # What the access log reports about this request; class defaults until a request sets them.
    model = ""
    stream = False
    controller = ""
    attempts = 0
    bytes_out = 0
    ttfb: Optional[float] = None
    tokens: Optional[int] = None
    upstream_request_id = ""
    methods: tuple[str, ...] = ("OPTIONS",)  # what the route answers; each subclass's own, found once
    # The body as it arrives: its pieces, their size, and the bytes reserved for it in `bodies`.
    _parts: Optional[list[bytes]] = None
    _received = 0
    _reserved = 0
    _unread = False  # this answer leaves a body unread: the connection closes after it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.methods = _implemented(cls)

    def initialize(self, gateway: Gateway, bodies: Bodies) -> None:
        self.gateway = gateway
        self.bodies = bodies

    def clear(self) -> None:
        """Tornado's clear(), minus its per-request cost: the Date header is formatted once a second, and
        no Server header advertises the Tornado version. tests/test_http_api.py checks it against Tornado's."""
        self._headers = headers_of({"Content-Type": ["text/html; charset=UTF-8"],
                                    "Date": [_http_date(int(time.time()))]})
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
        origin = header(self.request.headers, "Origin")
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

    def flush(self, include_footers: bool = False) -> Future[None]:
        if not self._headers_written:
            if self._unread or self.gateway.draining:
                self._headers["Connection"] = "close"
            if self.request.version == "HTTP/1.0" and (
                    "Content-Length" not in self._headers or self._headers.get("Connection") == "close"):
                self._close_after()
        return super().flush(include_footers)

    def _close_after(self) -> None:
        """An HTTP/1.0 connection that closes after this answer, saying so. An answer sent as it comes (a
        stream) ends there, as HTTP/1.0 has no chunked framing: Tornado would keep a keep-alive connection
        open, and the client could not tell where the answer ends. And where the gateway closes it (a body
        left unread, a drain), Tornado would still have answered `Keep-Alive`."""
        connection = self.request.connection
        if isinstance(connection, ClientConnection):
            self.request.headers["Connection"] = "close"  # (no "Keep-Alive" in the answer)
            connection.close_after_answer()

    def prepare(self) -> None:
        """Admit the request on its headers: method, key, then the body it declares."""
        self.identify()
        if self.request.method not in self.methods:
            raise HTTPError(405)
        if self.access != "open" and self.request.method != "OPTIONS":
            self._authenticate()
        self._admit_body()
        self._unread = False

    def identify(self) -> None:
        """Take the client's request id, or make one; until the body is admitted, it counts as unread."""
        headers = self.request.headers
        self.request_id = client_request_id(header(headers, "X-Request-Id"))
        self._headers["X-Request-Id"] = self.request_id  # a safe charset by REQUEST_ID or by construction
        self._unread = declares_body(headers)

    def _admit_body(self) -> None:
        headers = self.request.headers
        length = header(headers, "Content-Length")
        chunked = "chunked" in header(headers, "Transfer-Encoding", "").lower()
        if length is None and not chunked:
            return  # no body
        coding = header(headers, "Content-Encoding", "identity").strip().lower()
        if coding != "identity":
            # Read as it is, a compressed body would fail as JSON that is not valid UTF-8; say what it is instead.
            raise ApiError(415, f"The request body is sent with Content-Encoding {coding[:40]!r}, which the "
                                f"gateway does not decode; send it uncompressed.", code="unsupported_content_encoding",
                           headers={"Accept-Encoding": "identity"})
        limit = self._body_limit()
        declared = 0
        if length is not None and not chunked:
            declared = int(length)  # a whole number: llhttp refuses any other as a malformed request
            if declared > limit:
                raise self._too_large(declared, limit)
        if not self.bodies.take(declared):
            raise _overloaded()
        self._reserved, self._parts = declared, []
        connection = self.request.connection
        assert connection is not None
        self.bodies.waiting[connection] = self._body_timed_out
        if isinstance(connection, ClientConnection):
            connection.set_max_body_size(UNBOUNDED)  # ours apply: the declared length, then every byte counted

    def data_received(self, chunk: bytes) -> None:
        """A piece of the body: counted against the limits as it arrives, refused as soon as it is over."""
        parts = self._parts
        if parts is None:
            return  # already refused; the connection closes once the answer is out
        self._received += len(chunk)
        limit = self._body_limit()
        if self._received > limit:
            self._refuse(self._too_large(self._received, limit, so_far=True))
            return
        if self._received > self._reserved:  # a chunked body reserves as it comes
            if not self.bodies.take(self._received - self._reserved):
                self._refuse(_overloaded())
                return
            self._reserved = self._received
        parts.append(chunk)

    def take_body(self) -> bytes:
        """The whole body, byte for byte as the client sent it (call once the method runs)."""
        parts, self._parts = self._parts, None
        self._forget_waiting()
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _refuse(self, error: ApiError) -> None:
        self._release_body()
        self._unread = True
        self.send_api_error(error)

    def _body_timed_out(self) -> bool:
        """The slow-client sweep found the body too slow: answer 408 (the connection then closes)."""
        if self._headers_written or self._finished:
            return False
        seconds = self.gateway.settings.client_body_timeout
        self._refuse(ApiError(408, f"The request body did not arrive within {seconds:g} seconds.",
                              code="request_timeout"))
        return True

    def _forget_waiting(self) -> None:
        connection = self.request.connection
        # Only its own entry: on a kept-alive connection, the next request's may be there already.
        if connection is not None and self.bodies.waiting.get(connection) == self._body_timed_out:
            del self.bodies.waiting[connection]

    def _release_body(self) -> None:
        self._forget_waiting()
        self.bodies.give(self._reserved)
        self._reserved = 0
        self._parts = None

    def _body_limit(self) -> int:
        """The largest body one request may send: max_body_size, or all that may be held at once if that is
        less (such a body would never fit: a 503 asking to retry would be asked again forever)."""
        return min(self.gateway.settings.max_body_size, self.bodies.limit())

    @staticmethod
    def _too_large(size: int, limit: int, so_far: bool = False) -> ApiError:
        message = (f"The request body is over the limit of {limit} bytes." if so_far
                   else f"The request body is {size} bytes; the limit is {limit}.")
        return ApiError(413, message, code="request_too_large")

    def on_finish(self) -> None:
        if self._reserved or self._parts is not None:
            self._release_body()

    def on_connection_close(self) -> None:
        if self._reserved or self._parts is not None:
            self._release_body()
        super().on_connection_close()

    def _authenticate(self) -> None:
        gateway = self.gateway
        authorization = header(self.request.headers, "Authorization")
        if self.access == "admin" and gateway.admin_keys:
            if not gateway.admin_keys.check(authorization):
                raise _unauthorized("admin key")
            return
        clients = gateway.clients
        if clients.enabled:
            self.client = clients.find(authorization)
            if self.client is None:
                raise _unauthorized("API key")
            if self.access == "admin" and clients.named:
                # Every client's usage is there: one client's key must not show it the others'.
                raise ApiError(403, "The admin views and /metrics are closed: clients are configured and no "
                                    "admin_key is set. Set admin_key and use it here.", type="permission_error",
                               code="admin_key_required")

    async def rate_limit_levels(self, model: str = "") -> dict[str, str]:
        """The client's own x-ratelimit-* headers as its buckets stand (for answers that took nothing)."""
        client = self.client
        if client is None or not client.spec.limited:
            return {}
        return await self.gateway.clients.levels(client, model)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):
            return  # an answer, not a fault
        super().log_exception(typ, value, tb)

    def is_preflight(self) -> bool:
        """Whether this is a browser's CORS preflight, and CORS is on."""
        headers = self.request.headers
        return (self.request.method == "OPTIONS" and bool(self.settings.get("cors_origins"))
                and "Origin" in headers and "Access-Control-Request-Method" in headers)

    def options(self, *args: Any) -> None:
        """CORS preflight: allow this route's methods and whatever headers the browser asks for.

        The method asked for is allowed too, even one the route lacks: the browser then sends the real
        request and shows our JSON 404 or 405 instead of an opaque CORS failure.
        """
        self.set_status(204)
        if self.settings.get("cors_origins"):
            methods = list(self.methods)
            asked_method = header(self.request.headers, "Access-Control-Request-Method", "").strip().upper()
            if asked_method in _HTTP_METHODS and asked_method not in methods:
                methods.append(asked_method)
            self.set_header("Access-Control-Allow-Methods", ", ".join(methods))
            asked = header(self.request.headers, "Access-Control-Request-Headers", "")
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
            allowed = self.methods
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


def _unauthorized(which: str) -> ApiError:
    return ApiError(401, f"Missing or invalid {which}: send 'Authorization: Bearer <key>'.", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def _overloaded() -> ApiError:
    return ApiError(503, "The gateway holds too many request bodies at once; retry shortly.", code="overloaded",
                    headers={"Retry-After": "1"})
