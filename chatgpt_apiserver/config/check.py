"""`--check-config`: the effective settings, where each came from, secrets redacted."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..secret import Secret
from .clients import plain, usd
from .options import OPTIONS
from .settings import Settings


def _show(value: Any, secret: bool) -> str:
    if secret:
        if isinstance(value, tuple):
            return f"({len(value)} key{'s' if len(value) != 1 else ''}, redacted)" if value else "(none)"
        return "(set, redacted)" if value else "(none)"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value) or "(none)"
    return "(none)" if value is None else str(value)


def shown_url(url: str) -> str:
    """A URL with its credentials and the values of its query redacted (some gateways carry a key there)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:  # credentials in the URL
        netloc = "(redacted)@" + netloc.rsplit("@", 1)[1]
    names = [pair.split("=", 1)[0] for pair in parts.query.split("&") if pair]
    query = "&".join(f"{name}=(redacted)" for name in names)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def render(settings: Settings) -> str:
    """A human-readable report; it never contains a key."""
    lines = []
    if settings.demo:
        lines.append("DEMO MODE: no configuration was found; serving mock controllers (generated text).")
    lines.append(f"config file: {settings.location.path or '(none)'}  [{settings.location.how}]")
    lines.append("")
    lines.append("settings:")
    width = max(len(option.key) for option in OPTIONS)
    for option in OPTIONS:
        value = _show(getattr(settings, option.dest), option.secret)
        lines.append(f"  {option.key:<{width}} = {value:<24} ({settings.sources[option.dest]})")
    lines.append("")
    lines.append(f"controllers ({len(settings.controllers)}):")
    for spec in settings.controllers:
        models = ", ".join(sorted(spec.models)) if spec.models is not None else "all"
        lines.append(f"  - {spec.name}: type={spec.type} weight={spec.weight} models={models}")
        if spec.type == "openai":
            lines.append(f"      base_url={shown_url(spec.settings['base_url'])}")
            if spec.settings.get("proxy"):
                lines.append("      proxy=(set, redacted)")
            for key in ("organization", "project"):
                if spec.settings.get(key):
                    lines.append(f"      {key}={spec.settings[key]}")
            if spec.settings.get("headers"):
                lines.append(f"      headers={', '.join(sorted(spec.settings['headers']))} (values redacted)")
            lines.append(f"      api_key={spec.api_key} (from {spec.api_key_source})")
        else:
            for key, value in sorted(spec.settings.items()):
                if key != "reply":
                    lines.append(f"      {key}={_setting(value)}")
            if spec.api_key is not None:
                lines.append(f"      api_key={spec.api_key} (from {spec.api_key_source})")
            elif spec.api_key_source:
                lines.append(f"      credential from {spec.api_key_source}")
    lines += _clients(settings)
    found = warnings(settings)
    if found:
        lines += ["", "warnings:", *(f"  - {warning}" for warning in found)]
    return "\n".join(lines)


def warnings(settings: Settings) -> list[str]:
    """What is valid but probably not meant (printed by --check-config, logged at start and reload)."""
    found = []
    if not settings.admin_key and any(spec.named for spec in settings.clients):
        found.append("clients are configured and admin_key is not set: /admin/* and /metrics refuse every key "
                     "(a client key would show every client's usage); set admin_key to open them")
    for spec in settings.clients:
        if spec.budget is not None and spec.budget.tokens is None:
            found.append(f"client {spec.name}: its budget is in USD only; models without a price cost nothing, "
                         f"so they are not limited by it (add a tokens amount, or prices for them)")
    return found


def _setting(value: Any) -> str:
    """A controller setting for the report: secrets (a proxy, header values) are never shown."""
    if isinstance(value, Secret):
        return "(set, redacted)"
    if isinstance(value, dict):
        if any(isinstance(item, Secret) for item in value.values()):
            return f"{', '.join(sorted(value))} (values redacted)"
        return ", ".join(f"{key}: {item}" for key, item in sorted(value.items()))
    return str(value)


def _clients(settings: Settings) -> list[str]:
    """The clients, with where each key comes from (never the key or its digest)."""
    lines = ["", f"clients ({len(settings.clients)}):"]
    for spec in settings.clients:
        parts = [f"priority={spec.priority}", f"share={plain(spec.share)}"]
        for name, value in (("rpm", spec.limits.rpm), ("tpm", spec.limits.tpm),
                            ("max_concurrency", spec.max_concurrency)):
            if value is not None:
                parts.append(f"{name}={plain(value)}")
        lines.append(f"  - {spec.name}: {' '.join(parts)}")
        lines.append(f"      key from {spec.key_source}")
        if spec.models is not None:
            lines.append(f"      models={', '.join(sorted(spec.models))}")
        for model, limit in sorted(spec.model_limits.items()):
            shown = " ".join(f"{k}={plain(v)}" for k, v in (("rpm", limit.rpm), ("tpm", limit.tpm)) if v is not None)
            lines.append(f"      model_limits[{model}]: {shown}")
        if spec.budget is not None:
            budget = spec.budget
            amounts = [f"{budget.tokens} tokens" if budget.tokens is not None else "",
                       usd(budget.usd) if budget.usd is not None else ""]
            lines.append(f"      budget per {budget.period}: {' and '.join(a for a in amounts if a)}")
    if settings.prices:
        lines.append(f"prices from the config: {', '.join(sorted(settings.prices))}")
    return lines
