"""Log lines: none forged by a client, no secret in any of them, and a stuck log stream never stalls requests."""

from __future__ import annotations

import http.client
import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from chatgpt_apiserver.controllers.token_file import TokenFile
from chatgpt_apiserver.ops.logs import MAX_SECRETS, BufferedHandler, configure_logging, use_secrets
from chatgpt_apiserver.server import reload
from chatgpt_apiserver.web import access
from chatgpt_apiserver.web.access import FIELDS

from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .test_process import clean_env, free_port, wait_for_port

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
HEADER_SECRET = "azure-header-secret-5b7d9f1a3c"
NEW_KEY = "3f9a0c1e5b7d2f4a6c8e0b2d4f6a8c0e"  # as Azure's keys: nothing key-like, only knowing it redacts it


@pytest.fixture(params=["text", "json"])
def log_output(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO, BufferedHandler]]:
    """The gateway's own log set-up, writing to a string; restored afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    out = io.StringIO()
    handler = configure_logging("info", request.param, stream=out)
    yield request.param, out, handler
    root.removeHandler(handler)
    handler.close()
    for old in saved:
        root.addHandler(old)
    root.setLevel(level)


def written(handler: BufferedHandler, out: io.StringIO, until: str = "", timeout: float = 5.0) -> str:
    """Everything written so far (waiting until `until` shows up, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        handler.flush()
        assert handler.wait_written(timeout)
        if until in out.getvalue() or time.monotonic() > deadline:
            return out.getvalue()
        time.sleep(0.02)


def test_a_client_cannot_forge_a_log_line(stack: Stack, log_output: tuple[str, io.StringIO, BufferedHandler]) -> None:
    fmt, out, handler = log_output
    stack.gateway({"controllers": [{"type": "mock"}]})
    forged = "gpt-4o\n2026-01-01 00:00:00,000 ERROR chatgpt_apiserver.relay: forged\rstatus=500 \x1b[2J\u2028x"
    assert stack.request("POST", "/v1/chat/completions", {**BODY, "model": forged})[0] == 200
    logging.getLogger("chatgpt_apiserver.test").warning("model %s", forged)  # any message, not only access lines
    lines = written(handler, out, until="chatgpt_apiserver.access").splitlines()
    for line in lines:  # each line is a whole record of its own
        assert orjson.loads(line) if fmt == "json" else re.match(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line)
        assert "\x1b" not in line and "\r" not in line and "\u2028" not in line
    assert len([line for line in lines if "chatgpt_apiserver.access" in line or "forged" in line]) == 2, lines
    access = next(line for line in lines if "chatgpt_apiserver.access" in line)
    if fmt == "json":
        assert orjson.loads(access)["model"] == forged  # JSON keeps the value, escaped by JSON itself
    else:
        pairs = re.findall(r' ([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)', " " + access.split(": ", 1)[1])
        assert [key for key, _value in pairs] == list(FIELDS)  # the quoted model cannot add a field
        assert 'model="gpt-4o\\n2026-01-01 00:00:00,000 ERROR chatgpt_apiserver.relay: forged\\rstatus=500 ' \
               '\\x1b[2J\\u2028x"' in access


def test_a_secret_across_the_cut_is_still_redacted(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fake = stack.fake("up")
    body = b"e" * 290 + HEADER_SECRET.encode() + b" and more"  # the 300-byte snippet ends inside the secret
    fake.default = Cue(mode="status", status=500, body=body)
    stack.gateway({"controllers": [openai_controller(fake, config={"headers": {"api-key": HEADER_SECRET}})]})
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 500
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "controller up answered 500: eeee" in logged
    assert HEADER_SECRET[:8] not in logged and "[redac" in logged


def test_header_values_and_reloaded_keys_are_redacted(stack: Stack,
                                                      log_output: tuple[str, io.StringIO, BufferedHandler]) -> None:
    _fmt, out, handler = log_output
    fake = stack.fake("up")
    config = {"controllers": [openai_controller(fake, config={"headers": {"api-key": HEADER_SECRET}})]}
    stack.gateway(config)
    log = logging.getLogger("chatgpt_apiserver.test")
    log.warning("upstream said: %s", HEADER_SECRET)
    running = stack.running
    assert running is not None
    path = stack.tmp_path / "chatgpt-apiserver.json"
    path.write_bytes(orjson.dumps({"controllers": [
        {"type": "openai", "name": "new", "config": {"api_key": NEW_KEY, "base_url": fake.base_url}}]}))
    assert stack.loop.run(reload(running, ["--config-file", str(path), "--port", "0"]))
    log.warning("the new key: %s!", NEW_KEY)
    text = written(handler, out, until="the new key")
    assert HEADER_SECRET not in text and NEW_KEY not in text
    assert text.count("[redacted]") == 2


def test_renewed_tokens_never_push_the_configured_keys_out_of_the_scrubber(
        tmp_path: Path, log_output: tuple[str, io.StringIO, BufferedHandler]) -> None:
    _fmt, out, handler = log_output
    use_secrets((NEW_KEY.encode(),))  # a configured key, known from the start
    path = tmp_path / "token"
    tokens = TokenFile(path, "east")
    for number in range(MAX_SECRETS + 50):  # a token renewed every 30 minutes for a month and more
        path.write_text(f"renewed-token-{number:05d}\n")
        assert tokens.refresh(force=True)
    log = logging.getLogger("chatgpt_apiserver.test")
    log.warning("key %s, token %s, the one before %s", NEW_KEY, tokens.token.reveal() if tokens.token else "",
                f"renewed-token-{MAX_SECRETS + 48:05d}")
    text = written(handler, out, until="the one before")
    assert NEW_KEY not in text and "renewed-token-" not in text and text.count("[redacted]") == 3
    assert len(handler.secrets) < 10


def test_a_traceback_and_extra_fields_with_a_key_are_redacted(
        log_output: tuple[str, io.StringIO, BufferedHandler]) -> None:
    fmt, out, handler = log_output
    handler.secrets = (HEADER_SECRET.encode(),)
    log = logging.getLogger("chatgpt_apiserver.test")
    try:
        raise ValueError(f"upstream rejected {HEADER_SECRET}")
    except ValueError:
        log.exception("call failed", extra={"fields": {"detail": HEADER_SECRET}})
    text = written(handler, out, until="call failed")
    assert "ValueError: upstream rejected [redacted]" in (orjson.loads(text)["traceback"] if fmt == "json" else text)
    assert HEADER_SECRET not in text


def test_the_deferred_access_line_is_scrubbed(stack: Stack,
                                              log_output: tuple[str, io.StringIO, BufferedHandler]) -> None:
    _fmt, out, handler = log_output
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake, config={"headers": {"api-key": HEADER_SECRET}})]})
    assert stack.request("POST", "/v1/chat/completions", {**BODY, "model": HEADER_SECRET})[0] == 200
    text = written(handler, out, until="chatgpt_apiserver.access")
    assert "chatgpt_apiserver.access" in text and HEADER_SECRET not in text and "[redacted]" in text


