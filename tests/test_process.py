"""The server as a real process: scripts/run's demo, systemd notify, SIGTERM exit."""

from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start listening")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGPT_APISERVER", "CONFIG_", "OPENAI_"))}
    env.update(extra)
    return env


def stream_once(port: int) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": 5}
    connection.request("POST", "/v1/chat/completions", body=orjson.dumps(body),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    result = response.status, response.getheader("Content-Type") or "", response.read()
    connection.close()
    return result


def test_scripts_run_serves_the_labelled_demo_with_no_config(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen([str(ROOT / "scripts" / "run"), "--port", str(port), "--config-path", str(tmp_path)],
                               cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        status, content_type, body = stream_once(port)
        assert status == 200 and content_type.startswith("text/event-stream")
        assert body.endswith(b"data: [DONE]\n\n")
        assert b'"demo "' in body and b'"answer "' in body
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert b"DEMO MODE" in err


def test_systemd_notify_ready_and_stopping(tmp_path: Path) -> None:
    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(30)
    config = tmp_path / "chatgpt-apiserver.json"
    config.write_bytes(orjson.dumps({"controllers": [{"type": "mock"}]}))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(config),
                                "--port", str(port)], env=clean_env(NOTIFY_SOCKET=notify_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1") and f"MAINPID={process.pid}" in ready
        wait_for_port(port, process)
        process.send_signal(signal.SIGHUP)
        assert listener.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert listener.recv(4096).decode() == "READY=1"
        process.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        listener.close()
    assert process.returncode == 0


@pytest.mark.parametrize("flag", ["--port", "--host"])
def test_cannot_listen_is_a_clear_error(tmp_path: Path, flag: str) -> None:
    config = tmp_path / "c.json"
    config.write_bytes(orjson.dumps({"controllers": [{"type": "mock"}]}))
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    value = str(blocker.getsockname()[1]) if flag == "--port" else "192.0.2.1"
    try:
        done = subprocess.run([sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(config), flag, value,
                               "--allow-unauthenticated"],
                              env=clean_env(), capture_output=True, text=True, timeout=60)
    finally:
        blocker.close()
    assert done.returncode == 1
    assert "cannot listen" in done.stderr and "Traceback" not in done.stderr


def test_a_reload_right_after_ready_never_kills_the_server(tmp_path: Path) -> None:
    """systemd may send SIGHUP the moment it reads READY=1: the handlers must exist before it is sent."""
    config = tmp_path / "chatgpt-apiserver.json"
    config.write_bytes(orjson.dumps({"controllers": [{"type": "mock"}]}))
    for attempt in range(6):
        notify_path = str(tmp_path / f"notify-{attempt}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(notify_path)
        listener.settimeout(15)
        process = subprocess.Popen([sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(config),
                                    "--port", str(free_port())], env=clean_env(NOTIFY_SOCKET=notify_path),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert listener.recv(4096).decode().startswith("READY=1")
            process.send_signal(signal.SIGHUP)  # at once, as systemctl reload right after start does
            assert listener.recv(4096).decode().startswith("RELOADING=1"), attempt
            assert listener.recv(4096).decode() == "READY=1"
            assert process.poll() is None, attempt
            process.send_signal(signal.SIGTERM)
            assert listener.recv(4096).decode() == "STOPPING=1"
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            _out, err = process.communicate(timeout=30)
            listener.close()
        assert process.returncode == 0, (attempt, err.decode())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_running_out_of_descriptors_backs_off_and_recovers(tmp_path: Path) -> None:
    """Under ulimit -n 256, 400 connections: accepting pauses and is logged once, then serving resumes."""
    config = tmp_path / "chatgpt-apiserver.json"
    config.write_bytes(orjson.dumps({"controllers": [{"type": "mock"}]}))
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(config), "--port", str(port)],
            env=clean_env(), stdout=subprocess.DEVNULL, stderr=log,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    clients: list[socket.socket] = []
    try:
        wait_for_port(port, process)
        for _ in range(400):  # the backlog takes what the server cannot accept
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        cpu_before = cpu_seconds(process.pid)
        time.sleep(3)
        spent = cpu_seconds(process.pid) - cpu_before
        assert process.poll() is None
        assert spent < 1.0, f"{spent:.2f} s of CPU in 3 s while out of descriptors"  # no busy accept loop
        for sock in clients:
            sock.close()
        clients.clear()
        deadline = time.monotonic() + 15
        while True:  # serving resumes once the descriptors are free again
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/healthz")
                status = connection.getresponse().status
                connection.close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not serve again"
                time.sleep(0.2)
        assert status == 200
    finally:
        for sock in clients:
            sock.close()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log_path.read_text()
    assert len(text) < 200_000, f"{len(text)} bytes of log"
    assert "cannot accept connections: Too many open files (EMFILE)" in text
    assert "Traceback" not in text
    assert process.returncode == 0


def test_the_server_warns_at_start_when_clients_have_no_admin_key(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_bytes(orjson.dumps({"controllers": [{"type": "mock"}],
                                     "clients": [{"name": "team", "key": "team-key", "budget": {"usd": 1}}]}))
    blocker = socket.socket()  # the server stops right after its start-up checks: it cannot listen here
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        done = subprocess.run([sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(config), "--port",
                               str(blocker.getsockname()[1])], env=clean_env(), capture_output=True, text=True,
                              timeout=60)
    finally:
        blocker.close()
    assert done.returncode == 1
    assert "admin_key is not set" in done.stderr and "client team: its budget is in USD only" in done.stderr
    assert "team-key" not in done.stderr
