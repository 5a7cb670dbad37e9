"""Instructions the gateway executes per request, counted by callgrind: a measure that does not move with the
machine's load, for changes too small for the side-by-side figures to tell apart from noise.

    scripts/bench-instructions [--requests N] [--clients N] [--access-log] [--redis] [--tree DIR --python PY]

One gateway (two controllers on the fake upstream of scripts/bench_upstream.py) runs under valgrind's callgrind
with counting off; 300 non-streamed chat requests warm it up, then callgrind counts N more, one at a time over
4 keep-alive connections, each with `Authorization: Bearer` the last client's key. Printed: instructions per
request (the whole process, its log writer thread included). `--tree`/`--python`: another checkout and its
interpreter (a commit before, say). PYTHONMALLOC=malloc, so that counts do not depend on pymalloc's arenas.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import (
    MESSAGES_2,
    PYTHON,
    ROOT,
    SCRIPTS,
    bench_clients,
    client_key,
    free_port,
    gateway_command,
    gateway_config,
    redis_server,
    start,
    stop,
    wait_port,
)

WARM_UP = 300
CONNECTIONS = 4


def send(port: int, count: int, bearer: str) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES_2})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"}
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(CONNECTIONS)]
    for number in range(count):
        connection = connections[number % CONNECTIONS]
        connection.request("POST", "/v1/chat/completions", body, headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"the gateway answered {answer.status}")
    for connection in connections:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=0, help="clients configured (keys as SHA-256 digests)")
    parser.add_argument("--access-log", action="store_true", help="the access log on (to a file)")
    parser.add_argument("--redis", action="store_true", help="rpm/tpm limits, their buckets in a Redis")
    parser.add_argument("--limited", action="store_true", help="rpm/tpm limits, their buckets in memory")
    parser.add_argument("--tree", default=str(ROOT), help="the checkout to run (default: this one)")
    parser.add_argument("--python", default=PYTHON, help="its interpreter")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        upstream_port = free_port()
        upstream = start([PYTHON, str(SCRIPTS / "bench_upstream.py"), str(upstream_port)], core=1)
        redis = None
        gateway = None
        try:
            wait_port(upstream_port)
            extra: list[str] = []
            if args.redis:
                redis, redis_port = redis_server()
                extra = ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
            path = Path(workdir) / "gateway.json"
            path.write_text(json.dumps(gateway_config(upstream_port, args.redis or args.limited,
                                                      bench_clients(args.clients))))
            port = free_port()
            out = Path(workdir) / "callgrind.out"
            log = Path(workdir) / "gateway.log"
            log_file = log.open("ab")  # the gateway writes it until it stops
            gateway = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                 *gateway_command(args.python, path, port, args.access_log, extra)],
                cwd=args.tree, env={**os.environ, "PYTHONMALLOC": "malloc"},
                stdout=log_file, stderr=subprocess.STDOUT)
            wait_port(port, timeout=300)  # a slow start under valgrind
            bearer = client_key(args.clients - 1) if args.clients else "sk-none"
            send(port, WARM_UP, bearer)
            subprocess.run(["callgrind_control", "--instr=on", str(gateway.pid)], check=True, capture_output=True)
            send(port, args.requests, bearer)
            subprocess.run(["callgrind_control", "--instr=off", str(gateway.pid)], check=True, capture_output=True)
            gateway.send_signal(signal.SIGTERM)  # callgrind writes its counts as the gateway exits
            gateway.wait(300)
            gateway = None
            log_file.close()
            totals = [int(found) for found in re.findall(r"^totals: (\d+)$", out.read_text(), re.M)]
            if not totals:
                raise RuntimeError(f"callgrind wrote no totals; the gateway's log:\n{log.read_text()[-2000:]}")
            print(json.dumps({"instructions_per_request": round(sum(totals) / args.requests),
                              "requests": args.requests, "clients": args.clients, "access_log": args.access_log,
                              "redis": args.redis, "tree": args.tree}))
        finally:
            if gateway is not None:
                gateway.kill()
                gateway.wait()
            if redis is not None:
                stop(redis)
            stop(upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
