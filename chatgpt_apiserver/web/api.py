"""The one handler of every OpenAI endpoint the gateway relays: read the call its endpoint declares, get an
answer from a controller, relay it (a whole body, a stream of events, or binary bytes as they come)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Optional, cast

from tornado.iostream import StreamClosedError

from ..call import Call
from ..clients import Client
from ..clients.estimates import unreported_usage
from ..clients.store import ClientTicket
from ..endpoints.base import Endpoint
from ..endpoints.usage import Usage
from ..errors import ApiError, stream_error_event, typed_error_event
from ..gateway import Gateway
from ..relay.attempts import Answer, client_error_body
from ..relay.routing import open_answer, relayed_headers
from ..relay.streams import BrokenAnswer, StreamResult, relay_bytes, relay_stream
from ..scheduling.fair_queue import ANONYMOUS
from ..transport.reply import joined
from .base import REQUEST_ID, BaseHandler, header
from .bodies import Bodies
from .calls import read_call
from .connections import ClientConnection, written

log = logging.getLogger("chatgpt_apiserver.handlers")

CONTROLLER_HEADER = "X-Chatgpt-Apiserver-Controller"
UPSTREAM_ID_HEADER = "X-Upstream-Request-Id"
UPSTREAM_ID_NAMES = ("x-request-id", "apim-request-id")  # OpenAI's, then Azure's
LARGE_BODY = 64 * 1024  # a body this large is written apart from the head (one copy of it less)
STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                  "X-Accel-Buffering": "no"}  # no proxy buffering (nginx)


def upstream_request_id(headers: Mapping[str, str]) -> str:
    """The upstream's own id for the request (users quote it to their provider), if it is safe to pass on."""
    for name in UPSTREAM_ID_NAMES:
        value = headers.get(name)
        if value and REQUEST_ID.fullmatch(value):
            return value
    return ""


def _tokens(usage: Optional[Usage]) -> Optional[int]:
    return usage.tokens if usage is not None else None


