"""What the transport sends: an endpoint-generic request, the upstream it goes to, and the bytes of its head."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# Headers the transport writes itself: a caller setting one would break the framing or the hop.
TRANSPORT_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
    "proxy-connection", "proxy-authorization", "accept-encoding",
})
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # what may not appear in a request target


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to an upstream, relative to its base URL; the same shape for every OpenAI endpoint."""

    method: str  # GET, POST, DELETE, ...
    path: str  # relative to the base URL, with its own query if any: "/chat/completions", "/files?purpose=batch"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()  # per request, e.g. a multipart Content-Type with its boundary
    stream: bool = False  # the answer streams: asked for uncompressed, read with read_chunk()
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a base URL points: scheme, host and port, the path prefix, and a query kept on every request."""

    scheme: str
    host: str
    port: int
    prefix: str  # "/v1", never ending in "/"
    query: str  # "api-version=2024-06-01", or ""

    @classmethod
    def parse(cls, url: str) -> Origin:
        """The origin of an http:// or https:// URL (checked when the config was read)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {parts.scheme or 'no'} scheme")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, parts.port or default, parts.path.rstrip("/"), parts.query)

    @property
    def tls(self) -> bool:
        """Whether the upstream speaks TLS."""
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """host[:port] as the Host header and a CONNECT request name it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"

    def target(self, path: str) -> str:
        """The origin-form request target for `path`: the prefix, then the path, the queries merged."""
        if not path.startswith("/") or _UNSAFE.search(path):
            raise ValueError(f"not a request path: {path!r}")
        if not self.query:
            return self.prefix + path
        path, _, query = path.partition("?")
        return f"{self.prefix}{path}?{self.query}&{query}" if query else f"{self.prefix}{path}?{self.query}"

    def absolute(self, path: str) -> str:
        """The absolute-form request target, as a plain-HTTP proxy takes it."""
        return f"{self.scheme}://{self.authority}{self.target(path)}"


@functools.lru_cache(maxsize=64)
def header_block(headers: tuple[tuple[str, str], ...]) -> bytes:
    """Encode header lines, refusing names the transport owns and values that could split the head.

    Cached: an endpoint sends the same few headers on every request.
    """
    lines = []
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"not an HTTP header name: {name!r}")
        if name.lower() in TRANSPORT_HEADERS:
            raise ValueError(f"the {name} header is set by the transport")
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"the value of the {name} header contains a line break")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")
