"""How a request reaches its handler: admitted on its headers, its method run once the body is in.

Tornado's `stream_request_body` does that with two turns of the event loop per request more than a handler
that reads its body whole: `headers_received` starts the handler's task and waits for its prepare() before
reading the body, and the task then waits for the body. Each wait suspends until the next turn.

Here the handler's own `_execute` (Tornado's, unchanged) runs inside `headers_received` until its first
wait: prepare() has admitted the request or answered it, and the handler waits for its body. The body is
then read at once, and a task takes `_execute` on from that wait once the body is in, when it no longer
suspends. One turn per request (the task's start), as without `stream_request_body`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine
from typing import Any, Optional, Union

from tornado.concurrent import future_set_result_unless_cancelled
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine, ResponseStartLine
from tornado.web import Application, ErrorHandler, RequestHandler, _HandlerDelegate, _has_stream_request_body


class GatewayApplication(Application):
    """Tornado's Application, serving `stream_request_body` handlers whose prepare() is a plain method through
    `AdmitOnHeaders`. A coroutine prepare() keeps Tornado's delegate: it would otherwise start outside a task of
    its own, in the connection's read (where `asyncio.timeout` or `current_task()` would not be the request's).

    A path's route is remembered once found, for routes that take nothing from the path: Tornado tries each
    route's regex in turn, through two routers, on every request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A path -> its handler and arguments. Emptied when full; unknown paths (the default handler) stay out.
        self._routes: dict[str, tuple[type[RequestHandler], dict[str, Any]]] = {}

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> _HandlerDelegate:
        path = request.path
        known = self._routes.get(path)
        if known is not None:
            return self.get_handler_delegate(request, known[0], known[1])
        delegate = super().find_handler(request, **kwargs)
        if (not delegate.path_args and not delegate.path_kwargs and len(path) <= ROUTE_PATH_LONGEST
                and delegate.handler_class not in (self.settings.get("default_handler_class"), ErrorHandler)):
            if len(self._routes) >= ROUTES_KEPT:
                self._routes.clear()
            self._routes[path] = (delegate.handler_class, delegate.handler_kwargs)
        return delegate

    def get_handler_delegate(self, request: HTTPServerRequest, target_class: type[RequestHandler],
                             target_kwargs: Optional[dict[str, Any]] = None, path_args: Optional[list[bytes]] = None,
                             path_kwargs: Optional[dict[str, bytes]] = None) -> _HandlerDelegate:
        delegate = AdmitOnHeaders if _admits_on_headers(target_class) else _HandlerDelegate
        return delegate(self, request, target_class, target_kwargs, path_args, path_kwargs)


ROUTES_KEPT = 256  # paths whose route is remembered
ROUTE_PATH_LONGEST = 200
_ADMITS: dict[type[RequestHandler], bool] = {}  # per handler class (the route table's: a fixed few)


def _admits_on_headers(handler_class: type[RequestHandler]) -> bool:
    admits = _ADMITS.get(handler_class)
    if admits is None:
        admits = _ADMITS[handler_class] = (_has_stream_request_body(handler_class)
                                           and not inspect.iscoroutinefunction(handler_class.prepare))
    return admits


class AdmitOnHeaders(_HandlerDelegate):
    """A `stream_request_body` handler's request: `_execute` runs on the headers until it waits (normally for
    the body), and a task resumes it once what it waits for is done."""

    _parked: Optional[tuple[Coroutine[Any, Any, None], Any]] = None  # `_execute`, and what it waits for

    def headers_received(self, start_line: Union[RequestStartLine, ResponseStartLine],
                         headers: HTTPHeaders) -> Optional[asyncio.Future[None]]:
        self.request._body_future = asyncio.Future()  # (Tornado's handler fails it if the client goes away)
        self.handler = handler = self.handler_class(self.application, self.request, **self.handler_kwargs)
        transforms = [transform(self.request) for transform in self.application.transforms]
        execute = handler._execute(transforms, *self.path_args, **self.path_kwargs)
        try:
            awaited = execute.send(None)
        except StopIteration:
            return None  # answered on its headers (a refusal): nothing waits for the body
        self._parked = (execute, awaited)
        if awaited is self.request._body_future:
            return None
        # An async prepare() waiting for something of its own: resumed when that is done, and the body is read
        # only once prepare() is over, as Tornado does (`_execute` resolves `_prepared_future` then).
        prepared: asyncio.Future[None] = asyncio.Future()
        handler._prepared_future = prepared  # type: ignore[assignment]  # (Tornado types it as always None)
        if isinstance(awaited, asyncio.Future):
            awaited.add_done_callback(self._resume)
        else:
            asyncio.get_running_loop().call_soon(self._resume)
        return prepared

    def finish(self) -> None:
        future_set_result_unless_cancelled(self.request._body_future, None)
        self._resume()

    def on_connection_close(self) -> None:
        super().on_connection_close()  # the handler's: it fails the body's future if the body is still coming
        self._resume()

    def _resume(self, _: object = None) -> None:
        """Hand the parked `_execute` to a task, once what it waits for is done (`None`: a bare yield)."""
        if self._parked is None:
            return
        execute, awaited = self._parked
        if isinstance(awaited, asyncio.Future) and not awaited.done():
            return  # its own done callback, or the end of the body, comes back here
        self._parked = None
        task = asyncio.ensure_future(execute)
        task.add_done_callback(_reraise)  # as Tornado's: an exception escaping `_execute` is logged


def _reraise(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.result()
