"""Every scalar setting, declared once: config key, flag, env var, default, parser and help."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from ..secret import Secret

ENV_PREFIX = "CHATGPT_APISERVER_"


def parse_port(text: str) -> int:
    """A TCP port, given as a number or a numeric string."""
    try:
        port = int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return port


def parse_seconds(text: str) -> float:
    """A positive duration in seconds."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return value


def parse_positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value}")
    return value


def parse_bool(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_list(text: str) -> tuple[str, ...]:
    """A comma-separated list."""
    return tuple(item.strip() for item in str(text).split(",") if item.strip())


def parse_secret_list(text: str) -> tuple[Secret, ...]:
    """A comma-separated list of keys, each held as a Secret."""
    return tuple(Secret(item) for item in parse_list(text))


def parse_secret(text: str) -> Optional[Secret]:
    """One key, held as a Secret (empty means none)."""
    value = str(text).strip()
    return Secret(value) if value else None


def parse_optional_path(text: str) -> Optional[str]:
    """A file path, or nothing."""
    value = str(text).strip()
    return value or None


def one_of(*choices: str) -> Callable[[str], str]:
    """A parser accepting one of `choices`, case-insensitively."""

    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    parse.__doc__ = f"One of: {', '.join(choices)}."
    return parse


def parse_text(text: str) -> str:
    """Any text."""
    return str(text)


POOL_TYPES = ("balanced", "random", "least_busy", "capacity")


@dataclass(frozen=True)
class Option:
    """One scalar setting. `key` is its config-file key, dotted where the file nests it."""

    key: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    group: str = "server"
    secret: bool = False

    @property
    def dest(self) -> str:
        """The attribute name on the settings object."""
        return self.key.replace(".", "_")

    @property
    def flags(self) -> tuple[str, ...]:
        """`--pool-type`, plus the underscore spelling `--pool_type` the original used."""
        dashed = "--" + self.dest.replace("_", "-")
        under = "--" + self.dest
        return (dashed,) if dashed == under else (dashed, under)

    @property
    def env(self) -> str:
        """`CHATGPT_APISERVER_POOL_TYPE`."""
        return ENV_PREFIX + self.dest.upper()


OPTIONS: tuple[Option, ...] = (
    Option("host", "127.0.0.1", parse_text,
           "Address to listen on. Use 0.0.0.0 (all IPv4) or :: to listen publicly."),
    Option("port", 8080, parse_port, "TCP port to listen on (a number or a numeric string)."),
    Option("pool.type", "balanced", one_of(*POOL_TYPES),
           "How an eligible controller is chosen: balanced (smooth weighted round robin), random (weighted), "
           "least_busy (fewest in flight per weight) or capacity (most headroom against its limits).",
           "routing"),
    Option("max_attempts", 3, parse_positive_int,
           "Upstream attempts per request before giving up (failover happens only before the first byte).",
           "routing"),
    Option("max_queue_wait", 10.0, parse_seconds,
           "Seconds a request may wait for a controller with room before it gets 429.", "routing"),
    Option("max_queue_size", 1000, parse_positive_int,
           "Requests that may wait at once; beyond it, 429 at once.", "routing"),
    Option("default_completion_tokens", 512, parse_positive_int,
           "Tokens reserved for the answer when a request sets no max_tokens (settled against usage).", "routing"),
    Option("cooldown_default", 1.0, parse_seconds,
           "Cooldown after a 429 that names no reset time.", "routing"),
    Option("quota_disable_seconds", 3600.0, parse_seconds,
           "How long a controller that ran out of quota (insufficient_quota) is disabled.", "routing"),
    Option("breaker_failures", 5, parse_positive_int,
           "Consecutive 5xx, connection errors or timeouts that eject a controller.", "routing"),
    Option("breaker_ejection", 5.0, parse_seconds,
           "First ejection in seconds; each further one doubles, up to breaker_max_ejection.", "routing"),
    Option("breaker_max_ejection", 300.0, parse_seconds, "Longest ejection in seconds.", "routing"),
    Option("retry_budget_ratio", 0.2, parse_seconds,
           "Retries earned per request, so an outage of every key cannot multiply load.", "routing"),
    Option("retry_budget_per_second", 5.0, parse_seconds,
           "Retries earned per second regardless of traffic.", "routing"),
    Option("reuse_port", False, parse_bool,
           "Bind with SO_REUSEPORT so several processes (one per core) share one port.", "scale-out"),
    Option("redis_url", None, parse_secret,
           "Share rate-limit state between instances in this Redis (redis://host:6379/0). Unset: in memory.",
           "scale-out", secret=True),
    Option("redis_prefix", "chatgpt-apiserver", parse_text, "Prefix of every Redis key (one per deployment).",
           "scale-out"),
    Option("redis_timeout", 0.1, parse_seconds, "Seconds a request may wait on Redis before it counts as down.",
           "scale-out"),
    Option("redis_fallback", "local", one_of("local", "refuse"),
           "While Redis is down: local (each instance keeps 1/N of every limit) or refuse (503).", "scale-out"),
    Option("connect_timeout", 10.0, parse_seconds, "Seconds to open a connection to an upstream.", "upstream"),
    Option("first_byte_timeout", 120.0, parse_seconds,
           "Seconds from sending a request until the upstream's response headers arrive.", "upstream"),
    Option("stream_idle_timeout", 120.0, parse_seconds,
           "Seconds allowed between two upstream reads (stream events or body chunks).", "upstream"),
    Option("request_timeout", 600.0, parse_seconds,
           "Total seconds for a non-streaming upstream call. Streams are never cut by this.", "upstream"),
    Option("upstream_max_connections", 1000, parse_positive_int,
           "Keep-alive connection pool size per controller.", "upstream"),
    Option("upstream_keepalive_timeout", 30.0, parse_seconds,
           "Seconds an idle upstream connection stays in the pool; a reaper closes it after that.", "upstream"),
    Option("max_upstream_body_size", 64 * 1024 * 1024, parse_positive_int,
           "Largest non-streamed upstream answer, in bytes after decompression; larger is a 502.", "upstream"),
    Option("max_event_size", 16 * 1024 * 1024, parse_positive_int,
           "Largest server-sent event from an upstream, in bytes; larger ends the stream with the error event.",
           "upstream"),
    Option("max_body_size", 32 * 1024 * 1024, parse_positive_int,
           "Largest request body accepted, in bytes; larger gets 413.", "server"),
    Option("cors_origins", ("*",), parse_list,
           "Comma-separated origins allowed by CORS; * allows every origin; empty disables CORS headers.",
           "server"),
    Option("client_keys", (), parse_secret_list,
           "Keys clients must send as 'Authorization: Bearer <key>' (comma-separated). None: no check.",
           "security", secret=True),
    Option("client_keys_file", None, parse_optional_path,
           "File with one client key per line (blank lines and # comments ignored).", "security"),
    Option("admin_key", None, parse_secret,
           "Key for /admin/* and /metrics. Unset: those routes take a client key (or are open without keys).",
           "security", secret=True),
    Option("allow_unauthenticated", False, parse_bool,
           "Allow listening on a non-loopback address without client keys.", "security"),
    Option("max_concurrent_requests", 10000, parse_positive_int,
           "Requests handled at once; beyond it, 503 with Retry-After.", "server"),
    Option("client_idle_timeout", 75.0, parse_seconds,
           "Seconds an idle client connection (or one still sending its headers) is kept.", "server"),
    Option("client_body_timeout", 30.0, parse_seconds,
           "Seconds a client may take to send its request body.", "server"),
    Option("client_write_timeout", 60.0, parse_seconds,
           "Seconds a client may accept no bytes of an answer we have for it before it is disconnected.",
           "server"),
    Option("shutdown_timeout", 30.0, parse_seconds,
           "Seconds to let in-flight requests and streams finish after SIGTERM.", "server"),
    Option("access_log", True, parse_bool, "Log one line per request.", "logging"),
    Option("log_level", "info", one_of("debug", "info", "warning", "error"), "Log level.", "logging"),
    Option("log_format", "text", one_of("text", "json"), "Log format: text or json.", "logging"),
)

OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}