def test_the_access_line_of_a_stream_says_the_tokens_it_used(stack: Stack,
                                                             log_output: tuple[str, io.StringIO, BufferedHandler]
                                                             ) -> None:
    fmt, out, handler = log_output
    fake = stack.fake("up")
    fake.default = Cue(mode="stream", events=3)
    stack.gateway({"controllers": [openai_controller(fake)]})
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    status, _, data = stack.request("POST", "/v1/chat/completions", body)
    assert status == 200 and data.endswith(b"data: [DONE]\n\n")
    events = [orjson.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: {")]
    [usage] = [event["usage"] for event in events if event.get("usage")]
    line = next(line for line in written(handler, out, until="chatgpt_apiserver.access").splitlines()
                if "chatgpt_apiserver.access" in line)
    said = orjson.loads(line)["tokens"] if fmt == "json" else int(re.search(r" tokens=(\S+)", line).group(1))  # type: ignore[union-attr]
    assert said == usage["total_tokens"] > 0


def test_a_log_stream_nobody_reads_never_stalls_requests(tmp_path: Path) -> None:
    """A stuck journald or Docker log pipe: lines wait (or are dropped), requests are still answered."""
    config = tmp_path / "c.json"
    config.write_bytes(orjson.dumps({"controllers": [{"type": "mock", "config": {"first_token_delay": 0}}]}))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(config),
                                "--port", str(port)], env=clean_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # a pipe of 64 KiB that this test does not read yet
    try:
        wait_for_port(port, process)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        started = time.monotonic()
        for _ in range(1500):  # about 350 KB of access log: the pipe fills after some 250 lines
            connection.request("GET", "/healthz")
            assert connection.getresponse().read()
        connection.close()
        assert time.monotonic() - started < 60
    finally:
        process.terminate()
        _out, log = process.communicate(timeout=30)  # now drain it: the server writes what waited, then exits
    assert process.returncode == 0
    assert log.count(b"chatgpt_apiserver.access") >= 1000


def test_a_full_queue_drops_whole_batches_and_says_so() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    handler = BufferedHandler(stream, limit=4096, max_batches=2)
    try:
        started = time.monotonic()
        for batch in range(40):  # ~40 x 4 KiB: the pipe (64 KiB) and two queued batches take part of it
            for line in range(16):
                handler.defer(lambda n: f"{n:0>250}\n", batch * 16 + line)
            handler.flush()
        assert time.monotonic() - started < 2  # flushing never waited for the stream
        assert handler.dropped > 0
        received: list[bytes] = []
        reader = threading.Thread(target=read_all, args=(read_end, received))
        reader.start()
        assert handler.wait_written(10)  # the stream moves again: what waited is written
        handler.defer(lambda _: "after\n", None)
        handler.flush()
        assert handler.wait_written(10)
    finally:
        handler.close()
        stream.close()
    reader.join(10)
    text = b"".join(received).decode()
    assert "log line(s) were dropped: the log stream did not keep up" in text and text.endswith("after\n")


def read_all(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as source:
        while chunk := source.read1(65536):
            into.append(chunk)


def test_the_access_logs_memory_of_written_values_is_bounded_and_quotes_as_before() -> None:
    """What a line shows of a method, path or model is remembered (a dict lookup instead of a regex) for at
    most WRITTEN_KEPT values of at most WRITTEN_LONGEST characters; a remembered value reads as a new one does."""
    access._WRITTEN.clear()
    assert access.text_value('a "quoted"\npath') == '"a \\"quoted\\"\\npath"'
    assert access.text_value('a "quoted"\npath') == '"a \\"quoted\\"\\npath"'  # (now from memory)
    for number in range(access.WRITTEN_KEPT + 10):
        assert access.text_value(f"/v1/responses/resp_{number}") == f"/v1/responses/resp_{number}"
        assert len(access._WRITTEN) <= access.WRITTEN_KEPT
    long = "m" * (access.WRITTEN_LONGEST + 1)
    assert access.text_value(long) == long and long not in access._WRITTEN
