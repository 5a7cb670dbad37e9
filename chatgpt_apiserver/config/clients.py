"""Client entries (`clients`, and the plain `client_keys`) and the `prices` table, validated (no I/O but key files).

A client's key is held only as its SHA-256 digest: `key`, `key_env` and `key_file` are hashed as they are
read, `key_sha256` is the digest already. Neither the key nor the digest is ever printed: `ClientSpec`'s
repr leaves the digest out, and errors name the entry, never its key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Optional

import voluptuous as vol

from ..auth import key_digest
from ..secret import Secret
from .controllers import _report  # one wording of voluptuous errors for every entry
from .files import resolve

PLAIN_PREFIX = "key-"  # the plain client_keys are clients named key-1, key-2, ... by their place in the list
NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")  # safe as a metric label, a header value and a Redis hash tag
PRIORITIES = ("interactive", "batch")
PERIODS = ("day", "month")
KEY_FIELDS = ("key", "key_sha256", "key_env", "key_file")
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")  # gpt-4o-2024-08-06, gpt-4-0613: dated snapshots


def snapshot_of(model: str) -> Optional[str]:
    """The model a dated snapshot name is of (`gpt-4o-2024-08-06`: `gpt-4o`; the older `gpt-4-0613`:
    `gpt-4`), or None. A model's price and a client's `model_limits` for it apply to its snapshots too."""
    return _SNAPSHOT.sub("", model) if _SNAPSHOT.search(model) else None


@dataclass(frozen=True)
class RateLimit:
    """Requests and tokens per minute (None: unlimited)."""

    rpm: Optional[float] = None
    tpm: Optional[float] = None


def usd(value: float) -> str:
    """Dollars for people: cents ($40.00, $0.24), or three significant digits below a dollar ($0.00001)."""
    decimals = 2
    if value and abs(value) < 1:
        decimals = min(9, max(2, 2 - math.floor(math.log10(abs(value)))))
    whole, _, fraction = f"{value:,.{decimals}f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def plain(value: float) -> str:
    """A configured number as written: integers without an exponent (2000000, not 2e+06)."""
    return str(int(value)) if value == int(value) else repr(float(value))


@dataclass(frozen=True)
class Budget:
    """What a client may spend per UTC calendar period: tokens and/or US dollars."""

    period: str = "month"
    tokens: Optional[int] = None
    usd: Optional[float] = None


@dataclass(frozen=True)
class ClientSpec:
    """One validated client: who it is (by key digest), its limits, its queueing class and its budget."""

    name: str
    digest: bytes = field(repr=False)  # never shown: a digest identifies a key as well as the key does
    key_source: str = ""  # where the key came from, for --check-config (never the key)
    priority: str = "interactive"
    share: float = 1.0
    limits: RateLimit = field(default_factory=RateLimit)
    max_concurrency: Optional[int] = None
    models: Optional[frozenset[str]] = None  # the allow-list; None: every model
    model_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    budget: Optional[Budget] = None

    @property
    def named(self) -> bool:
        """Whether it is an entry of `clients` (not one of the plain `client_keys`)."""
        return self.key_source != "client_keys"

    @property
    def limited(self) -> bool:
        """Whether the client has rate limits of its own (its answers then carry x-ratelimit-* headers)."""
        return bool(self.limits.rpm or self.limits.tpm or self.model_limits)

    def same_limits(self, other: ClientSpec) -> bool:
        """Whether `other` has the same buckets (a reload keeps their levels either way)."""
        return self.limits == other.limits and dict(self.model_limits) == dict(other.model_limits)


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens; `cached_input` defaults to `input`, `output` to 0 (embeddings)."""

    input: float
    cached_input: Optional[float] = None
    output: float = 0.0


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise vol.Invalid(f"must be a positive number, got {value!r}")
    return float(value)


