"""Controller entries from the config file, validated into `ControllerSpec`s (no network here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import voluptuous as vol

from ..secret import Secret
from .azure import AZURE_SETTINGS, finish_azure
from .files import ConfigError, load, resolve
from .values import (
    KEY_SETTINGS,
    Finished,
    NonEmpty,
    Place,
    api_key_of,
    header_name,
    join_key,
    proxy_url,
    secret_text,
    url,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Limits:
    """A controller's configured limits; None means unlimited."""

    rpm: Optional[float] = None
    tpm: Optional[float] = None
    max_concurrency: Optional[int] = None
    request_burst: Optional[float] = None
    token_burst: Optional[float] = None



def _weight(value: Any) -> int:
    """The original's weight rule: missing or 0 means 1; a numeric string is accepted."""
    if isinstance(value, bool):
        raise vol.Invalid("expected a whole number")
    if value is None:
        return 1
    try:
        number = int(str(value).strip())
    except ValueError:
        raise vol.Invalid(f"expected a whole number, got {value!r}") from None
    if number < 0:
        raise vol.Invalid(f"must not be negative, got {number}")
    return number or 1


def _models(value: Any) -> dict[str, str]:
    """A list of model names, or a map of public name -> upstream name."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        if not all(isinstance(item, str) and item for item in value):
            raise vol.Invalid("expected a list of model names")
        return {name: name for name in value}
    if isinstance(value, dict):
        if not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
            raise vol.Invalid("expected a map of public model name to upstream model name")
        return dict(value)
    raise vol.Invalid("expected a list of model names or a map of aliases")


_Seconds = vol.All(vol.Coerce(float), vol.Range(min=0))

_PerMinute = vol.All(vol.Coerce(float), vol.Range(min=0.001, msg="must be a positive number"))


def _burst(value: Any) -> dict[str, float]:
    """A number (the request bucket's burst) or {"requests": n, "tokens": m}."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return {"requests": float(value)}
    if isinstance(value, dict) and value and set(value) <= {"requests", "tokens"} and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value.values()):
        return {k: float(v) for k, v in value.items()}
    raise vol.Invalid('expected a positive number or {"requests": n, "tokens": m}')


ENTRY = vol.Schema({
    vol.Required("type"): NonEmpty,
    vol.Optional("name"): vol.All(NonEmpty, vol.Match(r"^[A-Za-z0-9_.:@/-]+$",
                                                        msg="use letters, digits and _.:@/- only")),
    vol.Optional("weight"): _weight,
    vol.Optional("models"): _models,
    vol.Optional("config"): dict,
    vol.Optional("config_file"): NonEmpty,
    vol.Optional("rpm"): _PerMinute,
    vol.Optional("tpm"): _PerMinute,
    vol.Optional("max_concurrency"): vol.All(int, vol.Range(min=1, msg="must be at least 1")),
    vol.Optional("burst"): _burst,
    # Controllers of one group (keys of one OpenAI project) see each other's stored responses.
    vol.Optional("state_group"): vol.All(NonEmpty, vol.Match(r"^[A-Za-z0-9_.:@/-]+$",
                                                               msg="use letters, digits and _.:@/- only")),
    # False: never add stream_options.include_usage to a stream (an upstream that refuses unknown fields).
    vol.Optional("stream_usage"): bool,
})

OPENAI_SETTINGS = vol.Schema({
    vol.Optional("api_key"): str,  # empty is reported by api_key_of, in words
    vol.Optional("api_key_env"): NonEmpty,
    vol.Optional("api_key_file"): NonEmpty,
    vol.Optional("base_url"): url,
    vol.Optional("organization"): vol.Any(None, str),
    vol.Optional("project"): vol.Any(None, str),
    vol.Optional("proxy"): proxy_url,
    vol.Optional("headers"): {header_name: secret_text},  # values may be keys (Azure's api-key)
})

MOCK_SETTINGS = vol.Schema({
    vol.Optional("tokens_per_second"): vol.All(vol.Coerce(float), vol.Range(min=0.001)),
    vol.Optional("first_token_delay"): _Seconds,
    vol.Optional("reply"): str,
    vol.Optional("max_tokens"): vol.All(int, vol.Range(min=1)),
})


def _finish_openai(settings: dict[str, Any], models: Optional[dict[str, str]], place: Place) -> Finished:
    api_key, key_source = api_key_of(settings, place)
    settings.setdefault("base_url", DEFAULT_BASE_URL)
    for secret_field in KEY_SETTINGS:
        settings.pop(secret_field, None)
    return Finished(api_key, key_source, models)


