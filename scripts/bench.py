"""Benchmarks for chatgpt-apiserver: throughput, added latency, streaming, open streams, memory.

Run through scripts/bench (which installs wrk and the package). Everything runs on loopback:
  core 0: the gateway (or the bare Tornado reference server), pinned with taskset;
  core 1: the fast fake upstream, wrk and the streaming client.
Prints a table and writes bench-results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import Connection, StreamStats, percentile, request_bytes
from bench_upstream import EMBEDDINGS as EMBEDDINGS_ANSWER

ROOT = Path(__file__).resolve().parent.parent
ROUND = 20  # streams per round when direct and gateway streams alternate
PAIRED_ROUNDS = {False: 15, True: 4}  # at least this many rounds side by side (full run, --quick): see paired()
PAIRED_ROUND_SECONDS = 2
PYTHON = sys.executable
Server = tuple[subprocess.Popen[bytes], int]  # a started process and its port
SCRIPTS = ROOT / "scripts"
MESSAGES_2 = [{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "Say hello in one short sentence, please."}]
MESSAGES_100 = [{"role": "user" if i % 2 == 0 else "assistant",
                 "content": f"Message number {i} of a long conversation about load balancing and rate limits."}
                for i in range(100)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(cmd: list[str], core: int, log: Path | None = None, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen(["taskset", "-c", str(core), *cmd], stdout=out, stderr=out,
                            env={**os.environ, **(env or {})}, cwd=cwd)


def redis_server(databases: int = 1) -> Server:
    """A Redis with no persistence on core 1 (with the load generator and the fake upstream)."""
    port = free_port()
    process = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--databases", str(databases)], core=1)
    wait_port(port)
    return process, port


def client_key(number: int) -> str:
    """The key of bench client `number` (every bench presents the last configured one)."""
    return f"sk-bench-client-{number:04d}-0123456789abcdef"


def bench_clients(count: int) -> list[dict[str, Any]]:
    """`count` clients with nothing to check, their keys given as SHA-256 digests."""
    return [{"name": f"client-{number}", "key_sha256": hashlib.sha256(client_key(number).encode()).hexdigest()}
            for number in range(count)]


def gateway_config(upstream_port: int, limited: bool = False,
                   clients: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The benches' gateway: two controllers on the fake upstream (with rpm/tpm limits too high to bind when
    `limited`), and `clients` if any."""
    base = f"http://127.0.0.1:{upstream_port}/v1"
    limits = {"rpm": 10_000_000, "tpm": 10_000_000_000} if limited else {}
    return {**({"clients": clients} if clients else {}), "controllers": [
        {"type": "openai", "name": name, **limits, "config": {"api_key": f"sk-{name}-000000000000", "base_url": base}}
        for name in ("bench-a", "bench-b")]}


def gateway_command(python: str, config: Path, port: int, log: bool, extra: Sequence[str] = ()) -> list[str]:
    """How the benches start that gateway (with the access log, at level info, when `log`)."""
    return [python, "-m", "chatgpt_apiserver", "--config-file", str(config), "--port", str(port),
            "--upstream-max-connections", "20000", "--log-level", "info" if log else "warning",
            "--access-log", "true" if log else "false", *extra]


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_kb(pid: int) -> int:
    """Resident memory of `pid` (the taskset child execs, so the pid is the server's)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def body(messages: list[dict[str, str]] = MESSAGES_2, **bench: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": "gpt-4o-mini", "messages": messages}
    if bench.pop("stream", False):
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    if bench:
        payload["bench"] = bench
    return payload


def wrk(port: int, payload: dict[str, Any], connections: int, seconds: float,
        path: str = "/v1/chat/completions", bearer: str = "") -> dict[str, float]:
    """Run wrk on core 1 (with `Authorization: Bearer <bearer>` when one is given); return req/s and latency
    percentiles in ms."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(json.dumps(payload))}\n")
        if bearer:
            script.write(f'wrk.headers["Authorization"] = "Bearer {bearer}"\n')
    duration = f"-d{max(1, round(seconds))}s"
    done = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", duration, "--latency",
                           "-s", script.name, f"http://127.0.0.1:{port}{path}"],
                          capture_output=True, text=True, check=True)
    os.unlink(script.name)
    out = done.stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for label, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        found = re.search(rf"{re.escape(label)}\s+([\d.]+)(us|ms|s)", out)
        assert found, out
        value, unit = float(found.group(1)), found.group(2)
        result[key] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    return result


