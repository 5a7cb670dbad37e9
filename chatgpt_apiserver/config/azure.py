"""The `azure` controller type's settings: an Azure OpenAI resource, its deployments, and its key or token file."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional
from urllib.parse import urlsplit

import voluptuous as vol

from .values import (
    KEY_SETTINGS,
    Finished,
    NonEmpty,
    Place,
    api_key_of,
    header_name,
    proxy_url,
    read_key_file,
    secret_text,
    url,
)

DEFAULT_API_VERSION = "2024-10-21"  # the newest GA version of the classic deployment URLs
APIS = ("classic", "v1")
# Azure's deployment names; they go into the URL path, so nothing else is let through.
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
API_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # "2024-10-21", "2025-04-01-preview", "preview"
OWN_HEADERS = ("api-key", "authorization")  # the credential settings send these


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint(value: Any) -> str:
    """The resource's address, https:// (plain http only on loopback, for tests and local proxies)."""
    text = url(value)
    parts = urlsplit(text)
    if parts.username or parts.password:
        raise vol.Invalid("must not carry credentials; give the key with api_key, api_key_env, api_key_file "
                          "or bearer_token_file")
    if parts.scheme != "https" and not _loopback(parts.hostname or ""):
        raise vol.Invalid(f"must be an https:// URL (plain http:// only to a loopback address), got {text!r}")
    if parts.query or parts.fragment:
        raise vol.Invalid("give the resource's address without a query; api_version is a setting of its own")
    if "openai" in parts.path.lower().split("/"):
        raise vol.Invalid("give the resource's address without /openai/...: the gateway adds "
                          "/openai/deployments/<deployment> (or /openai/v1 with \"api\": \"v1\")")
    return text


def deployments(value: Any) -> dict[str, str]:
    """A map of the public model name to the deployment that serves it; at least one."""
    if not isinstance(value, dict):
        raise vol.Invalid('expected a map of public model name to deployment name, e.g. {"gpt-4o": "gpt4o-east"}')
    if not value:
        raise vol.Invalid('is empty; name at least one deployment, e.g. {"gpt-4o": "gpt4o-east"}')
    for model, name in value.items():
        if not isinstance(model, str) or not model.strip():
            raise vol.Invalid(f"expected non-empty model names as keys, got {model!r}")
        if not isinstance(name, str) or not DEPLOYMENT_NAME.fullmatch(name):
            raise vol.Invalid("expected a deployment name: 1 to 64 letters, digits, '.', '_' or '-', "
                              f"got {name!r}", path=[model])
    return dict(value)


def api_version(value: Any) -> str:
    """An `api-version` query value."""
    if not isinstance(value, str) or not API_VERSION.fullmatch(value):
        raise vol.Invalid(f"expected an API version such as {DEFAULT_API_VERSION!r} or 'preview', got {value!r}")
    return value


AZURE_SETTINGS = vol.Schema({
    vol.Required("endpoint"): endpoint,
    vol.Required("deployments"): deployments,
    vol.Optional("api"): vol.In(APIS, msg=f"expected one of {', '.join(APIS)}"),
    vol.Optional("api_version"): api_version,
    vol.Optional("api_key"): str,  # empty is reported by api_key_of, in words
    vol.Optional("api_key_env"): NonEmpty,
    vol.Optional("api_key_file"): NonEmpty,
    vol.Optional("bearer_token_file"): NonEmpty,
    vol.Optional("proxy"): proxy_url,
    vol.Optional("headers"): {header_name: secret_text},
})


def finish_azure(settings: dict[str, Any], models: Optional[dict[str, str]], place: Place) -> Finished:
    """The key (or the token file, read once here to check it) and the models, which are the deployments."""
    if models is not None:
        place.problems.append(f"{place.entry}.models in {place.entry_where}: an azure controller serves the models "
                              "of its deployments; list them in config.deployments instead")
    for name in settings.get("headers") or {}:
        if name.lower() in OWN_HEADERS:
            place.problem(f"headers.{name}", "the credential is sent from api_key, api_key_env, api_key_file "
                                             "or bearer_token_file; remove this header")
    api_key, key_source = api_key_of(settings, place, others=("bearer_token_file",))
    token_file = settings.get("bearer_token_file")
    if token_file and not any(str(settings.get(key) or "").strip() for key in KEY_SETTINGS):
        found = read_key_file("bearer_token_file", token_file, place)
        if found is not None:
            settings["bearer_token_file"] = str(found[1])  # re-read from there whenever it changes
            key_source = f"bearer token file {found[1]}"
    for secret_field in KEY_SETTINGS:
        settings.pop(secret_field, None)
    settings.setdefault("api", "classic")
    if settings["api"] == "classic":
        settings.setdefault("api_version", DEFAULT_API_VERSION)
    return Finished(api_key, key_source, dict(settings["deployments"]))
