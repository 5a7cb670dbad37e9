"""Configuration: precedence, the search order, controller entries, and every error message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatgpt_apiserver.cli import main
from chatgpt_apiserver.config.check import render
from chatgpt_apiserver.config.files import ConfigError
from chatgpt_apiserver.config.options import OPTIONS
from chatgpt_apiserver.config.settings import parse_settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-" + "canary-SECRET-0123456789abcdefghij"  # split so it does not look like a committed key
MOCK = {"type": "mock"}


def write(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def problems(argv: list[str], env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(argv, env)
    return caught.value.problems


def test_defaults(tmp_path: Path) -> None:
    config = write(tmp_path / "c.json", {"controllers": [MOCK]})
    settings, check = parse_settings(["--config-file", str(config)], {})
    assert (settings.host, settings.port, settings.pool_type) == ("127.0.0.1", 8080, "balanced")
    assert settings.sources["port"] == "default" and not check


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = write(tmp_path / "c.json", {"port": "9001", "pool": {"type": "random"}, "max_attempts": 5,
                                         "controllers": [MOCK]})
    args = ["--config-file", str(config)]
    settings, _ = parse_settings(args, {})
    assert settings.port == 9001 and settings.pool_type == "random" and settings.max_attempts == 5
    assert settings.sources["port"] == f"port in {config}"
    assert settings.sources["pool_type"] == f"pool.type in {config}"

    env = {"CHATGPT_APISERVER_PORT": "9002", "CHATGPT_APISERVER_POOL_TYPE": "balanced"}
    settings, _ = parse_settings(args, env)
    assert settings.port == 9002 and settings.pool_type == "balanced" and settings.max_attempts == 5
    assert settings.sources["port"] == "env CHATGPT_APISERVER_PORT"

    settings, _ = parse_settings([*args, "--port", "9003", "--pool_type", "random"], env)
    assert settings.port == 9003 and settings.pool_type == "random"
    assert settings.sources["port"] == "--port"


def test_port_accepts_a_number_or_a_string(tmp_path: Path) -> None:
    for value in (8123, "8123"):
        config = write(tmp_path / "c.json", {"port": value, "controllers": [MOCK]})
        assert parse_settings(["--config-file", str(config)], {})[0].port == 8123


def test_yaml_is_accepted(tmp_path: Path) -> None:
    config = write(tmp_path / "chatgpt-apiserver.yaml", "port: 9100\ncontrollers:\n  - type: mock\n")
    settings, _ = parse_settings(["--config_path", str(tmp_path)], {})
    assert settings.port == 9100 and settings.location.path == config


def test_explicit_file_order(tmp_path: Path) -> None:
    files = {name: write(tmp_path / f"{name}.json", {"port": port, "controllers": [MOCK]})
             for name, port in (("flag", 1), ("env1", 2), ("env2", 3))}
    env = {"CHATGPT_APISERVER_CONFIG_FILE": str(files["env1"]), "CONFIG_FILE": str(files["env2"])}
    assert parse_settings(["--config_file", str(files["flag"])], env)[0].port == 1
    assert parse_settings([], env)[0].port == 2
    assert parse_settings([], {"CONFIG_FILE": str(files["env2"])})[0].port == 3


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    steps = [("flagdir", 1), ("envdir", 2), ("cfgdir", 3), (".", 4), ("config", 5), (".config", 6)]
    for directory, port in steps:
        write(tmp_path / directory / "chatgpt-apiserver.json", {"port": port, "controllers": [MOCK]})
    env = {"CHATGPT_APISERVER_CONFIG_PATH": "envdir", "CONFIG_PATH": "cfgdir"}
    assert parse_settings(["--config_path", "flagdir"], env)[0].port == 1
    assert parse_settings([], env)[0].port == 2
    assert parse_settings([], {"CONFIG_PATH": "cfgdir"})[0].port == 3
    assert parse_settings([], {})[0].port == 4
    os.remove(tmp_path / "chatgpt-apiserver.json")
    assert parse_settings([], {})[0].port == 5
    os.remove(tmp_path / "config" / "chatgpt-apiserver.json")
    assert parse_settings([], {})[0].port == 6


def test_nothing_found_lists_every_place_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        parse_settings(["--config-path", "mine"], {})
    text = str(caught.value)
    for place in ("mine/chatgpt-apiserver.json", "./chatgpt-apiserver.json", "config/chatgpt-apiserver.json",
                  ".config/chatgpt-apiserver.json", "/etc/chatgpt-apiserver/chatgpt-apiserver.json"):
        assert place in text
    assert "OPENAI_API_KEY" in text and "scripts/run" in text


def test_openai_api_key_env_serves_one_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings, _ = parse_settings([], {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    [spec] = settings.controllers
    assert spec.type == "openai" and spec.api_key is not None and spec.api_key.reveal() == KEY
    assert spec.settings["base_url"] == "http://127.0.0.1:9/v1"


def test_controller_config_file_is_relative_to_the_file_naming_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "etc" / "keys" / "a.json", {"api_key": KEY, "proxy": "http://127.0.0.1:3128"})
    config = write(tmp_path / "etc" / "chatgpt-apiserver.json", {
        "controllers": [{"type": "openai", "weight": "5", "config_file": "keys/a.json"}]})
    monkeypatch.chdir(tmp_path)
    settings, _ = parse_settings(["--config-file", str(config)], {})
    [spec] = settings.controllers
    assert spec.api_key is not None and spec.api_key.reveal() == KEY  # the original lost it
    assert spec.settings["proxy"].reveal() == "http://127.0.0.1:3128"
    assert spec.weight == 5 and spec.name == "openai-1"


def test_the_originals_layout_names_its_controller_file_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The original's config/config.json says "config_file": "config/openai.json", read from the directory it runs in.
    write(tmp_path / "config" / "openai.json", {"api_key": KEY})
    config = write(tmp_path / "config" / "config.json", {"controllers": [
        {"type": "openai", "config_file": "config/openai.json"}]})
    monkeypatch.chdir(tmp_path)
    settings, _ = parse_settings(["--config_file", "config/config.json"], {})
    [spec] = settings.controllers
    assert spec.api_key is not None and spec.api_key.reveal() == KEY
    monkeypatch.chdir(tmp_path / "config")  # from elsewhere, neither reading finds it: the error says where it looked
    with pytest.raises(ConfigError) as failed:
        parse_settings(["--config_file", str(config)], {})
    assert "config/config/openai.json: cannot read" in str(failed.value.problems)


def test_the_originals_config_keeps_working(tmp_path: Path) -> None:
    write(tmp_path / "ctrl.json", {"api_key": KEY})
    config = write(tmp_path / "chatgpt-apiserver.json", {
        "port": "8080", "pool": {"type": "balanced"},
        "controllers": [{"type": "openai", "weight": 5, "config": {"api_key": KEY}},
                        {"type": "openai", "weight": 0, "config_file": "ctrl.json"}]})
    settings, _ = parse_settings(["--config-file", str(config)], {})
    assert [spec.weight for spec in settings.controllers] == [5, 1]
    assert settings.port == 8080


def test_api_key_from_env_and_file(tmp_path: Path) -> None:
    write(tmp_path / "creds" / "key", KEY + "\n")
    config = write(tmp_path / "c.json", {"controllers": [
        {"type": "openai", "name": "by-env", "config": {"api_key_env": "MY_KEY"}},
        {"type": "openai", "name": "by-file", "config": {"api_key_file": "${CREDENTIALS_DIRECTORY}/key"}},
    ]})
    settings, _ = parse_settings(["--config-file", str(config)],
                                 {"MY_KEY": KEY, "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert [spec.api_key.reveal() for spec in settings.controllers if spec.api_key] == [KEY, KEY]
    assert settings.controllers[1].api_key_source == f"file {tmp_path / 'creds' / 'key'}"


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    config = write(tmp_path / "c.json", {
        "port": "eighty", "pool": {"type": "fastest", "size": 3}, "colour": "blue",
        "controllers": [
            {"type": "openai", "config": {}},
            {"type": "openai", "config": {"api_key": "a", "api_key_env": "B"}},
            {"type": "gemini"},
            {"type": "openai", "weight": -1, "config": {"api_key": "x"}},
            {"type": "openai", "config": {"api_key": "x", "base_url": "ftp://x", "proxy": "socks5://p:1"}},
            {"type": "openai", "config": {"api_key_env": "UNSET_VAR"}},
            {"type": "openai", "config": {"api_key_file": "missing.key"}},
            {"type": "openai", "config_file": "nope.json"},
            {"type": "openai", "config": {"api_key": "x", "colour": 1}},
            "not an object",
            {"type": "mock", "name": "dup"}, {"type": "mock", "name": "dup"},
        ]})
    found = problems(["--config-file", str(config), "--max-attempts", "0"],
                     {"CHATGPT_APISERVER_LOG_LEVEL": "loud"})
    where = str(config)
    expected = [
        "env CHATGPT_APISERVER_LOG_LEVEL: expected one of debug, info, warning, error, got 'loud'",
        f"port in {where}: expected a port number, got 'eighty'",
        f"pool.type in {where}: expected one of balanced, random, least_busy, capacity, got 'fastest'",
        f"pool.size in {where}: unknown setting",
        f"colour in {where}: unknown setting",
        "--max-attempts: expected a whole number of at least 1, got 0",
        f"controllers[0].config.api_key in {where}: the API key is missing",
        f"controllers[1].config.api_key in {where}: the API key is given 2 ways",
        f"controllers[2].type in {where}: unknown controller type 'gemini'",
        f"controllers[3].weight in {where}: must not be negative",
        f"controllers[4].config.base_url in {where}: expected an http:// or https:// URL",
        f"controllers[4].config.proxy in {where}: expected an http:// proxy URL",
        f"controllers[5].config.api_key_env in {where}: env var UNSET_VAR is not set",
        f"controllers[6].config.api_key_file in {where}: cannot read",
        f"controllers[7].config_file in {where}:",
        f"controllers[8].config.colour in {where}: unknown setting",
        f"controllers[9] in {where}: expected an object",
        f"controllers[11].name in {where}: 'dup' is already used by controllers[10]",
    ]
    for message in expected:
        assert any(problem.startswith(message) for problem in found), (message, found)
    assert len(found) == len(expected)


def test_upstream_settings_the_transport_cannot_honour_are_refused(tmp_path: Path) -> None:
    config = write(tmp_path / "c.json", {"controllers": [
        {"type": "openai", "config": {"api_key": "x", "proxy": "https://proxy.example:3128"}},
        {"type": "openai", "config": {"api_key": "x", "base_url": "http://upstream.example:port/v1"}},
        {"type": "openai", "config": {"api_key": "x", "headers": {"Content-Length": "5", "Host": "other"}}},
    ]})
    found = problems(["--config-file", str(config)], {})
    where = str(config)
    assert found == [
        f"controllers[0].config.proxy in {where}: expected an http:// proxy URL, got https scheme",
        f"controllers[1].config.base_url in {where}: the port is not a number from 0 to 65535",
        f"controllers[2].config.headers.Content-Length in {where}: Content-Length is set by the gateway itself "
        "(from base_url, the body and the connection)",
        f"controllers[2].config.headers.Host in {where}: Host is set by the gateway itself (from base_url, the body "
        "and the connection)",
    ]


def test_zero_controllers_fail(tmp_path: Path) -> None:
    config = write(tmp_path / "c.json", {"controllers": []})
    assert problems(["--config-file", str(config)], {}) == [
        f"controllers in {config}: at least one controller is required"]


def test_bad_documents_fail_clearly(tmp_path: Path) -> None:
    bad_json = write(tmp_path / "a.json", "{port: 1")
    assert "not valid JSON" in problems(["--config-file", str(bad_json)], {})[0]
    not_object = write(tmp_path / "b.json", "[1]")
    assert "top level must be an object" in problems(["--config-file", str(not_object)], {})[0]
    assert "does not exist" in problems(["--config-file", str(tmp_path / "none.json")], {})[0]
    assert problems([], {"CONFIG_FILE": str(tmp_path / "none.json")})[0].startswith("CONFIG_FILE:")


def test_example_and_demo_configs_load(tmp_path: Path) -> None:
    example = ROOT / "etc" / "chatgpt-apiserver" / "chatgpt-apiserver.example.json"
    for name in ("vllm-key", "azure-eastus", "azure-swedencentral"):
        write(tmp_path / name, "local-key")
    env = {"OPENAI_API_KEY_2": "sk-example-0123456789abcdef", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    settings, _ = parse_settings(["--config-file", str(example)], env)
    assert len(settings.controllers) >= 3
    document = json.loads(example.read_text())
    shown = {key for key in document if not key.startswith("_")} | {f"pool.{key}" for key in document["pool"]}
    assert {option.key for option in OPTIONS} - shown == set()  # the example documents every option
    assert {"state_group", "stream_usage"} <= {key for entry in document["controllers"] for key in entry}
    assert {"openai", "azure", "mock"} <= {spec.type for spec in settings.controllers}
    demo = ROOT / "etc" / "chatgpt-apiserver" / "demo.json"
    settings, _ = parse_settings(["--demo-config", str(demo), "--config-path", "/nonexistent"], {})
    assert settings.demo and all(spec.type == "mock" for spec in settings.controllers)


def test_check_config_never_prints_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "key", KEY)
    config = write(tmp_path / "c.json", {"controllers": [
        {"type": "openai", "config": {"api_key": KEY, "headers": {"api-key": KEY},
                                      "proxy": f"http://user:{KEY}@127.0.0.1:3128"}},
        {"type": "openai", "config": {"api_key_file": "key"}},
        {"type": "openai", "config": {"api_key_env": "K"}}]})
    os.environ["K"] = KEY
    try:
        assert main(["--config-file", str(config), "--check-config"]) == 0
    finally:
        del os.environ["K"]
    out = capsys.readouterr()
    assert "SECRET" not in out.out + out.err
    assert "api_key=sk-…(redacted)" in out.out
    assert "(from env K)" in out.out
    settings, _ = parse_settings(["--config-file", str(config)], {"K": KEY})
    assert "SECRET" not in render(settings) and "SECRET" not in repr(settings.controllers)


def test_check_config_reports_errors_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "c.json", {"controllers": [{"type": "openai", "config": {}}]})
    assert main(["--config-file", str(config), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "the API key is missing" in err and "Traceback" not in err


def test_the_module_and_console_script_exit_2_without_config(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGPT_APISERVER", "CONFIG_", "OPENAI_"))}
    for command in ([sys.executable, "-m", "chatgpt_apiserver"],
                    [str(Path(sys.executable).parent / "chatgpt-apiserver")]):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "no config file found" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "chatgpt_apiserver", "--help"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--pool-type" in done.stdout and "CHATGPT_APISERVER_PORT" in done.stdout


def test_an_empty_proxy_means_none_and_an_empty_key_is_named(tmp_path: Path) -> None:
    config = write(tmp_path / "c.json", {"controllers": [
        {"type": "openai", "name": "direct", "config": {"api_key": KEY, "proxy": ""}},
        {"type": "openai", "name": "spaces", "config": {"api_key": KEY, "proxy": "  "}}]})
    settings, _ = parse_settings(["--config-file", str(config)], {})
    assert [spec.settings["proxy"] for spec in settings.controllers] == [None, None]
    assert "proxy=" not in render(settings)
    # The original's own config/openai.json: its empty api_key is the one error, said in words.
    write(tmp_path / "openai.json", {"api_key": "", "proxy": ""})
    config = write(tmp_path / "c.json", {"controllers": [{"type": "openai", "config_file": "openai.json"}]})
    assert problems(["--config-file", str(config)], {}) == [
        f"api_key in {tmp_path / 'openai.json'}: the API key is empty; put the key there, "
        "or name it with api_key_env or api_key_file"]


def test_settings_are_typed_attributes_and_their_repr_shows_no_key(tmp_path: Path) -> None:
    header_value = "azure-header-secret-0123456789"
    config = write(tmp_path / "c.json", {"controllers": [
        {"type": "openai", "config": {"api_key": KEY, "headers": {"api-key": header_value}}}],
        "admin_key": "admin-secret-0123456789", "client_keys": ["client-secret-0123456789"]})
    settings, _ = parse_settings(["--config-file", str(config)], {})
    text = repr(settings)
    for secret in (KEY, header_value, "admin-secret-0123456789", "client-secret-0123456789"):
        assert secret not in text
    assert "max_body_size=33554432" in text  # the values themselves are there, by name
    assert not hasattr(settings, "document") and not hasattr(settings, "values")
    # One attribute per option, each of the option's declared type.
    for option in OPTIONS:
        value = getattr(settings, option.dest)
        assert value == option.default or option.dest in ("admin_key", "client_keys"), option.dest
        if option.default is not None:
            assert isinstance(value, type(option.default)), option.dest


def test_check_config_hides_the_values_of_a_base_url_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"controllers": [{"type": "openai", "config": {
        "api_key": "sk-check-0123456789abcdef",
        "base_url": "https://user:PASSWORD99@func.example.net/api/v1?code=SECRETFUNCKEY123456"}}]}))
    assert main(["--config-file", str(config), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert "SECRETFUNCKEY123456" not in out and "PASSWORD99" not in out
    assert "base_url=https://(redacted)@func.example.net/api/v1?code=(redacted)" in out


@pytest.mark.parametrize("line", [f'api_key: "{KEY}', f"api_key: {KEY}\n  bad: [", f"api_key: '{KEY}\n",
                                  f"api_key: !{KEY}", f"api_key: *{KEY}"])
def test_a_yaml_error_says_where_but_never_prints_the_line(tmp_path: Path, line: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "c.yaml", f"controllers:\n  - type: openai\n    config:\n      {line}\n")
    assert main(["--config-file", str(config), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err and "column" in err
    assert "SECRET" not in err and "Traceback" not in err


def test_a_yaml_character_error_says_where_and_what(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "c.yaml", f"controllers:\n  - type: openai\n    config:\n      api_key: {KEY}\x01\n")
    assert main(["--config-file", str(config), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at character" in err and "special characters are not allowed" in err
    assert "SECRET" not in err and "tag or an alias" not in err