class Bench:
    """Starts the processes and runs each measurement."""

    def __init__(self, quick: bool, workdir: Path, only: frozenset[str] = frozenset()) -> None:
        self.quick = quick
        self.only = only  # figure letters; empty: all of them
        self.workdir = workdir
        self.results: dict[str, Any] = {"quick": quick, "machine": machine()}
        self.worktrees: list[Path] = []  # checkouts of other commits (compare), removed at the end
        self.upstream_port = free_port()
        self.upstream = start([PYTHON, str(SCRIPTS / "bench_upstream.py"), str(self.upstream_port)], core=1)
        wait_port(self.upstream_port)

    def seconds(self, full: float) -> float:
        return max(2.0, full / 4) if self.quick else full

    def gateway(self, *extra: str, log: bool = False, limited: bool = False,
                clients: list[dict[str, Any]] | None = None, checkout: tuple[Path, str] = (ROOT, PYTHON)
                ) -> Server:
        """A gateway with two controllers on the fast upstream; `checkout`: the source tree and the Python of
        another commit (see `compare`)."""
        port = free_port()
        config = self.workdir / f"gateway-{port}.json"
        config.write_bytes(orjson.dumps(gateway_config(self.upstream_port, limited, clients)))
        tree, python = checkout
        args = gateway_command(python, config, port, log, extra)
        log_file = self.workdir / f"gateway-{port}.log"
        process = start(args, core=0, log=log_file, cwd=tree)
        try:
            wait_port(port)
        except RuntimeError:
            stop(process)
            raise RuntimeError(f"the gateway from {tree} did not start:\n{log_file.read_text()[-2000:]}") from None
        return process, port

    def reference(self) -> Server:
        port = free_port()
        process = start([PYTHON, str(SCRIPTS / "bench_reference.py"), str(port)], core=0)
        wait_port(port)
        return process, port

    def wants(self, figure: str) -> bool:
        return not self.only or figure in self.only

    def run(self) -> dict[str, Any]:
        gateway, port = self.gateway()
        try:
            wrk(port, body(), 32, 2)  # warm up
            if not self.only:
                self.results["upstream_check"] = self.upstream_check(port)
            if self.wants("a"):
                self.results["a_added_latency"] = self.added_latency(port)
            if self.wants("b"):
                self.results["b_throughput"] = self.throughput(port)
            if self.wants("c"):
                self.results["c_queueing"] = self.queueing(port)
            if self.wants("d"):
                self.results["d_streaming"] = uvloop.run(self.streaming(port))
            if self.wants("e"):
                self.results["e_open_streams"] = uvloop.run(self.open_streams(port, gateway.pid))
            if self.wants("f"):
                self.results["f_long_conversation"] = self.long_conversation(port)
            if self.wants("n"):
                self.results["n_stream_throughput"] = self.stream_throughput(port)
            if self.wants("i"):
                self.results["i_embeddings"] = self.embeddings_throughput(port)
            if self.wants("j"):
                self.results["j_responses_stream"] = uvloop.run(self._streaming(
                    port, {"model": "gpt-4o-mini", "input": "hi", "stream": True,
                           "bench": {"events": 20, "interval_ms": 5}}, "/v1/responses"))
        finally:
            stop(gateway)
        if self.wants("k"):
            self.results["k_affinity_memory"] = self.affinity_memory()
        if self.wants("g"):
            self.results["g_with_logs"] = self.with_logs()
        if self.wants("h"):
            self.results["h_redis"] = self.with_redis()
        if self.wants("l"):
            self.results["l_clients"] = self.with_clients()
        if self.wants("m"):
            self.results["m_fair_queue"] = self.fair_queue()
        if self.wants("o"):
            self.results["o_twins"] = self.twins()
        return self.results

    def paired(self, servers: dict[str, Callable[[], Server] | int], payload: dict[str, Any] | None = None,
               key: str = "") -> dict[str, float]:
        """Throughput at c=32 of several servers side by side: each is the port of one already running, or a
        function that starts one (started in turn, and stopped at the end, a failed start included). Measured
        in alternating rounds,
        so that a slow moment of the machine does not land on one of them only; medians per server. Each
        round starts with the next server: three identical gateways measured always in the same order gave
        the first one ~10% more than the others. Many short rounds rather than a few long ones: with six
        rounds of 4 s two identical gateways came out up to 10% apart, with fifteen of 2 s within 2% in a
        quiet run (figure (o) measures it in every run). A server that answers any request with an error
        fails the figure: a fast refusal is not throughput."""
        payload = payload or body()
        started: list[subprocess.Popen[bytes]] = []
        order: list[tuple[str, int]] = []
        try:
            for label, server in servers.items():
                if isinstance(server, int):
                    order.append((label, server))
                    continue
                process, port = server()
                started.append(process)
                order.append((label, port))
            rounds = -(-PAIRED_ROUNDS[self.quick] // len(order)) * len(order)  # each server first equally often
            seen: dict[str, list[float]] = {label: [] for label in servers}
            errors = dict.fromkeys(servers, 0.0)
            for _, port in order:
                wrk(port, payload, 32, 2, bearer=key)
            for number in range(rounds):
                for label, port in order[number % len(order):] + order[:number % len(order)]:
                    measured = wrk(port, payload, 32, PAIRED_ROUND_SECONDS, bearer=key)
                    seen[label].append(measured["rps"])
                    errors[label] += measured["errors"]
        finally:
            for process in started:
                stop(process)
        failing = {label: count for label, count in errors.items() if count}
        if failing:
            raise RuntimeError(f"non-2xx answers while measuring side by side: {failing}")
        return {f"{label}_rps": statistics.median(values) for label, values in seen.items()}

    def twins(self) -> dict[str, float]:
        """(o) The instrument itself: two identical gateways measured like (g), (h), (l) and (n). A ratio
        away from 1.00 is the machine's noise in this run, the margin to read those figures with."""
        figures = self.paired({"first": self.gateway, "second": self.gateway})
        figures["ratio"] = figures["second_rps"] / figures["first_rps"]
        return figures

    def stream_throughput(self, port: int) -> dict[str, float]:
        """(n) Streams/s of 7-event streams at c=32 (five deltas, usage, [DONE], sent by the upstream in one
        go) against the bare Tornado handler writing the same seven events with a flush each."""
        return self.against_reference(port, body(stream=True, events=5))

    def against_reference(self, port: int, payload: dict[str, Any]) -> dict[str, float]:
        """The gateway on `port` and the bare Tornado handler side by side; `ratio` is gateway / Tornado."""
        figures = self.paired({"gateway": port, "reference": self.reference}, payload)
        figures["ratio"] = figures["gateway_rps"] / figures["reference_rps"]
        return figures

    def embeddings_throughput(self, port: int) -> dict[str, float]:
        """(i) A ~2 MB embeddings answer (100 inputs x 1,536 floats) at c=8: MB/s through the gateway against
        the fake upstream direct, in alternating rounds."""
        payload = {"model": "text-embedding-3-small", "input": [f"chunk number {i} of a document" for i in range(100)]}
        size = len(EMBEDDINGS_ANSWER)
        rounds = 3 if self.quick else 5
        seen: dict[str, list[float]] = {"direct": [], "gateway": []}
        for target in (self.upstream_port, port):
            wrk(target, payload, 8, 1, "/v1/embeddings")
        for _ in range(rounds):
            for label, target in (("direct", self.upstream_port), ("gateway", port)):
                seen[label].append(wrk(target, payload, 8, self.seconds(4), "/v1/embeddings")["rps"] * size / 1e6)
        direct, gateway = statistics.median(seen["direct"]), statistics.median(seen["gateway"])
        return {"direct_mb_s": direct, "gateway_mb_s": gateway, "ratio": gateway / direct, "answer_bytes": size}

    def affinity_memory(self) -> dict[str, float]:
        """(k) Resident bytes per entry with 1,000,000 affinity entries in memory (a fresh process)."""
        done = subprocess.run([PYTHON, str(SCRIPTS / "bench_affinity.py"), "1000000"], capture_output=True,
                              text=True, check=True)
        figures: dict[str, float] = json.loads(done.stdout)
        return figures

    def with_logs(self) -> dict[str, float]:
        """(b) with the access log on against the same gateway with it off."""
        figures = self.paired({"quiet": self.gateway, "logged": functools.partial(self.gateway, log=True)})
        figures["ratio_to_b"] = figures["logged_rps"] / figures["quiet_rps"]
        return figures

    def with_clients(self, count: int = 1000) -> dict[str, float]:
        """(l) (b) with `count` clients configured (keys as SHA-256 digests), so that every request is
        authenticated by its key and accounted (usage, cost, metrics), against the same gateway with no
        clients; and, reported beside it, the same clients each with rpm, tpm and a token budget (every request
        also admitted by its buckets and budget and told its six x-ratelimit-* headers). wrk presents the last
        client's key to all three."""
        plain = bench_clients(count)
        limited = [{**client, "rpm": 10_000_000, "tpm": 10_000_000_000,
                    "budget": {"tokens": 10**15, "period": "month"}} for client in plain]
        figures = self.paired({"no_clients": self.gateway, "clients": functools.partial(self.gateway, clients=plain),
                               "limited_clients": functools.partial(self.gateway, clients=limited)},
                              key=client_key(count - 1))
        figures["ratio"] = figures["clients_rps"] / figures["no_clients_rps"]
        figures["limited_ratio"] = figures["limited_clients_rps"] / figures["no_clients_rps"]
        figures["clients_configured"] = count
        return figures

    def fair_queue(self) -> dict[str, float]:
        """(m) The fair queue's cost per enqueue and dequeue with 10,000 waiting over 1,000 clients (its own
        process: scripts/bench_fair_queue.py)."""
        done = subprocess.run(["taskset", "-c", "0", PYTHON, str(SCRIPTS / "bench_fair_queue.py")],
                              capture_output=True, text=True, check=True)
        figures: dict[str, float] = json.loads(done.stdout)
        return figures

    def with_redis(self) -> dict[str, float]:
        """(b) again with rpm/tpm limits, their buckets in memory and in Redis."""
        redis, redis_port = redis_server()
        try:
            figures = self.paired({"memory": functools.partial(self.gateway, limited=True),
                                   "redis": functools.partial(self.gateway, "--redis-url",
                                                              f"redis://127.0.0.1:{redis_port}/0", limited=True)})
        finally:
            stop(redis)
        figures["ratio"] = figures["redis_rps"] / figures["memory_rps"]
        return figures

    def upstream_check(self, gateway_port: int) -> dict[str, float]:
        direct = wrk(self.upstream_port, body(), 32, self.seconds(5))["rps"]
        via = wrk(gateway_port, body(), 32, self.seconds(5))["rps"]
        return {"upstream_rps": direct, "gateway_rps": via, "ratio": direct / via}

    def added_latency(self, port: int) -> dict[str, float]:
        return self.added_latencies({"gateway": port})["gateway"]

    def added_latencies(self, ports: dict[str, int]) -> dict[str, dict[str, float]]:
        """(a) of each server: at c=1 in rounds, each round the fake upstream direct and then every server,
        starting with the next one in turn; a round's added p50/p99 is the server's less the direct one's of
        the same round, and each figure is the median over the rounds. A server that answers errors fails it:
        a refusal is not latency."""
        order = list(ports.items())
        rounds = -(-(3 if self.quick else 6) // len(order)) * len(order)  # each server first equally often
        seen: dict[str, dict[str, list[float]]] = {
            label: {"added_p50_ms": [], "added_p99_ms": [], "direct_p50_ms": [], "direct_p99_ms": []}
            for label in ports}
        for number in range(rounds):
            direct = wrk(self.upstream_port, body(), 1, self.seconds(3))
            for label, port in order[number % len(order):] + order[:number % len(order)]:
                via = wrk(port, body(), 1, self.seconds(3))
                if via["errors"]:
                    raise RuntimeError(f"{label}: non-2xx answers while measuring (a)")
                figures = seen[label]
                figures["added_p50_ms"].append(via["p50_ms"] - direct["p50_ms"])
                figures["added_p99_ms"].append(via["p99_ms"] - direct["p99_ms"])
                figures["direct_p50_ms"].append(direct["p50_ms"])
                figures["direct_p99_ms"].append(direct["p99_ms"])
        return {label: {name: statistics.median(values) for name, values in figures.items()}
                for label, figures in seen.items()}

    def throughput(self, port: int) -> dict[str, float]:
        """(b) The gateway against the bare Tornado handler, side by side in alternating rounds."""
        return self.against_reference(port, body())

    def queueing(self, port: int) -> dict[str, float]:
        payload = body(delay_ms=100)
        for port_ in (self.upstream_port, port):  # warm up: the gateway opens its 200 upstream connections
            wrk(port_, payload, 200, 1)
        # At least 4 s even in a quick run: 200 clients start in step, and their first waves queue behind
        # one another until their timing spreads out, which takes a second or two.
        seconds = max(4.0, self.seconds(8))
        direct = wrk(self.upstream_port, payload, 200, seconds)
        via = wrk(port, payload, 200, seconds)
        return {"direct_rps": direct["rps"], "gateway_rps": via["rps"], "ratio": via["rps"] / direct["rps"],
                "errors": via["errors"]}

    async def streaming(self, port: int) -> dict[str, float]:
        """As OpenAI streams: the role event with the headers, then 20 events 5 ms apart; and a variant whose
        first event comes 5 ms after the headers (each hop then wakes an idle core)."""
        figures = await self._streaming(port, body(stream=True, events=20, interval_ms=5, role_first=1))
        late = await self._streaming(port, body(stream=True, events=20, interval_ms=5))
        figures.update({f"late_first_event_{key}": value for key, value in late.items()})
        return figures

    async def _streaming(self, port: int, payload: dict[str, Any],
                         path: str = "/v1/chat/completions") -> dict[str, float]:
        count = 60 if self.quick else 200
        direct, via = Connection(self.upstream_port), Connection(port)
        results: dict[str, list[StreamStats]] = {"direct": [], "gateway": []}
        to_direct = request_bytes(self.upstream_port, path, payload)
        to_gateway = request_bytes(port, path, payload)
        try:
            for _ in range(count // ROUND):  # interleaved rounds, as for (a)
                for _ in range(ROUND):
                    results["direct"].append(await direct.stream(to_direct))
                for _ in range(ROUND):
                    results["gateway"].append(await via.stream(to_gateway))
        finally:
            direct.close()
            via.close()

        def figures(stats: list[StreamStats]) -> tuple[float, float, float]:
            ttfts = [s.ttft * 1000 for s in stats]
            gaps = [g * 1000 for s in stats for g in s.gaps]
            return percentile(ttfts, 0.5), percentile(ttfts, 0.99), percentile(gaps, 0.99)

        d50, d99, dgap = figures(results["direct"])
        g50, g99, ggap = figures(results["gateway"])
        incomplete = sum(1 for s in results["gateway"] if not s.done or s.error)
        return {"added_ttft_p50_ms": g50 - d50, "added_ttft_p99_ms": g99 - d99, "added_gap_p99_ms": ggap - dgap,
                "direct_ttft_p50_ms": d50, "gateway_ttft_p50_ms": g50, "incomplete_streams": incomplete}

    async def open_streams(self, port: int, pid: int) -> dict[str, float]:
        total = 500 if self.quick else 5000
        events = 10 if self.quick else 30
        interval = 1000
        ramp_per_second = 1000
        payload = request_bytes(port, "/v1/chat/completions", body(stream=True, events=events, interval_ms=interval))
        before = rss_kb(pid)
        peak = [before]
        stats: list[StreamStats] = []

        async def one(delay: float) -> None:
            await asyncio.sleep(delay)
            connection = Connection(port)
            try:
                stats.append(await connection.stream(payload))
            except OSError as error:
                stats.append(StreamStats(error=str(error)))
            finally:
                connection.close()

        async def sample() -> None:
            while True:
                peak.append(rss_kb(pid))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(one(i / ramp_per_second) for i in range(total)))
        sampler.cancel()
        expected = events + 2  # the deltas, the usage event and [DONE]
        received = [s.events for s in stats]
        lost = sum(max(0, expected - r) for r in received)
        gaps = [g * 1000 for s in stats for g in s.gaps[:-2]]  # the last events arrive together
        return {"streams": total, "events_per_stream": events, "interval_ms": interval,
                "events_lost": lost, "failed_streams": sum(1 for s in stats if s.error or not s.done),
                "gap_p99_ms": percentile(gaps, 0.99), "gap_p99_over_interval": percentile(gaps, 0.99) / interval,
                "rss_before_mb": before / 1024, "rss_peak_mb": max(peak) / 1024,
                "kb_per_stream": (max(peak) - before) / total}

    def long_conversation(self, port: int) -> dict[str, float]:
        short = wrk(port, body(MESSAGES_2), 1, self.seconds(4))
        long = wrk(port, body(MESSAGES_100), 1, self.seconds(4))
        short_rps = wrk(port, body(MESSAGES_2), 32, self.seconds(4))["rps"]
        long_rps = wrk(port, body(MESSAGES_100), 32, self.seconds(4))["rps"]
        return {"p50_2_ms": short["p50_ms"], "p50_100_ms": long["p50_ms"],
                "latency_ratio": long["p50_ms"] / short["p50_ms"], "rps_2": short_rps, "rps_100": long_rps,
                "cost_ratio": short_rps / long_rps}

    def compare(self, revisions: list[str]) -> dict[str, Any]:
        """(b), (n), (a), (g) and (h) of other commits in the same run: each is checked out into the work
        directory with a virtualenv of its own, installed from its own setup.py under the versions this tree's
        virtualenv holds (so that only the code differs), and its gateway is measured side by side with this
        tree's and with bare Tornado, non-streamed and then streamed; then the added latency of each
        (`_compare_latency`); then (g) and (h), each commit against itself (`_compare_features`)."""
        constraints = self.workdir / "constraints.txt"
        frozen = subprocess.run([PYTHON, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                                text=True, check=True)
        constraints.write_text(frozen.stdout)
        checkouts = {"this tree": (ROOT, PYTHON)}
        for number, revision in enumerate(dict.fromkeys(revisions)):
            tree = self.workdir / f"revision-{number}"
            self.worktrees.append(tree)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), revision],
                           check=True)
            venv = self.workdir / f"venv-{number}"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                                        "-c", str(constraints), str(tree)], check=False, capture_output=True,
                                       text=True)
            if installed.returncode:
                raise RuntimeError(f"installing {revision} failed:\n{installed.stderr}")
            checkouts[revision] = (tree, str(venv / "bin" / "python"))
        figures: dict[str, Any] = {}
        servers: dict[str, Callable[[], Server] | int] = {
            label: functools.partial(self.gateway, checkout=checkout) for label, checkout in checkouts.items()}
        servers["bare Tornado"] = self.reference
        for name, payload in (("b", body()), ("n", body(stream=True, events=5))):
            rps = self.paired(servers, payload)
            figures[name] = {label: {"rps": rps[f"{label}_rps"], "ratio": rps[f"{label}_rps"] / rps["bare Tornado_rps"]}
                             for label in checkouts}
        figures["a"] = self._compare_latency(checkouts)
        figures.update(self._compare_features(checkouts))
        return figures

    def _compare_latency(self, checkouts: dict[str, tuple[Path, str]]) -> dict[str, Any]:
        """(a) of each checkout, every checkout's gateway running at once (idle but the one measured)."""
        started: list[subprocess.Popen[bytes]] = []
        ports: dict[str, int] = {}
        try:
            for label, checkout in checkouts.items():
                process, port = self.gateway(checkout=checkout)
                started.append(process)
                ports[label] = port
                wrk(port, body(), 32, 2)  # warm up
            return self.added_latencies(ports)
        finally:
            for process in started:
                stop(process)

    def _compare_features(self, checkouts: dict[str, tuple[Path, str]]) -> dict[str, Any]:
        """(g) and (h) of each checkout: its gateway with the access log (with Redis buckets) against its own
        gateway without (with buckets in memory), every gateway of every checkout in the same rounds. Each
        checkout's Redis gateways use a database of their own: key layouts differ between commits."""
        redis, redis_port = redis_server(databases=len(checkouts))
        figures: dict[str, Any] = {}
        try:
            for name in ("g", "h"):
                servers: dict[str, Callable[[], Server] | int] = {}
                for number, (label, checkout) in enumerate(checkouts.items()):
                    gateway = functools.partial(self.gateway, checkout=checkout)
                    if name == "g":
                        servers[f"{label} without"] = gateway
                        servers[f"{label} with"] = functools.partial(gateway, log=True)
                    else:
                        servers[f"{label} without"] = functools.partial(gateway, limited=True)
                        servers[f"{label} with"] = functools.partial(
                            gateway, "--redis-url", f"redis://127.0.0.1:{redis_port}/{number}", limited=True)
                rps = self.paired(servers)
                figures[name] = {label: {"rps": rps[f"{label} with_rps"],
                                         "ratio": rps[f"{label} with_rps"] / rps[f"{label} without_rps"]}
                                 for label in checkouts}
        finally:
            stop(redis)
        return figures

    def close(self) -> None:
        try:
            stop(self.upstream)
        finally:
            for tree in self.worktrees:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                               capture_output=True)
            if self.worktrees:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu": model, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d")}


