"""The wheel, the systemd unit, the Dockerfile, and the status page in a real browser."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import orjson
import pytest

from chatgpt_apiserver.config.options import OPTIONS_BY_KEY
from chatgpt_apiserver.config.settings import build_parser, parse_settings
from chatgpt_apiserver.server import RELOAD_SIGNAL, STOP_SIGNALS

from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .test_process import clean_env, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "etc" / "systemd" / "chatgpt-apiserver.service"
ARTIFACTS = ROOT / "test-artifacts"
DATA = ("chatgpt_apiserver/web/static/status.html", "chatgpt_apiserver/endpoints/openai-endpoint-schemas.json",
        "chatgpt_apiserver/clients/prices.json")  # read at run time: a non-editable install needs them


def test_the_wheel_carries_every_data_file_and_builds_without_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: pip builds in the tree it is given
    source.mkdir()
    for name in ("setup.py", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "chatgpt_apiserver", source / "chatgpt_apiserver",
                    ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    output = built.stdout + built.stderr
    # What setuptools says of a data directory it would stop shipping (any version since 62); its other
    # deprecation notices, which come and go with its releases, are not this test's business.
    assert "absent from the `packages` configuration" not in output and "as data is deprecated" not in output, \
        output[-3000:]
    names = set(zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))).namelist())
    assert set(DATA) <= names and not any("__pycache__" in name for name in names)
    modules = {name for name in names if name.endswith(".py")}
    assert modules == {str(path.relative_to(ROOT)) for path in (ROOT / "chatgpt_apiserver").rglob("*.py")}


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_fits_the_server() -> None:
    unit = unit_settings()
    command, *args = shlex.split(unit["ExecStart"][0])
    assert Path(command).name in console_scripts()
    build_parser().parse_args(args)  # every flag it passes is one the server takes
    kill, flag, pid = shlex.split(unit["ExecReload"][0])
    assert Path(kill).name == "kill" and signal.Signals["SIG" + flag.lstrip("-")] == RELOAD_SIGNAL
    assert pid == "$MAINPID"
    assert signal.Signals[unit["KillSignal"][0]] in STOP_SIGNALS
    stop = float(unit["TimeoutStopSec"][0].rstrip("s"))
    assert stop > OPTIONS_BY_KEY["shutdown_timeout"].default  # the drain fits before the SIGKILL
    # Without Redis, clients' usage and budgets are kept in the state directory systemd provides.
    assert unit["StateDirectory"] == ["chatgpt-apiserver"]
    assert args[args.index("--state-dir") + 1] == "${STATE_DIRECTORY}"


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "scripts/test installs systemd for systemd-analyze"
    unit = tmp_path / "chatgpt-apiserver.service"
    unit.write_text(UNIT.read_text().replace("/opt/chatgpt-apiserver/bin/chatgpt-apiserver",
                                            str(Path(sys.executable).parent / "chatgpt-apiserver")))
    done = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)], capture_output=True,
                          text=True, timeout=60)
    found = re.search(r"Overall exposure level for chatgpt-apiserver\.service: ([\d.]+)", done.stdout)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    assert float(found.group(1)) <= 2.0, done.stdout  # systemd rates 0 (locked down) to 10 (exposed)


def console_scripts() -> dict[str, str]:
    return {entry.name: entry.value for entry in entry_points(group="console_scripts")
            if entry.value.startswith("chatgpt_apiserver.")}


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "scripts/test installs systemd for systemd-analyze"
    # The unit names the documented install prefix; point it at this checkout's installed command.
    unit = tmp_path / "chatgpt-apiserver.service"
    command = str(Path(sys.executable).parent / "chatgpt-apiserver")
    unit.write_text(UNIT.read_text().replace("/opt/chatgpt-apiserver/bin/chatgpt-apiserver", command))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "chatgpt-apiserver.service" not in done.stderr, done.stderr  # no warnings about our unit


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def test_dockerfile_fits_the_server(tmp_path: Path) -> None:
    final = final_stage(dockerfile())
    last: dict[str, str] = dict(final)
    [entrypoint] = orjson.loads(last["ENTRYPOINT"])
    assert console_scripts()[entrypoint] == "chatgpt_apiserver.cli:main"
    assert signal.Signals[last["STOPSIGNAL"]] in STOP_SIGNALS
    assert last["USER"] not in ("", "root", "0")
    # The image's environment, read by the server as its settings: it listens where the image says.
    image_env = dict(item.split("=", 1) for item in shlex.split(last["ENV"]))
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "chatgpt-apiserver.json").write_bytes(orjson.dumps({"controllers": [{"type": "mock"}]}))
    settings, _ = parse_settings([], {**image_env, "CHATGPT_APISERVER_CONFIG_PATH": str(config_dir),
                                      "CHATGPT_APISERVER_CLIENT_KEYS": "k"})
    assert str(settings.port) == last["EXPOSE"] and settings.host == "0.0.0.0"
    assert settings.location.path == config_dir / "chatgpt-apiserver.json"
    assert settings.sources["port"] == "env CHATGPT_APISERVER_PORT"
    assert settings.state_dir == last["VOLUME"]  # clients' usage and budgets outlive the container


def test_the_images_start_command_runs_in_a_clean_virtualenv(tmp_path: Path) -> None:
    final = final_stage(dockerfile())
    env_line = next(rest for word, rest in final if word == "ENV")
    image_env = dict(item.split("=", 1) for item in shlex.split(env_line))
    entrypoint = orjson.loads(next(rest for word, rest in final if word == "ENTRYPOINT"))
    healthcheck = next(rest for word, rest in final if word == "HEALTHCHECK")
    health_cmd = orjson.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
                   check=True, timeout=600, capture_output=True)
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "chatgpt-apiserver.json").write_bytes(orjson.dumps({"controllers": [{"type": "mock"}]}))
    port = free_port()
    env = clean_env(**image_env)
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", CHATGPT_APISERVER_CONFIG_PATH=str(config_dir),
               CHATGPT_APISERVER_PORT=str(port), CHATGPT_APISERVER_CLIENT_KEYS="container-key",
               CHATGPT_APISERVER_STATE_DIR=str(tmp_path / "state"))  # the image's volume, here
    assert image_env["CHATGPT_APISERVER_HOST"] == "0.0.0.0"
    process = subprocess.Popen(entrypoint, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        health = [part.replace("8080", str(port)) if isinstance(part, str) else part for part in health_cmd]
        health[0] = str(venv / "bin" / health[0])
        assert subprocess.run(health, timeout=30).returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert (tmp_path / "state" / "clients.json").exists()  # the client's usage, written on the way out
    # Without client keys, the same public listener is refused with a clear message.
    env.pop("CHATGPT_APISERVER_CLIENT_KEYS")
    done = subprocess.run(entrypoint, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "refusing to listen on 0.0.0.0" in done.stderr


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("scripts/test installs Debian's chromium for this test")


def test_status_page_renders_controllers_in_headless_chromium(stack: Stack, tmp_path: Path) -> None:
    cool, fine = stack.fake("cool-one"), stack.fake("fine-one")
    cool.cue(Cue(mode="status", status=429, headers={"Retry-After": "120"}))
    stack.gateway({"controllers": [openai_controller(cool, weight=5, rpm=600, tpm=90000),
                                   openai_controller(fine, max_concurrency=8)]})
    for _ in range(3):
        assert stack.request("POST", "/v1/chat/completions", {"model": "m", "messages": [
            {"role": "user", "content": "hi"}]})[0] == 200
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000", "--window-size=1280,720"]
    url = f"http://127.0.0.1:{stack.port}/"
    dom = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-controller="cool-one"' in html and 'data-controller="fine-one"' in html
    assert 'data-state="cooling"' in html and 'data-state="ok"' in html
    assert "requests " in html and "concurrency 0 / 8" in html
    shot = subprocess.run([chromium(), *flags, f"--screenshot={screenshot}", url], capture_output=True,
                          text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000


def test_status_page_asks_for_the_admin_key(stack: Stack) -> None:
    stack.gateway({"admin_key": "admin-secret", "controllers": [{"type": "mock"}]})
    status, headers, body = stack.request("GET", "/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"Admin key" in body and b"admin-secret" not in body


@pytest.mark.parametrize("path", ["/", "/dashboard", "/dashboard/"])
def test_status_page_routes(stack: Stack, path: str) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]})
    assert stack.request("GET", path)[0] == 200


