"""Helpers for driving a fake upstream directly: the official SDK, strict schema checks and raw HTTP."""

from __future__ import annotations

import http.client
import secrets
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import orjson
from openai import OpenAI
from pydantic import BaseModel, TypeAdapter

from .fake_upstream import FakeUpstream

M = TypeVar("M", bound=BaseModel)


Sdk = Callable[..., OpenAI]  # the `sdk` fixture (conftest.py): sdk(fake, timeout=..., api_key=...)


def client_for(fake: FakeUpstream, timeout: float = 10.0, api_key: str = "sk-test-fake") -> OpenAI:
    """The official sync client pointed at `fake`, without retries (each request meets exactly one cue)."""
    return OpenAI(api_key=api_key, base_url=fake.base_url, max_retries=0, timeout=timeout)


def strict(model: type[M], data: Any) -> M:
    """Validate `data` against an SDK type for real (the SDK's own parse accepts anything)."""
    return model.model_validate(data)


def strict_event(union: Any, event: Any) -> Any:
    """Validate one parsed stream event against the SDK's event union."""
    return TypeAdapter(union).validate_python(event.to_dict())


def raw(fake: FakeUpstream, method: str, path: str, body: Any = None, headers: Optional[dict[str, str]] = None,
        timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request to the fake: (status, lower-cased headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else orjson.dumps(body)
    try:
        connection.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = secrets.token_hex(8)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
