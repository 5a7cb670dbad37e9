"""What every fake endpoint shares: record, rate-limit, authenticate, pick the cue, answer, misbehave on cue.

An endpoint subclasses `FakeHandler` and defines `on_post` / `on_get` / `on_delete`, each taking the parsed
`Call` and the chosen `Cue` and returning a reply: `Body` (JSON or text), `EventStream` (SSE) or `Chunks`
(binary). The base applies the cue to whichever reply it gets, so every cue mode works on every endpoint:

- `status`: the cue's status with OpenAI's error JSON (or `cue.body`); nothing is stored.
- `stall`: headers never come; the fake waits for the client to hang up.
- `delay`: sleep before answering; `headers`: extra answer headers.
- `malformed`: a 200 whose JSON body is cut short (for any endpoint, streaming or not).
- `slow_json`: a `Body` in two halves, `cue.interval` seconds apart.
- `cut` / `stall_after`: a `Body` sends its head (with the full Content-Length) and half its bytes, then closes /
  waits; a stream or `Chunks` does so at event / chunk number `cue.after` (0 = the first), after sending the
  ones before it.
- `malformed_event`: event number `cue.after` carries truncated JSON; the stream goes on.
- `error_event`: event number `cue.after` is replaced by the stream's error event, then the stream ends.
  Typed Responses streams send OpenAI's `event: error` with a `sequence_number`; data-only streams send
  `data: {"error": {...}}` (with `"type": "error"` when their events are typed).
- `no_done`: a stream ends without its terminator (`data: [DONE]`, `response.completed`, `...completed`,
  `transcript.text.done`, `speech.audio.done`).
- `interval` paces events and chunks; `chunked_bytes` splits every write into pieces of that size.
- `json` and `stream` both mean "answer as the request asks" here (stream when it says `stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import orjson
from tornado.httputil import HTTPFile
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from .fake_upstream import Cue, Seen, follow_common_cue

if TYPE_CHECKING:
    from .fake_upstream import FakeUpstream

ERROR_MESSAGE = "upstream exploded"


def new_id(prefix: str) -> str:
    """An id in OpenAI's style (`resp_` + 48 hex digits), unique across fakes."""
    return prefix + secrets.token_hex(24)


def count_tokens(text: str) -> int:
    """OpenAI's rule of thumb: about four characters a token, at least one for non-empty text."""
    return (len(text) + 3) // 4


class FakeApiError(Exception):
    """An answer in OpenAI's error shape; endpoints raise it for what OpenAI would refuse."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> bytes:
        """The error JSON OpenAI's clients parse."""
        return orjson.dumps({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}})


def invalid(message: str, param: Optional[str], code: Optional[str] = None) -> FakeApiError:
    """A 400 naming the request field at fault."""
    return FakeApiError(400, message, param, code)


@dataclass
class Call:
    """One request as an endpoint sees it: the JSON body (or the form fields of a multipart body) and the query."""

    method: str
    payload: dict[str, Any]
    query: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[HTTPFile]] = field(default_factory=dict)
    path_args: tuple[str, ...] = ()
    multipart: bool = False

    @property
    def model(self) -> str:
        """The request's `model`, "" when it names none (the key of `fake.model_cues`)."""
        model = self.payload.get("model")
        return model if isinstance(model, str) else ""

    def require(self, name: str) -> Any:
        """A required field, or OpenAI's 400 naming it."""
        value = self.payload.get(name)
        if value is None or value == "":
            raise invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        return value

    def flag(self, name: str) -> bool:
        """A boolean field: JSON true, or the form value "true"."""
        value = self.payload.get(name)
        return value is True or (isinstance(value, str) and value.lower() == "true")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """An integer field (JSON or form) within [low, high], or a 400 naming it."""
        value = self.payload.get(name, default)
        if value is None:
            return default
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise invalid(f"Invalid type for '{name}': expected an integer.", name, "invalid_type") from None
        if isinstance(value, bool) or not low <= number <= high:
            raise invalid(f"Invalid '{name}': expected a value between {low} and {high}.", name,
                          "integer_out_of_range")
        return number

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        """A string field that must be one of `allowed`, or a 400 naming it."""
        value = self.payload.get(name) or default
        if value not in allowed:
            raise invalid(f"Invalid value for '{name}': {value!r}. Supported values are: "
                          f"{', '.join(repr(a) for a in allowed)}.", name, "invalid_value")
        return str(value)