def _finish_mock(settings: dict[str, Any], models: Optional[dict[str, str]], place: Place) -> Finished:
    return Finished(models=models)


# The controller types: each one's settings schema, and what turns its validated settings into a spec's key
# and models. A new type is one entry in each (and its controller class in controllers/__init__.py).
SETTINGS_SCHEMAS = {"openai": OPENAI_SETTINGS, "azure": AZURE_SETTINGS, "mock": MOCK_SETTINGS}
FINISHERS: dict[str, Callable[[dict[str, Any], Optional[dict[str, str]], Place], Finished]] = {
    "openai": _finish_openai, "azure": finish_azure, "mock": _finish_mock}


@dataclass(frozen=True)
class ControllerSpec:
    """One validated controller entry."""

    name: str
    type: str
    weight: int
    models: Optional[dict[str, str]]
    settings: dict[str, Any] = field(default_factory=dict)
    api_key: Optional[Secret] = None
    api_key_source: str = ""
    limits: Limits = field(default_factory=Limits)
    state_group: Optional[str] = None
    stream_usage: bool = True


def without_comments(document: dict[str, Any]) -> dict[str, Any]:
    """Keys that begin with an underscore are comments (JSON has no other kind)."""
    return {key: value for key, value in document.items() if not str(key).startswith("_")}


def _path_of(error: vol.Invalid) -> str:
    out = ""
    for part in error.path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _report(errors: vol.MultipleInvalid, prefix: str, where: str, problems: list[str]) -> None:
    for error in errors.errors:
        path = _path_of(error)
        key = join_key(prefix, path) if path else prefix
        message = "unknown setting" if error.error_message == "extra keys not allowed" else error.error_message
        if error.error_message == "required key not provided":
            message = "required"
        problems.append(f"{key} in {where}: {message}")


def build_specs(entries: Any, base: Path, where: str, env: Mapping[str, str],
                problems: list[str]) -> list[ControllerSpec]:
    """Validate the `controllers` list; append every problem found to `problems`."""
    if entries is None or entries == []:
        problems.append(f"controllers in {where}: at least one controller is required")
        return []
    if not isinstance(entries, list):
        problems.append(f"controllers in {where}: expected a list of controller entries")
        return []
    specs: list[ControllerSpec] = []
    names: dict[str, str] = {}
    for index, raw in enumerate(entries):
        prefix = f"controllers[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{prefix} in {where}: expected an object with type and config")
            continue
        try:
            entry = ENTRY(without_comments(raw))
        except vol.MultipleInvalid as errors:
            _report(errors, prefix, where, problems)
            continue
        kind = entry["type"]
        schema = SETTINGS_SCHEMAS.get(kind)
        if schema is None:
            problems.append(f"{prefix}.type in {where}: unknown controller type {kind!r}; "
                            f"expected one of {', '.join(SETTINGS_SCHEMAS)}")
            continue
        if "config" in entry and "config_file" in entry:
            problems.append(f"{prefix} in {where}: give either config or config_file, not both")
            continue
        settings: dict[str, Any] = dict(entry.get("config") or {})
        settings_where, settings_prefix, settings_base = where, f"{prefix}.config", base
        if "config_file" in entry:
            path = resolve(base, entry["config_file"])
            if not path.exists() and Path(entry["config_file"]).is_file():
                path = Path(entry["config_file"])  # the original's reading: relative to the working directory
            try:
                settings = load(path)
            except ConfigError as exc:
                problems.extend(f"{prefix}.config_file in {where}: {p}" for p in exc.problems)
                continue
            settings_where, settings_prefix, settings_base = str(path), "", path
        try:
            settings = schema(without_comments(settings))
        except vol.MultipleInvalid as errors:
            _report(errors, settings_prefix, settings_where, problems)
            continue
        place = Place(settings_prefix, settings_where, settings_base, env, problems, prefix, where)
        finished = FINISHERS[kind](settings, entry.get("models"), place)
        name = entry.get("name") or f"{kind}-{index + 1}"
        if name in names:
            problems.append(f"{prefix}.name in {where}: {name!r} is already used by {names[name]}")
            continue
        names[name] = prefix
        burst = entry.get("burst", {})
        limits = Limits(entry.get("rpm"), entry.get("tpm"), entry.get("max_concurrency"),
                        burst.get("requests"), burst.get("tokens"))
        specs.append(ControllerSpec(name, kind, entry.get("weight", 1), finished.models,
                                    settings, finished.api_key, finished.key_source, limits,
                                    entry.get("state_group"), entry.get("stream_usage", True)))
    return specs
