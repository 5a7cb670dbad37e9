"""Every scalar setting, declared once: config key, flag, env var, default, parser and help."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any, Generic, Optional, TypeVar

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


def parse_fraction(text: str) -> float:
    """A number above 0 and at most 1."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a number above 0 and at most 1, got {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"expected a number above 0 and at most 1, got {text!r}")
    return value


def parse_text(text: str) -> str:
    """Any text."""
    return str(text)


POOL_TYPES = ("balanced", "random", "least_busy", "capacity")
T = TypeVar("T")


@dataclass(frozen=True)
class Option(Generic[T]):
    """One scalar setting. `key` is its config-file key, dotted where the file nests it."""

    key: str
    default: T
    parse: Callable[[str], T]
    help: str
    group: str = "server"
    secret: bool = False
    restart: bool = False  # a reload cannot apply it (the listener, or the Redis connection): it says so

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


def option(default: T, parse: Callable[[str], T], help: str, group: str = "server", *,
           key: str = "", secret: bool = False, restart: bool = False) -> T:
    """Declare one setting in `Options`: its default, parser, help, group, and its dotted key if it nests.

    Typed as the setting's value so mypy checks every `settings.x` read; at run time it is the dataclass
    field that carries the declaration.
    """
    declared = {"key": key, "parse": parse, "help": help, "group": group, "secret": secret, "restart": restart}
    return field(default=default, metadata={"option": declared})