@dataclass
class Body:
    """A whole answer: JSON or text."""

    data: bytes
    content_type: str = "application/json"
    status: int = 200

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Body:
        """A JSON answer of `value`."""
        return cls(orjson.dumps(value), status=status)

    @classmethod
    def text(cls, value: str) -> Body:
        """A plain-text answer."""
        return cls(value.encode(), "text/plain; charset=utf-8")


@dataclass
class Frame:
    """One SSE event: its JSON data and, for typed streams, its `event:` name."""

    data: bytes
    event: Optional[str] = None

    @classmethod
    def of(cls, value: Any, event: Optional[str] = None) -> Frame:
        """The event carrying `value` as JSON."""
        return cls(orjson.dumps(value), event)

    def encode(self) -> bytes:
        """The event's bytes on the wire: `event: name` (if named), `data: ...`, a blank line."""
        head = b"event: " + self.event.encode() + b"\n" if self.event else b""
        return head + b"data: " + self.data + b"\n\n"

    def malformed(self) -> bytes:
        """The event with its data cut in half (invalid JSON)."""
        return Frame(self.data[:max(1, len(self.data) // 2)], self.event).encode()


DONE = Frame(b"[DONE]")


@dataclass
class EventStream:
    """An SSE answer: `frames`, then `final` (the terminator that the `no_done` cue leaves out)."""

    frames: list[Frame]
    final: list[Frame]
    typed: bool = False  # events carry a "type" field
    sequenced: bool = False  # events carry a "sequence_number" (Responses): errors are OpenAI's error event

    def error_frame(self, index: int) -> Frame:
        """The error event this kind of stream carries, standing at position `index`."""
        if self.sequenced:
            return Frame.of({"type": "error", "code": "server_error", "message": ERROR_MESSAGE, "param": None,
                             "sequence_number": index}, "error")
        error = {"message": ERROR_MESSAGE, "type": "server_error", "param": None, "code": None}
        named = any(frame.event for frame in self.frames + self.final)
        return Frame.of({"type": "error", "error": error} if self.typed else {"error": error},
                        "error" if named else None)


@dataclass
class Chunks:
    """A binary answer written in several pieces with `pause` seconds between them (or `cue.interval`)."""

    chunks: list[bytes]
    content_type: str
    pause: float = 0.05


Reply = Union[Body, EventStream, Chunks]


class FakeHandler(RequestHandler):
    """Base of the fake's endpoints: subclasses define `on_post` / `on_get` / `on_delete` (async, returning a reply)."""

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.closed = asyncio.Event()

    def on_connection_close(self) -> None:
        self.fake.connections_closed_early += 1
        self.closed.set()

    async def get(self, *args: str) -> None:
        await self._serve("get", args)

    async def post(self, *args: str) -> None:
        await self._serve("post", args)

    async def delete(self, *args: str) -> None:
        await self._serve("delete", args)

    async def put(self, *args: str) -> None:
        await self._serve("put", args)

    async def patch(self, *args: str) -> None:
        await self._serve("patch", args)

    def _record(self) -> None:
        request = self.request
        self.fake.requests.append(Seen(request.uri or request.path, dict(request.headers), request.body,
                                       id(request.connection.stream)))  # type: ignore[union-attr]

    async def _serve(self, method: str, args: tuple[str, ...]) -> None:
        fake, request = self.fake, self.request
        self._record()
        endpoint = getattr(self, f"on_{method}", None)
        if endpoint is None:
            self._error(FakeApiError(405, f"Invalid method for URL ({request.method} {request.path})."))
            return
        if not fake.admit(self):
            return
        if fake.valid_keys is not None and request.headers.get("Authorization", "")[7:] not in fake.valid_keys:
            self._error(FakeApiError(401, "Incorrect API key provided", code="invalid_api_key"))
            return
        try:
            call = self._parse(method, args)
        except FakeApiError as error:
            self._error(error)
            return
        cue = fake.model_cues.get(call.model) or fake.next_cue()
        if await follow_common_cue(self, cue):
            return
        try:
            reply = await endpoint(call, cue)
        except FakeApiError as error:
            self._error(error)
            return
        with contextlib.suppress(StreamClosedError):  # the client hung up: what some tests want
            await self._deliver(reply, cue)

    def _parse(self, method: str, args: tuple[str, ...]) -> Call:
        request = self.request
        query = {name: values[-1].decode() for name, values in request.query_arguments.items()}
        if request.headers.get("Content-Type", "").startswith("multipart/form-data"):
            form: dict[str, Any] = {}
            for name, values in request.body_arguments.items():
                texts = [value.decode("utf-8", "replace") for value in values]
                form[name] = texts[0] if len(texts) == 1 else texts
            return Call(method, form, query, request.files, args, multipart=True)
        payload: Any = {}
        if request.body:
            try:
                payload = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                raise invalid("We could not parse the JSON body of your request. The OpenAI API expects a JSON "
                              "payload.", None) from None
            if not isinstance(payload, dict):
                raise invalid("The request body must be a JSON object.", None)
        return Call(method, payload, query, {}, args)

    def _error(self, error: FakeApiError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.finish(error.body())

    async def _write(self, data: bytes, cue: Cue) -> None:
        step = cue.chunked_bytes or len(data) or 1
        for start in range(0, len(data), step):
            self.write(data[start:start + step])
            await self.flush()

    def _hang_up(self) -> None:
        self.request.connection.stream.close()  # type: ignore[union-attr]

    async def _deliver(self, reply: Reply, cue: Cue) -> None:
        if cue.mode == "malformed":
            self.set_header("Content-Type", "application/json")
            data = reply.data if isinstance(reply, Body) else b'{"object": "list", "data": [{"id": "x"}]}'
            self.finish(data[:len(data) // 2])
        elif isinstance(reply, Body):
            await self._body(reply, cue)
        elif isinstance(reply, EventStream):
            await self._events(reply, cue)
        else:
            await self._chunks(reply, cue)

    async def _body(self, reply: Body, cue: Cue) -> None:
        self.set_status(reply.status)
        self.set_header("Content-Type", reply.content_type)
        data = cue.body if cue.body is not None else reply.data
        half = len(data) // 2
        if cue.mode == "slow_json":
            await self._write(data[:half], cue)
            await asyncio.sleep(cue.interval)
            await self._write(data[half:], cue)
        elif cue.mode in ("cut", "stall_after"):
            self.set_header("Content-Length", str(len(data)))
            await self._write(data[:half], cue)
            if cue.mode == "cut":
                self._hang_up()
            else:
                await self.closed.wait()
            return
        elif cue.chunked_bytes:
            await self._write(data, cue)
        else:
            self.finish(data)  # with a Content-Length, as OpenAI sends small answers
            return
        self.finish()

    async def _events(self, reply: EventStream, cue: Cue) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        await self.flush()
        frames = reply.frames + ([] if cue.mode == "no_done" else reply.final)
        for index, frame in enumerate(frames):
            if cue.interval:
                await asyncio.sleep(cue.interval)
            if index == cue.after and cue.mode == "cut":
                self._hang_up()
                return
            if index == cue.after and cue.mode == "stall_after":
                await self.closed.wait()
                return
            if index == cue.after and cue.mode == "error_event":
                await self._write(reply.error_frame(index).encode(), cue)
                self.finish()
                return
            malformed = index == cue.after and cue.mode == "malformed_event"
            await self._write(frame.malformed() if malformed else frame.encode(), cue)
        self.finish()

    async def _chunks(self, reply: Chunks, cue: Cue) -> None:
        self.set_header("Content-Type", reply.content_type)
        await self.flush()
        for index, chunk in enumerate(reply.chunks):
            if index:
                await asyncio.sleep(cue.interval or reply.pause)
            if index == cue.after and cue.mode == "cut":
                self._hang_up()
                return
            if index == cue.after and cue.mode == "stall_after":
                await self.closed.wait()
                return
            await self._write(chunk, cue)
        self.finish()


class UnknownHandler(FakeHandler):
    """Any other path under /v1: OpenAI's 404 "Invalid URL"."""

    async def _serve(self, method: str, args: tuple[str, ...]) -> None:
        self._record()
        self._error(FakeApiError(404, f"Invalid URL ({self.request.method} {self.request.path})"))
