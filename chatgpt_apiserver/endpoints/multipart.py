"""multipart/form-data bodies (audio, image edits): read the text fields, and rename the model in place.

The body is relayed as received: only a model alias rewrites the one `model` part's value. Parsing is
Tornado's own (`tornado.httputil.parse_body_arguments`), the parser of every Tornado server.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from ..errors import ApiError, invalid_request

_BOUNDARY = re.compile(r'boundary="?([^";,]+)"?', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
MAX_TEXT_FIELD = 1024 * 1024  # a text field larger than this is not a setting: it is kept as bytes, unread


class _Captured(logging.Handler):
    """Tornado logs a malformed form instead of raising; this turns that into a client error."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, list[str]], set[str]]:
    """The text fields (every value of each) and the names of the file parts; 400 if it is malformed."""
    if not _BOUNDARY.search(content_type):
        raise invalid_request("A multipart/form-data request needs a boundary in its Content-Type.",
                              code="invalid_multipart")
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[HTTPFile]] = {}
    captured = _Captured()
    general = logging.getLogger("tornado.general")
    general.addHandler(captured)
    propagate, general.propagate = general.propagate, False
    try:
        parse_body_arguments(content_type, body, arguments, files)
    except (HTTPInputError, UnicodeDecodeError, ValueError):  # Tornado 6.5+ raises where 6.4 logged
        captured.messages.append("malformed")
    finally:
        general.removeHandler(captured)
        general.propagate = propagate
    if captured.messages or (body.strip() and not arguments and not files):
        raise invalid_request("The multipart/form-data body is malformed.", code="invalid_multipart")
    fields = {name: [value.decode("utf-8", "replace") for value in values if len(value) <= MAX_TEXT_FIELD]
              for name, values in arguments.items()}
    return fields, set(files)


def replace_field(content_type: str, body: bytes, name: str, value: str) -> bytes:
    """The body with the text field `name` set to `value` (a model alias) in every part that holds it (a form
    may repeat a field with one value); every other byte as it was."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        return body
    delimiter = b"--" + found.group(1).encode()
    parts = body.split(delimiter)
    for index, part in enumerate(parts):
        head_end = part.find(b"\r\n\r\n")
        if head_end < 0:
            continue
        head = part[:head_end]
        field = _NAME.search(head)
        if field is None or field.group(1) != name.encode() or b"filename=" in head.lower():
            continue
        tail = b"\r\n" if part.endswith(b"\r\n") else b""
        parts[index] = head + b"\r\n\r\n" + value.encode() + tail
    return delimiter.join(parts)


def form_value(fields: dict[str, list[str]], name: str) -> Optional[str]:
    """The first value of a text field."""
    values = fields.get(name)
    return values[0] if values else None


def require_text(fields: dict[str, list[str]], name: str) -> str:
    """A text field the request cannot do without."""
    value = form_value(fields, name)
    if not value:
        raise ApiError(400, f"Invalid '{name}': is required.", param=name, code="invalid_value")
    return value