class EndpointHandler(BaseHandler):
    """Every relayed route; which endpoint a request is comes from its method (the route table's data)."""

    endpoint: Optional[Endpoint] = None
    _task: Optional[asyncio.Task[Any]] = None
    _client_gone = False
    _abort_reason = ""
    _call: Optional[Call] = None
    # The client's admission, and what settles it: the answer's usage, the tokens to settle its reservation
    # against (0: no answer; None: an answer that did not say), whether it broke, the names to price it by.
    _ticket: Optional[ClientTicket] = None
    _usage: Optional[Usage] = None
    _used: Optional[float] = 0.0
    _broke = False
    _upstream_model = ""
    _answered = False  # a controller answered (else: refused, failed over to the end, or cut short first)
    _gave_up = False  # the gateway answered with its own error: nothing reached the client from upstream
    _counting = False  # a client's stream: its events are counted, for a charge if it reports no usage
    _events = 0
    _stream: Optional[StreamResult] = None  # a relayed event stream, as far as it has come
    _created: Optional[str] = None  # the stored response (or conversation) the answer made
    _stored_usage = False  # a client's answer whose usage is a stored response's: charged once (_charged_once)

    def initialize(self, gateway: Gateway, bodies: Bodies, endpoints: Mapping[str, Endpoint]) -> None:  # type: ignore[override]
        super().initialize(gateway, bodies)
        self.methods = (*endpoints, "OPTIONS")
        endpoint = endpoints.get(self.request.method or "")
        if endpoint is not None:
            self.endpoint = endpoint
            self.route = endpoint.route

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

    async def get(self, **ids: str) -> None:
        await self._serve(ids)

    async def post(self, **ids: str) -> None:
        await self._serve(ids)

    async def delete(self, **ids: str) -> None:
        await self._serve(ids)

    async def _serve(self, ids: dict[str, str]) -> None:
        gateway = self.gateway
        if gateway.in_flight >= gateway.settings.max_concurrent_requests:
            raise ApiError(503, "The gateway is at its concurrent request limit; retry shortly.",
                           code="overloaded", headers={"Retry-After": "1"})
        self._task = asyncio.current_task()
        gateway.enter(self)
        try:
            await self._handle(ids)
        except ApiError as error:
            self._gave_up = True
            if error.attempts:
                self.attempts, self.controller = error.attempts, error.controller
            if self._ticket is None and self.client is not None and not any(
                    name.startswith("x-ratelimit-") for name in error.headers):
                # Refused before the client's admission (a bad request, a model it may not use): its levels as
                # they stand, as every answer to a client with limits carries them.
                error.headers.update(await self.rate_limit_levels(self._call.model if self._call else ""))
            self.send_api_error(error)
        except StreamClosedError:  # a write found the client gone, perhaps before on_connection_close ran
            log.info("client went away; request %s ended", self.request_id)
        except BrokenAnswer:
            self._client_gone = True
            connection = self.request.connection
            if isinstance(connection, ClientConnection):
                connection.close()  # no final chunk: the client sees the answer is incomplete
        except asyncio.CancelledError:
            if self._client_gone:
                log.info("client went away; request %s cancelled", self.request_id)
                if not self._headers_written:
                    # nginx's "client closed request": the log and the metrics tell it from an answer sent.
                    self.set_status(499, "Client Closed Request")
                    if self._call is not None and not self.controller:
                        self.controller = self._call.tried  # the controller that had it, if one did
            elif self._abort_reason:
                self._finish_aborted()
            else:
                raise
        finally:
            self._task = None
            if self._ticket is not None:
                self._settle(self._ticket)
            gateway.leave(self)

    def _settle(self, ticket: ClientTicket) -> None:
        """Settle the client's admission. An answer that never said what it used is charged an estimate: a
        stream by the events relayed, a request cut short while the upstream had it by its reservation."""
        usage, used, call = self._usage, self._used, self._call
        if usage is None and call is not None and not self._gave_up and (
                self._counting or (not self._answered and call.attempted)):
            usage = unreported_usage(ticket.reserved, len(call.body), self._events if self._counting else None)
            used = float(usage.tokens)
        self.gateway.clients.settle(ticket, usage, used, self._broke or self.get_status() >= 400,
                                    (self._upstream_model,) if self._upstream_model else ())

    def _finish_aborted(self) -> None:
        if self._finished:
            return  # the answer was complete; only its delivery was cut short
        message = f"The request was cut short: {self._abort_reason}."
        if self._headers_written:
            typed = self.endpoint is not None and self.endpoint.stream_error == "typed"
            self.write(typed_error_event(message, "shutting_down") if typed
                       else stream_error_event(message, "server_error", "shutting_down"))
            self.finish()
        else:
            self.send_api_error(ApiError(503, message, code="shutting_down", headers={"Retry-After": "1"}))

    async def _handle(self, ids: dict[str, str]) -> None:
        endpoint = self.endpoint
        assert endpoint is not None  # prepare() refused the other methods
        call = read_call(endpoint, self.take_body(), header(self.request.headers, "Content-Type", ""), ids,
                         self.request.query, self.request_id)
        self._call = call
        self.model, self.stream = call.model, call.stream
        client = self.client
        if client is not None and call.owner_of:
            await self._visible_to(client, call, call.owner_of)
        answer = await open_answer(self.gateway, call, client.tenant if client is not None else ANONYMOUS,
                                   self._admit if client is not None else None)
        if self._client_gone:
            if answer.usage is not None:
                self._account(answer.usage)
            answer.close()
            return
        self._answered = True
        self._created = answer.created
        self._stored_usage = self._ticket is not None and (bool(answer.created) or call.endpoint.shows_stored_usage)
        if client is not None and answer.created and 200 <= answer.status < 300 and client.spec.named:
            self.gateway.affinity.made_by(answer.created, client.name)
        self.controller, self.attempts = answer.controller.name, answer.attempts
        if call.model:
            self._upstream_model = answer.controller.upstream_model(call.model)
        self._headers[CONTROLLER_HEADER] = answer.controller.name  # names are checked against a safe charset
        self.upstream_request_id = upstream_request_id(answer.reply.headers)
        if self.upstream_request_id:
            self._headers[UPSTREAM_ID_HEADER] = self.upstream_request_id  # a safe charset by REQUEST_ID
        if answer.splitter is not None:
            self._headers.update(STREAM_HEADERS)
            self._used = None  # until the stream says
            self._counting = self._ticket is not None
            self._stream = result = StreamResult()
            await relay_stream(answer, call, self._send, self.gateway.secrets, result)  # (its last send accounts)
            self._broke = result.failed
        elif answer.binary:
            self._used = None
            self._start_binary(answer)
            await relay_bytes(answer, self._send)
        else:
            usage = answer.usage
            if usage is not None and self._stored_usage:
                usage = await self._charged_once(usage)
            self._account(usage)
            if answer.usage is None and answer.status >= 400:
                self._used = 0.0
            await self._finish_body(answer)
            return
        if not self._client_gone and not self._finished:
            self.finish()

    async def _visible_to(self, client: Client, call: Call, ident: str) -> None:
        """What a named client made, another client does not see: a 404, as OpenAI answers for another
        project's ids. (What the plain `client_keys` make, named only by their place in the list, is not
        marked: they share it, as the keys of one project do.)"""
        maker = await self.gateway.affinity.maker(ident)
        if maker is None or maker == client.name:
            return  # its own, or made before clients were configured (or forgotten): the upstream decides
        what = "Conversation" if ident.startswith("conv_") else "Response"
        named = next((name for name in call.endpoint.names if name in call.payload), None)
        if named == "previous_response_id":
            what = "Previous response"
        raise ApiError(404, f"{what} with id {ident!r} not found.", param=named)

    async def _admit(self, tokens: float) -> None:
        """The client's own admission (before any controller is asked); its refusal is raised as the answer."""
        client, call = self.client, self._call
        assert client is not None and call is not None
        clients, takes_model = self.gateway.clients, call.endpoint.model_field is not None
        ticket = clients.admit_now(client, call.model, call.label, tokens, takes_model)
        if ticket is None:
            ticket = await clients.admit(client, call.model, call.label, tokens, takes_model)
        self._ticket = ticket
        if ticket.headers:
            self._headers.update(ticket.headers)  # x-ratelimit-*: numbers and durations only

    async def _charged_once(self, usage: Usage) -> Optional[Usage]:
        """A client pays a stored response's usage once: when the answer that made it reports it, else when a
        fetch first shows it. None: charged before (the fetch costs no tokens). (Only where `_stored_usage`
        says so: no other answer awaits a coroutine for it.)"""
        call, affinity = self._call, self.gateway.affinity
        assert call is not None
        if call.endpoint.shows_stored_usage:
            if call.owner_of and not await affinity.first_charge(call.owner_of):
                self._counting = False  # nor an estimate from its events
                return None
        elif self._created:
            affinity.charged(self._created)
        return usage

    def _account(self, usage: Optional[Usage]) -> None:
        self._usage = usage
        self._used = float(usage.tokens) if usage is not None else None
        self.tokens = _tokens(usage)

    def _start_binary(self, answer: Answer) -> None:
        self.set_status(answer.status)
        self.set_header("Content-Type", answer.reply.content_type)
        for name, value in relayed_headers(answer.reply.headers).items():
            self.set_header(name, value)

    async def _send(self, data: bytes, last: bool) -> None:
        if self.ttfb is None:
            self.ttfb = self.request.request_time()
            self.gateway.metrics.ttft.observe(self.ttfb)
        if self._counting:
            self._events += data.count(b"data:")  # one per event, in both stream styles
        if last:
            if self._stream is not None:
                usage = self._stream.usage
                if usage is not None and self._stored_usage:
                    usage = await self._charged_once(usage)
                self._account(usage)  # before finish() writes the access log line
            # A whole stream in hand at once leaves in one write, with a Content-Length; else this is the last chunk.
            await self._sent(self.finish(data))
            return
        self.write(data)  # (Nagle is off on client connections: each event leaves at once)
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
        assert isinstance(connection, ClientConnection)
        timeout = self.gateway.settings.client_write_timeout
        if await written(connection, flushed, timeout):
            return
        log.info("client accepted no bytes for %g s; request %s disconnected", timeout, self.request_id)
        self._client_gone = True
        connection.close()  # its close callback cancels this request, as when a client hangs up
        await flushed

    async def _finish_body(self, answer: Answer) -> None:
        status = answer.status
        content_type = answer.reply.content_type
        self.set_status(status)
        for name, value in relayed_headers(answer.reply.headers).items():
            self.set_header(name, value)
        if status >= 400:
            self.set_header("Content-Type", "application/json")
            await self._sent(self.finish(client_error_body(answer.body, status, self.gateway.secrets)))
            return
        self.set_header("Content-Type", content_type)
        pieces = answer.pieces
        size = sum(len(piece) for piece in pieces)
        connection = self.request.connection
        if size <= LARGE_BODY or not isinstance(connection, ClientConnection):
            await self._sent(self.finish(joined(pieces)))
            return
        # A large answer leaves as the pieces it came in, after the head: joining them, or Tornado copying
        # them onto the head, would copy megabytes for nothing.
        self.set_header("Content-Length", str(size))
        await self._sent(self.flush())
        for piece in pieces:
            connection.write(cast(bytes, piece))  # (its stream takes a bytearray as it is)
        self.bytes_out += size
        await self._sent(self.finish())


class ModelHandler(BaseHandler):
    """GET /v1/models/{model}: one model of the catalogue `GET /v1/models` serves."""

    route = "models"

    async def get(self, model: str) -> None:
        allowed = self.client.spec.models if self.client is not None else None
        headers = await self.rate_limit_levels()
        if model not in await self.gateway.models() or (allowed is not None and model not in allowed):
            raise ApiError(404, f"The model {model!r} does not exist or is not served by this gateway.",
                           param="model", code="model_not_found", headers=headers)
        for name, value in headers.items():
            self.set_header(name, value)
        self.write_json({"id": model, "object": "model", "created": 0, "owned_by": "chatgpt-apiserver"})