TARGETS = [
    ("(b) throughput ratio to bare Tornado", ("b_throughput", "ratio"), ">=", 0.50, "{:.2f}"),
    ("(a) added p50 latency, c=1 (ms)", ("a_added_latency", "added_p50_ms"), "<=", 0.5, "{:.3f}"),
    ("(a) added p99 latency, c=1 (ms)", ("a_added_latency", "added_p99_ms"), "<=", 2.0, "{:.3f}"),
    ("(c) queueing: gateway / direct req/s", ("c_queueing", "ratio"), ">=", 0.9, "{:.2f}"),
    ("(d) added time to first token, p50 (ms)", ("d_streaming", "added_ttft_p50_ms"), "<=", 1.0, "{:.3f}"),
    ("(d) added time to first token, p99 (ms)", ("d_streaming", "added_ttft_p99_ms"), None, None, "{:.3f}"),
    ("(d) added gap between events, p99 (ms)", ("d_streaming", "added_gap_p99_ms"), None, None, "{:.3f}"),
    ("(d') first event 5 ms after headers: added TTFT p50",
     ("d_streaming", "late_first_event_added_ttft_p50_ms"), None, None, "{:.3f}"),
    ("(e) open streams held", ("e_open_streams", "streams"), None, None, "{:.0f}"),
    ("(e) events lost", ("e_open_streams", "events_lost"), "<=", 0, "{:.0f}"),
    ("(e) gap p99 / interval", ("e_open_streams", "gap_p99_over_interval"), "<=", 2.0, "{:.3f}"),
    ("(e) resident memory per stream (KB)", ("e_open_streams", "kb_per_stream"), "<=", 64, "{:.1f}"),
    ("(f) 100-message / 2-message cost (c=32)", ("f_long_conversation", "cost_ratio"), "<=", 2.0, "{:.2f}"),
    ("(f) 100-message / 2-message p50 (c=1)", ("f_long_conversation", "latency_ratio"), "<=", 2.0, "{:.2f}"),
    ("(n) 7-event streams/s: ratio to bare Tornado", ("n_stream_throughput", "ratio"), ">=", 0.8, "{:.2f}"),
    ("(i) 2 MB embeddings at c=8: MB/s ratio to direct", ("i_embeddings", "ratio"), ">=", 0.5, "{:.2f}"),
    ("(i) gateway MB/s", ("i_embeddings", "gateway_mb_s"), None, None, "{:.0f}"),
    ("(j) responses stream: added TTFT p50 (ms)", ("j_responses_stream", "added_ttft_p50_ms"), "<=", 1.0, "{:.3f}"),
    ("(j) responses stream: added TTFT p99 (ms)", ("j_responses_stream", "added_ttft_p99_ms"), None, None, "{:.3f}"),
    ("(k) affinity: bytes per entry (1M in memory)", ("k_affinity_memory", "bytes_per_entry"), "<=", 200, "{:.1f}"),
    ("(g) with access log: ratio to (b)", ("g_with_logs", "ratio_to_b"), ">=", 0.95, "{:.2f}"),
    ("(h) with Redis: ratio to in-memory buckets", ("h_redis", "ratio"), ">=", 0.8, "{:.2f}"),
    ("(l) 1,000 clients: ratio to no clients", ("l_clients", "ratio"), ">=", 0.95, "{:.2f}"),
    ("(l') ... each with rpm, tpm, budget: ratio", ("l_clients", "limited_ratio"), None, None, "{:.2f}"),
    ("(m) fair queue, 10k waiting: enqueue (us)", ("m_fair_queue", "enqueue_us"), None, None, "{:.2f}"),
    ("(m) fair queue, 10k waiting: dequeue (us)", ("m_fair_queue", "dequeue_us"), None, None, "{:.2f}"),
    ("(o) two identical gateways: ratio (noise)", ("o_twins", "ratio"), None, None, "{:.3f}"),
    ("fake upstream / gateway speed", ("upstream_check", "ratio"), ">=", 5.0, "{:.1f}"),
]


