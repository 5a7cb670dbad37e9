"""The effective configuration: flags > env > config file > defaults, validated all at once."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import configargparse
import orjson

from .. import __version__
from ..secret import Secret
from .clients import ClientSpec, Price, build_clients, build_prices
from .controllers import ControllerSpec, build_specs
from .files import ConfigError, Location, load, locate
from .options import OPTIONS, Options, parse_bool

HOW_TO_START = """\
How to start:
  - put a config file at ./chatgpt-apiserver.json or /etc/chatgpt-apiserver/chatgpt-apiserver.json
    (see etc/chatgpt-apiserver/chatgpt-apiserver.example.json), or
  - pass --config-file PATH, or
  - export OPENAI_API_KEY=sk-... (and optionally OPENAI_BASE_URL) to serve one OpenAI controller, or
  - run scripts/run, which serves a clearly labelled demo setup when nothing is configured."""


@dataclass(kw_only=True)
class Settings(Options):
    """Effective settings: one typed attribute per option, where each came from, and the controllers.

    The config document itself is not kept: it may hold keys inline, and only the validated values are needed.
    """

    sources: dict[str, str]
    controllers: list[ControllerSpec]
    location: Location
    demo: bool = False
    clients: list[ClientSpec] = field(default_factory=list)  # the `clients` entries, then each plain client key
    prices: dict[str, Price] = field(default_factory=dict)  # the config's `prices` (over the shipped table)


class _FlatJsonParser(configargparse.ConfigFileParser):  # type: ignore[misc]
    """Reads the flattened `{flag-name: text}` object that `parse_settings` hands to configargparse."""

    def get_syntax_description(self) -> str:
        return "JSON or YAML; see the README"

    def parse(self, stream: Any) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(stream.read() or "{}")
        return data


def build_parser() -> configargparse.ArgParser:
    """The command line: one flag per option (with its env var), plus the config-file flags."""
    parser = configargparse.ArgParser(
        prog="chatgpt-apiserver",
        description="OpenAI-compatible chat-completions gateway that spreads requests over many API keys.",
        config_file_parser_class=_FlatJsonParser,
        ignore_unknown_config_file_keys=True,
        allow_abbrev=False,
        formatter_class=configargparse.ArgumentDefaultsRawHelpFormatter,
        epilog="Every setting can also be given in the config file or as CHATGPT_APISERVER_<NAME>.",
    )
    files = parser.add_argument_group("config file")
    files.add_argument("--config_file", "--config-file", dest="config_file", metavar="PATH",
                       help="Config file (env: CHATGPT_APISERVER_CONFIG_FILE or CONFIG_FILE).")
    files.add_argument("--config_path", "--config-path", dest="config_path", metavar="DIR",
                       help="Directory searched first for chatgpt-apiserver.json "
                            "(env: CHATGPT_APISERVER_CONFIG_PATH or CONFIG_PATH).")
    files.add_argument("--demo-config", "--demo_config", dest="demo_config", metavar="PATH",
                       help="Serve this demo config, loudly labelled, when no config file and no "
                            "OPENAI_API_KEY is found (scripts/run uses it).")
    files.add_argument("--check-config", "--check_config", dest="check_config", action="store_true",
                       help="Print the effective settings (secrets redacted) with their sources, then exit.")
    files.add_argument("--hash-key", "--hash_key", dest="hash_key", action="store_true",
                       help="Read a client key on stdin and print its SHA-256 digest (for a client's key_sha256), "
                            "then exit.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    groups: dict[str, Any] = {}
    for option in OPTIONS:
        group = groups.setdefault(option.group, parser.add_argument_group(option.group))
        flag_style = {"nargs": "?", "const": "true"} if option.parse is parse_bool else {}
        group.add_argument(*option.flags, dest=option.dest, env_var=option.env, default=None,
                           metavar=option.dest.split("_")[-1].upper(), **flag_style,
                           help=f"{option.help} [default: {_show_default(option.default)}]")
    return parser


def _show_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return "none" if value is None else str(value)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _security_checks(values: dict[str, Any], sources: dict[str, str], base: Path, problems: list[str],
                     listening: Optional[Sequence[str]], clients: bool) -> None:
    """Client keys from the file, and the refusal to serve a public address with no keys.

    On a reload, `listening` holds the addresses actually bound: `host` takes a restart, so the rule is
    checked against where the server listens, not against what the file now says.
    """
    keys: list[Secret] = list(values.get("client_keys") or ())
    path_text = values.get("client_keys_file")
    if path_text:
        path = base.parent / path_text if not Path(path_text).is_absolute() else Path(path_text)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            problems.append(f"{sources['client_keys_file']}: cannot read {path}: {exc.strerror}")
            lines = []
        keys += [Secret(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]
    values["client_keys"] = tuple(keys)
    if keys or clients or values.get("allow_unauthenticated"):
        return
    why = ("anyone who can reach it could spend the upstream keys. Set clients or client_keys (or "
           "client_keys_file, or CHATGPT_APISERVER_CLIENT_KEYS), or pass --allow-unauthenticated if something "
           "in front of it authenticates clients.")
    if listening is not None:
        for address in listening:
            if not _is_loopback(address):
                problems.append(f"client_keys: the server listens on {address}, a non-loopback address, and this "
                                f"config has no client keys (a new host takes a restart): {why}")
                return
        return
    host = values.get("host", "127.0.0.1")
    if not _is_loopback(host):
        problems.append(f"{sources['host']}: refusing to listen on {host}, a non-loopback address, with no client "
                        f"keys: {why}")


def _lookup(document: Mapping[str, Any], dotted: str) -> Any:
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def _flatten(document: Mapping[str, Any], problems: list[str], where: str) -> dict[str, str]:
    """Scalar option values from the document, keyed by flag name for configargparse."""
    flat: dict[str, str] = {}
    for option in OPTIONS:
        value = _lookup(document, option.key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            problems.append(f"{option.key} in {where}: expected a single value, got an object")
            continue
        flat[option.flags[0][2:]] = _as_text(value)
    return flat


def _check_unknown_keys(document: Mapping[str, Any], where: str, problems: list[str]) -> None:
    known_top = {option.key.split(".")[0] for option in OPTIONS} | {"controllers", "clients", "prices"}
    for key in document:
        if key not in known_top and not key.startswith("_"):
            problems.append(f"{key} in {where}: unknown setting")
    nested = {option.key.split(".")[0] for option in OPTIONS if "." in option.key}
    for head in sorted(nested):
        section = document.get(head)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            problems.append(f"{head} in {where}: expected an object such as {{\"type\": ...}}")
            continue
        allowed = {option.key.split(".", 1)[1] for option in OPTIONS if option.key.startswith(head + ".")}
        for key in section:
            if key not in allowed and not key.startswith("_"):
                problems.append(f"{head}.{key} in {where}: unknown setting")


def _sources(parser: configargparse.ArgParser, where: str) -> dict[str, str]:
    """For each option set by env or file, a label naming that source; the rest came from flags."""
    found: dict[str, str] = {}
    for source, settings in parser.get_source_to_settings_dict().items():
        if source == "environment_variables":
            for env_name, (action, _value) in settings.items():
                found[action.dest] = f"env {env_name}"
        elif source.startswith("config_file"):
            for _key, (action, _value) in settings.items():
                if action is not None:
                    option = next(o for o in OPTIONS if o.dest == action.dest)
                    found[action.dest] = f"{option.key} in {where}"
    return found


def _document_for(location: Location, env: Mapping[str, str],
                  demo_config: Optional[str]) -> tuple[dict[str, Any], bool]:
    """The config document: the file found, else one controller from OPENAI_API_KEY, else the demo."""
    if location.path is not None:
        return load(location.path), False
    if env.get("OPENAI_API_KEY"):
        entry: dict[str, Any] = {"type": "openai", "name": "openai-env", "config": {"api_key_env": "OPENAI_API_KEY"}}
        if env.get("OPENAI_BASE_URL"):
            entry["config"]["base_url"] = env["OPENAI_BASE_URL"]
        location.how = "no file found; one controller from OPENAI_API_KEY"
        return {"controllers": [entry]}, False
    if demo_config:
        location.path = Path(demo_config)
        location.how = "DEMO: no config found, serving --demo-config"
        return load(location.path), True
    searched = "\n".join(f"    {path}" for path in location.searched)
    raise ConfigError(
        ["no config file found, and OPENAI_API_KEY is not set. Searched, in order:\n" + searched],
        HOW_TO_START,
    )


def parse_settings(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None,
                   listening: Optional[Sequence[str]] = None) -> tuple[Settings, bool]:
    """Parse flags, env and the config file into validated `Settings`; also return `--check-config`.

    `listening`: on a reload, the addresses the server is bound to (see `_security_checks`).
    """
    env = dict(os.environ if env is None else env)
    parser = build_parser()
    args = list(argv or [])
    pre, _rest = parser.parse_known_args(args, env_vars={}, config_file_contents="{}")
    location = locate(pre.config_file, pre.config_path, env)
    document, demo = _document_for(location, env, pre.demo_config)
    where = str(location.path) if location.path else "the environment"

    problems: list[str] = []
    _check_unknown_keys(document, where, problems)
    flat = _flatten(document, problems, where)
    namespace = parser.parse_args(args, env_vars=env, config_file_contents=orjson.dumps(flat).decode())
    sources = _sources(parser, where)

    values: dict[str, Any] = {}
    final_sources: dict[str, str] = {}
    for option in OPTIONS:
        raw = getattr(namespace, option.dest)
        if raw is None:
            values[option.dest] = option.default
            final_sources[option.dest] = "default"
            continue
        source = sources.get(option.dest, option.flags[0])
        final_sources[option.dest] = source
        try:
            values[option.dest] = option.parse(raw)
        except ValueError as exc:
            problems.append(f"{source}: {exc}")

    base = location.path if location.path else Path.cwd() / "environment"
    entries = document.get("clients")
    if not any(problem.startswith(("--host", "env CHATGPT_APISERVER_HOST", "host in")) for problem in problems):
        _security_checks(values, final_sources, base, problems, listening, bool(entries))
    controllers = build_specs(document.get("controllers"), base, where, env, problems)
    clients = build_clients(entries, values.get("client_keys") or (), base, where, env, problems)
    prices = build_prices(document.get("prices"), where, problems)
    if problems:
        raise ConfigError(problems)
    settings = Settings(**values, sources=final_sources, controllers=controllers, location=location, demo=demo,
                        clients=clients, prices=prices)
    return settings, bool(namespace.check_config)
