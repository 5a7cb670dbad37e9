"""Errors as values: a public message in OpenAI's shape, and a private detail for the log."""

from __future__ import annotations

from typing import Optional

import orjson

# OpenAI's error `type` for each status we produce.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error the client sees as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: Optional[str] = None,
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
        detail: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}
        # Private: goes to the log only.
        self.detail = detail
        self.attempts = 0  # upstream attempts made before this answer, and the last controller tried
        self.controller = ""

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"

    def body(self) -> bytes:
        """The JSON body in OpenAI's error shape."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> bytes:
    """Encode OpenAI's error shape."""
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def stream_error_event(message: str, type: str = "server_error", code: Optional[str] = None) -> bytes:
    """The final SSE event that tells a streaming client the answer is incomplete."""
    return b"data: " + error_body(message, type, None, code) + b"\n\n"


def typed_error_event(message: str, code: Optional[str] = None) -> bytes:
    """The final event of a typed stream (responses, audio, images) that broke: OpenAI's `error` event, with
    the `error` object too, so the SDKs raise it as they do for chat's."""
    data = {"type": "error", "code": code, "message": message, "param": None,
            "error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def invalid_request(message: str, param: Optional[str] = None, code: Optional[str] = "invalid_value") -> ApiError:
    """A 400 naming the field at fault."""
    return ApiError(400, message, param=param, code=code)