def table(results: dict[str, Any]) -> str:
    lines = [f"{'figure':<44} {'value':>10}  {'target':>9}  ok", "-" * 72]
    for label, (group, key), op, target, fmt in TARGETS:
        value = results.get(group, {}).get(key)
        if value is None:
            continue
        verdict = ""
        if op is not None and target is not None:
            good = value >= target if op == ">=" else value <= target
            verdict = "yes" if good else "NO"
        shown_target = f"{op} {target}" if op else ""
        lines.append(f"{label:<44} {fmt.format(value):>10}  {shown_target:>9}  {verdict}")
    b = results.get("b_throughput")
    if not b:
        return "\n".join(lines)
    lines.append("")
    lines.append(f"gateway {b.get('gateway_rps', 0):.0f} req/s, bare Tornado {b.get('reference_rps', 0):.0f} req/s, "
                 f"fake upstream {results.get('upstream_check', {}).get('upstream_rps', 0):.0f} req/s (c=32)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--only", default="", metavar="LETTERS",
                        help="measure only these figures, e.g. 'ad' for (a) and (d); for working on one figure")
    parser.add_argument("--compare", nargs="+", default=[], metavar="REVISION",
                        help="instead of the figures: (b), (n), (a), (g) and (h) of these commits (e.g. 94fb45b) side "
                             "by side with this tree's, in the same rounds (--only does not apply)")
    parser.add_argument("--output", default=str(ROOT / "bench-results.json"))
    args = parser.parse_args()
    only = frozenset(args.only.replace(",", ""))
    if only - set("abcdefghijklmno"):
        parser.error("--only takes letters from a to o")
    with tempfile.TemporaryDirectory() as workdir:
        bench = Bench(args.quick, Path(workdir), only)
        try:
            if args.compare:
                compared = bench.compare(args.compare)
                Path(args.output).write_text(json.dumps({"compare": compared, "machine": machine()}, indent=2) + "\n")
                for name, title, of in (("b", "(b) non-streamed, c=32", "of bare Tornado"),
                                        ("n", "(n) 7-event streams, c=32", "of bare Tornado"),
                                        ("g", "(g) access log on, c=32", "of the same commit with it off"),
                                        ("h", "(h) buckets in Redis, c=32", "of the same commit's in memory")):
                    print(title)
                    for label, figure in compared[name].items():
                        print(f"  {label:<20} {figure['rps']:>8.0f} req/s   {figure['ratio']:.2f} {of}")
                print("(a) added latency, c=1")
                for label, figure in compared["a"].items():
                    print(f"  {label:<20} p50 {figure['added_p50_ms']:.3f} ms   p99 {figure['added_p99_ms']:.3f} ms")
                print(f"\nwrote {args.output}")
                return 0
            results = bench.run()
        finally:
            bench.close()
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