@dataclass
class Options:
    """Every scalar setting, with its type; the table that flags, env vars, file keys and help come from."""

    host: str = option("127.0.0.1", parse_text,
                       "Address to listen on. Use 0.0.0.0 (all IPv4) or :: to listen publicly.", restart=True)
    port: int = option(8080, parse_port, "TCP port to listen on (a number or a numeric string).", restart=True)
    pool_type: str = option(
        "balanced", one_of(*POOL_TYPES),
        "How an eligible controller is chosen: balanced (smooth weighted round robin), random (weighted), "
        "least_busy (fewest in flight per weight) or capacity (most headroom against its limits).",
        "routing", key="pool.type")
    max_attempts: int = option(
        3, parse_positive_int,
        "Upstream attempts per request before giving up (failover happens only before the first byte).",
        "routing")
    max_queue_wait: float = option(
        10.0, parse_seconds, "Seconds a request may wait for a controller with room before it gets 429.", "routing")
    max_queue_size: int = option(1000, parse_positive_int, "Requests that may wait at once; beyond it, 429 at once.",
                                 "routing")
    max_client_queue_share: float = option(
        0.5, parse_fraction,
        "The fraction of max_queue_size one client may fill when several clients are configured; beyond it that "
        "client gets 429 at once (1: no bound of its own).", "routing")
    default_completion_tokens: int = option(
        512, parse_positive_int,
        "Tokens reserved for the answer when a request sets no max_tokens (settled against usage).", "routing")
    cooldown_default: float = option(1.0, parse_seconds, "Cooldown after a 429 that names no reset time.", "routing")
    quota_disable_seconds: float = option(
        3600.0, parse_seconds, "How long a controller that ran out of quota (insufficient_quota) is disabled.",
        "routing")
    breaker_failures: int = option(
        5, parse_positive_int,
        "Consecutive 5xx or timeouts that eject a model on a controller (failures to connect: the whole controller).",
        "routing")
    breaker_ejection: float = option(
        5.0, parse_seconds, "First ejection in seconds; each further one doubles, up to breaker_max_ejection.",
        "routing")
    breaker_max_ejection: float = option(300.0, parse_seconds, "Longest ejection in seconds.", "routing")
    affinity_max_entries: int = option(
        1_000_000, parse_positive_int,
        "Owners of stored responses and conversations remembered in memory (the least recently used go first).",
        "routing")
    affinity_ttl: float = option(
        30 * 86400.0, parse_seconds,
        "Seconds an owner is remembered in Redis (OpenAI keeps stored responses 30 days).", "routing")
    retry_on_timeout: bool = option(
        False, parse_bool,
        "Send a request that timed out after it was sent to another controller (the first may still be working "
        "on it, and billing it).", "routing")
    retry_budget_ratio: float = option(
        0.2, parse_seconds, "Retries earned per request, so an outage of every key cannot multiply load.", "routing")
    retry_budget_per_second: float = option(
        5.0, parse_seconds, "Retries earned per second regardless of traffic.", "routing")
    reuse_port: bool = option(
        False, parse_bool, "Bind with SO_REUSEPORT so several processes (one per core) share one port.", "scale-out",
        restart=True)
    redis_url: Optional[Secret] = option(
        None, parse_secret,
        "Share rate-limit state between instances in this Redis (redis://host:6379/0). Unset: in memory.",
        "scale-out", secret=True, restart=True)
    redis_prefix: str = option("chatgpt-apiserver", parse_text, "Prefix of every Redis key (one per deployment).",
                               "scale-out", restart=True)
    redis_timeout: float = option(
        0.1, parse_seconds, "Seconds a request may wait on Redis before it counts as down.", "scale-out")
    redis_fallback: str = option(
        "local", one_of("local", "refuse"),
        "While Redis is down: local (each instance keeps 1/N of every limit) or refuse (503).", "scale-out")
    connect_timeout: float = option(10.0, parse_seconds, "Seconds to open a connection to an upstream.", "upstream")
    first_byte_timeout: float = option(
        120.0, parse_seconds,
        "Seconds from sending a streamed request until the upstream's response headers arrive (a non-streamed "
        "answer is bounded by request_timeout).", "upstream")
    stream_idle_timeout: float = option(
        120.0, parse_seconds, "Seconds allowed between two upstream reads (stream events or body chunks).",
        "upstream")
    request_timeout: float = option(
        600.0, parse_seconds, "Total seconds for a non-streaming upstream call. Streams are never cut by this.",
        "upstream")
    upstream_max_connections: int = option(
        1000, parse_positive_int, "Keep-alive connection pool size per controller.", "upstream")
    upstream_keepalive_timeout: float = option(
        30.0, parse_seconds, "Seconds an idle upstream connection stays in the pool; a reaper closes it after that.",
        "upstream")
    max_upstream_body_size: int = option(
        64 * 1024 * 1024, parse_positive_int,
        "Largest non-streamed upstream answer, in bytes after decompression; larger is a 502.", "upstream")
    max_event_size: int = option(
        16 * 1024 * 1024, parse_positive_int,
        "Largest server-sent event from an upstream, in bytes; larger ends the stream with the error event.",
        "upstream")
    max_body_size: int = option(
        32 * 1024 * 1024, parse_positive_int,
        "Largest request body accepted, in bytes; larger gets 413 (a declared length as soon as the headers "
        "arrive).")
    max_buffered_body_bytes: int = option(
        256 * 1024 * 1024, parse_positive_int,
        "Request body bytes held at once across all requests; a request past it gets 503 with Retry-After, a "
        "body larger than all of it 413.")
    max_header_size: int = option(
        64 * 1024, parse_positive_int, "Largest request head (request line and headers) in bytes; larger gets 431.")
    cors_origins: tuple[str, ...] = option(
        ("*",), parse_list,
        "Comma-separated origins allowed by CORS; * allows every origin; empty disables CORS headers.")
    client_keys: tuple[Secret, ...] = option(
        (), parse_secret_list,
        "Keys clients must send as 'Authorization: Bearer <key>' (comma-separated). None: no check.",
        "security", secret=True)
    client_keys_file: Optional[str] = option(
        None, parse_optional_path, "File with one client key per line (blank lines and # comments ignored).",
        "security")
    admin_key: Optional[Secret] = option(
        None, parse_secret,
        "Key for /admin/* and /metrics. Unset: those routes take a client key (or are open without keys).",
        "security", secret=True)
    allow_unauthenticated: bool = option(
        False, parse_bool, "Allow listening on a non-loopback address without client keys.", "security")
    max_concurrent_requests: int = option(
        10000, parse_positive_int, "Requests handled at once; beyond it, 503 with Retry-After.")
    client_idle_timeout: float = option(
        75.0, parse_seconds, "Seconds an idle client connection (or one still sending its headers) is kept.")
    client_body_timeout: float = option(
        30.0, parse_seconds, "Seconds a client may take to send its request body; slower gets 408.")
    client_write_timeout: float = option(
        60.0, parse_seconds,
        "Seconds a client may accept no bytes of an answer we have for it before it is disconnected.")
    shutdown_timeout: float = option(
        30.0, parse_seconds, "Seconds to let in-flight requests and streams finish after SIGTERM.")
    state_dir: Optional[str] = option(
        None, parse_optional_path,
        "Directory for state that outlives a restart without Redis: clients' usage, budgets and buckets "
        "(clients.json, written every few seconds and at shutdown). Unset: kept in memory only.", restart=True)
    access_log: bool = option(True, parse_bool, "Log one line per request.", "logging")
    log_level: str = option("info", one_of("debug", "info", "warning", "error"), "Log level.", "logging")
    log_format: str = option("text", one_of("text", "json"), "Log format: text or json.", "logging")


def _declared(item: Field[Any]) -> Option[Any]:
    declared = item.metadata["option"]
    return Option(declared["key"] or item.name, item.default, declared["parse"], declared["help"],
                  declared["group"], declared["secret"], declared["restart"])


OPTIONS: tuple[Option[Any], ...] = tuple(_declared(item) for item in fields(Options))
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}