def _amount(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise vol.Invalid(f"must be a number of at least 0, got {value!r}")
    return float(value)


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise vol.Invalid(f"must be a whole number of at least 1, got {value!r}")
    return value


def _model_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise vol.Invalid("expected a model name")
    return value


def _models(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise vol.Invalid("expected a non-empty list of model names")
    return frozenset(_model_name(item) for item in value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise vol.Invalid("expected 1-64 letters, digits or _.:@- (the name is a metric label)")
    if value.startswith(PLAIN_PREFIX):
        raise vol.Invalid(f"{value!r}: names starting with {PLAIN_PREFIX!r} are reserved for the plain client_keys "
                          f"({PLAIN_PREFIX}1 is the first of them, {PLAIN_PREFIX}2 the second, ...)")
    return value


def _digest_hex(value: Any) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise vol.Invalid("expected the key's SHA-256 digest: 64 hex digits (chatgpt-apiserver --hash-key prints it)")
    return bytes.fromhex(value.strip())


_LIMIT = vol.Schema({vol.Optional("rpm"): _positive, vol.Optional("tpm"): _positive})


def _budget(value: Any) -> Budget:
    if not isinstance(value, dict):
        raise vol.Invalid('expected {"tokens": n, "usd": x, "period": "day" or "month"}')
    checked = vol.Schema({vol.Optional("tokens"): _whole, vol.Optional("usd"): _positive,
                          vol.Optional("period"): vol.In(PERIODS, msg="expected day or month")})(value)
    if "tokens" not in checked and "usd" not in checked:
        raise vol.Invalid("give tokens, usd or both")
    return Budget(checked.get("period", "month"), checked.get("tokens"), checked.get("usd"))


ENTRY = vol.Schema({
    vol.Required("name"): _name,
    vol.Optional("key"): str,
    vol.Optional("key_sha256"): str,
    vol.Optional("key_env"): str,
    vol.Optional("key_file"): str,
    vol.Optional("priority"): vol.In(PRIORITIES, msg="expected interactive or batch"),
    vol.Optional("share"): _positive,
    vol.Optional("rpm"): _positive,
    vol.Optional("tpm"): _positive,
    vol.Optional("max_concurrency"): _whole,
    vol.Optional("models"): _models,
    vol.Optional("model_limits"): {_model_name: _LIMIT},
    vol.Optional("budget"): _budget,
})

PRICE = vol.Schema({vol.Required("input"): _amount, vol.Optional("cached_input"): _amount,
                    vol.Optional("output"): _amount})


@dataclass
class _Reader:
    """Reads the keys of client entries, reporting problems in the config's words."""

    base: Path
    where: str
    env: Mapping[str, str]
    problems: list[str]

    def digest(self, entry: Mapping[str, Any], prefix: str) -> tuple[Optional[bytes], str]:
        given = [name for name in KEY_FIELDS if name in entry]
        if len(given) != 1:
            what = "is missing" if not given else f"is given {len(given)} ways ({', '.join(given)})"
            self.problems.append(f"{prefix}.key in {self.where}: the key {what}; set exactly one of "
                                 f"{', '.join(KEY_FIELDS)}")
            return None, ""
        how = given[0]
        value = entry[how]
        if how == "key_sha256":
            try:
                return _digest_hex(value), f"{prefix}.key_sha256 in {self.where}"
            except vol.Invalid as error:
                self.problems.append(f"{prefix}.key_sha256 in {self.where}: {error.msg}")
                return None, ""
        if how == "key":
            key, source = str(value).strip(), f"{prefix}.key in {self.where}"
        elif how == "key_env":
            key, source = self.env.get(str(value), "").strip(), f"env {value}"
            if not key:
                self.problems.append(f"{prefix}.key_env in {self.where}: env var {value} is not set or empty")
                return None, ""
        else:
            path = resolve(self.base, Template(str(value)).safe_substitute(self.env))
            try:
                key = path.read_text().strip()
            except OSError as exc:
                self.problems.append(f"{prefix}.key_file in {self.where}: cannot read {path}: {exc.strerror}")
                return None, ""
            source = f"file {path}"
        if not key:
            self.problems.append(f"{prefix}.{how} in {self.where}: the key is empty")
            return None, ""
        return key_digest(key), source


def build_clients(entries: Any, plain_keys: Sequence[Secret], base: Path, where: str, env: Mapping[str, str],
                  problems: list[str]) -> list[ClientSpec]:
    """Validate the `clients` list; each plain client key becomes a client with no limits (key-1, key-2, ...).

    Every problem is appended to `problems`, naming the entry but never its key.
    """
    reader = _Reader(base, where, env, problems)
    specs: list[ClientSpec] = []
    names: dict[str, str] = {}
    keys: dict[bytes, str] = {}

    def add(spec: ClientSpec, prefix: str) -> None:
        if spec.name in names:
            problems.append(f"{prefix}.name in {where}: {spec.name!r} is already used by {names[spec.name]}")
        elif spec.digest in keys:
            problems.append(f"{prefix} in {where}: its key is already the key of {keys[spec.digest]}")
        else:
            names[spec.name] = prefix
            keys[spec.digest] = prefix
            specs.append(spec)

    if entries is not None and not isinstance(entries, list):
        problems.append(f"clients in {where}: expected a list of client entries")
        entries = []
    for index, raw in enumerate(entries or []):
        prefix = f"clients[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{prefix} in {where}: expected an object with a name and a key")
            continue
        try:
            entry = ENTRY({k: v for k, v in raw.items() if not str(k).startswith("_")})
        except vol.MultipleInvalid as errors:
            _report(errors, prefix, where, problems)
            continue
        digest, source = reader.digest(entry, prefix)
        if digest is None:
            continue
        model_limits = {model: RateLimit(limit.get("rpm"), limit.get("tpm"))
                        for model, limit in entry.get("model_limits", {}).items()}
        models = entry.get("models")
        if models is not None:
            outside = sorted(set(model_limits) - models)
            if outside:
                problems.append(f"{prefix}.model_limits in {where}: {', '.join(outside)} not in its models")
                continue
        add(ClientSpec(entry["name"], digest, source, entry.get("priority", "interactive"), entry.get("share", 1.0),
                       RateLimit(entry.get("rpm"), entry.get("tpm")), entry.get("max_concurrency"), models,
                       model_limits, entry.get("budget")), prefix)
    for index, key in enumerate(plain_keys):
        add(ClientSpec(f"{PLAIN_PREFIX}{index + 1}", key_digest(key.reveal()), "client_keys"), f"client_keys[{index}]")
    return specs


def build_prices(document: Any, where: str, problems: list[str]) -> dict[str, Price]:
    """Validate a `prices` table: model -> {input, cached_input, output} in USD per million tokens."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.append(f"prices in {where}: expected an object of model name -> {{input, cached_input, output}}")
        return {}
    prices: dict[str, Price] = {}
    for model, raw in document.items():
        if str(model).startswith("_"):
            continue
        try:
            entry = PRICE(raw)
        except vol.MultipleInvalid as errors:
            for error in errors.errors:
                path = ".".join(str(part) for part in error.path)
                problems.append(f"prices.{model}{'.' + path if path else ''} in {where}: {error.error_message}")
            continue
        prices[str(model)] = Price(entry["input"], entry.get("cached_input"), entry.get("output", 0.0))
    return prices
