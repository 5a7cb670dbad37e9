"""Validators for the values controller settings share (URLs, headers, keys), and where a setting came from.

Every problem names its key: `Place.key("api_key")` is "controllers[0].config.api_key", or "api_key" in a
controller's own config_file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Optional
from urllib.parse import SplitResult, urlsplit

import voluptuous as vol

from ..secret import Secret
from ..transport.request import TRANSPORT_HEADERS
from .files import resolve

KEY_SETTINGS = ("api_key", "api_key_env", "api_key_file")

NonEmpty = vol.All(str, vol.Length(min=1))


@dataclass(frozen=True)
class Finished:
    """What a type makes of its validated settings: the spec's key, where it came from, and its models."""

    api_key: Optional[Secret] = None
    key_source: str = ""
    models: Optional[dict[str, str]] = None


@dataclass(frozen=True)
class Place:
    """Where one controller's settings were read: for problems that name their key, and relative paths."""

    prefix: str  # "controllers[0].config", or "" when they came from their own config_file
    where: str  # the file
    base: Path  # what relative paths are relative to
    env: Mapping[str, str]
    problems: list[str]
    entry: str  # "controllers[0]", in `entry_where`
    entry_where: str

    def key(self, name: str) -> str:
        """The full name of setting `name`."""
        return join_key(self.prefix, name)

    def problem(self, name: str, message: str) -> None:
        """Report a problem with setting `name`."""
        self.problems.append(f"{self.key(name)} in {self.where}: {message}")


def join_key(prefix: str, key: str) -> str:
    """`prefix.key`, or `key` alone at the top of a file."""
    return f"{prefix}.{key}" if prefix else key


def url(value: Any) -> str:
    """An http:// or https:// URL with a host and a valid port, without a trailing slash."""
    if not isinstance(value, str):
        raise vol.Invalid("expected a URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise vol.Invalid(f"expected an http:// or https:// URL, got {value!r}")
    check_port(parts)
    return value.rstrip("/")


def check_port(parts: SplitResult) -> None:
    """Raise if the URL's port is not a number from 0 to 65535."""
    try:
        parts.port  # noqa: B018 - it parses the port
    except ValueError:
        raise vol.Invalid("the port is not a number from 0 to 65535") from None


def proxy_url(value: Any) -> Optional[Secret]:
    """A proxy URL, kept as a Secret because it may carry credentials; empty means no proxy (as in the original)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise vol.Invalid("expected a proxy URL")
    if not value.strip():
        return None
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        raise vol.Invalid(f"expected an http:// proxy URL, got {parts.scheme or 'no'} scheme")
    check_port(parts)
    return Secret(value)


def secret_text(value: Any) -> Secret:
    """A header value that may be a key: one line, kept as a Secret."""
    if not isinstance(value, str):
        raise vol.Invalid("expected a string")
    if "\r" in value or "\n" in value or "\0" in value:
        raise vol.Invalid("must not contain line breaks")
    return Secret(value)


def header_name(value: Any) -> str:
    """An HTTP header name that the transport does not write itself."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        raise vol.Invalid("expected an HTTP header name")
    if value.lower() in TRANSPORT_HEADERS:
        raise vol.Invalid(f"{value} is set by the gateway itself (from base_url, the body and the connection)")
    return value


def read_key_file(setting: str, text: str, place: Place) -> Optional[tuple[Secret, Path]]:
    """The one-line credential in the file named by `setting` (`${VAR}`s expanded, e.g. CREDENTIALS_DIRECTORY)."""
    path = resolve(place.base, Template(text).safe_substitute(place.env))
    try:
        value = path.read_text().strip()
    except OSError as exc:
        place.problem(setting, f"cannot read {path}: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        place.problem(setting, f"{path} is not text")
        return None
    if not value:
        place.problem(setting, f"{path} is empty")
        return None
    if any(char in value for char in "\r\n\0"):
        place.problem(setting, f"{path} holds more than one line; put the credential alone in it")
        return None
    return Secret(value), path


def _either(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def api_key_of(settings: dict[str, Any], place: Place, others: tuple[str, ...] = ()) -> tuple[Optional[Secret], str]:
    """The key given by exactly one of api_key, api_key_env or api_key_file (or one of `others`, which the
    caller reads), and where it came from; (None, "") after reporting a problem, or when an `other` is given."""
    given = [key for key in (*KEY_SETTINGS, *others) if str(settings.get(key) or "").strip()]
    if not given and "api_key" in settings:
        place.problem("api_key", f"the API key is empty; put the key there, or name it with "
                                 f"{_either((*KEY_SETTINGS[1:], *others))}")
        return None, ""
    if len(given) != 1:
        what = "is missing" if not given else f"is given {len(given)} ways ({', '.join(given)})"
        place.problem("api_key", f"the API key {what}; set exactly one of {_either((*KEY_SETTINGS, *others))}")
        return None, ""
    how = given[0]
    if how in others:
        return None, ""
    if how == "api_key":
        return Secret(settings["api_key"].strip()), f"{place.key('api_key')} in {place.where}"
    if how == "api_key_env":
        name = settings["api_key_env"]
        value = place.env.get(name, "").strip()
        if not value:
            place.problem("api_key_env", f"env var {name} is not set or empty")
            return None, ""
        return Secret(value), f"env {name}"
    found = read_key_file("api_key_file", settings["api_key_file"], place)
    return (found[0], f"file {found[1]}") if found is not None else (None, "")
