"""Figure (m): the fair queue's cost per enqueue and per dequeue with 10,000 requests waiting over 1,000
clients (interactive and batch, shares 1 to 3), in steady state: each round serves the request at the head
and a random client adds one. Prints one JSON object (microseconds per operation, medians of 5 runs)."""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chatgpt_apiserver.scheduling.fair_queue import FairQueue, Tenant

WAITING = 10_000
CLIENTS = 1_000
ROUNDS = 100_000
PASSES = 20


@dataclass(eq=False)
class Waiter:
    tenant: Tenant
    finish: float = field(default=0.0)
    seq: int = 0


def run(seed: int) -> tuple[float, float, float]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    tenants = [Tenant(f"client-{i}", batch=i % 4 == 0, share=1 + i % 3) for i in range(CLIENTS)]
    queue: FairQueue[Waiter] = FairQueue()
    for i in range(WAITING):
        queue.push(Waiter(tenants[i % CLIENTS]))
    arrivals = [Waiter(rng.choice(tenants)) for _ in range(ROUNDS)]
    push, first, remove = queue.push, queue.first, queue.remove
    dequeue = enqueue = 0.0
    clock = time.perf_counter
    for waiter in arrivals:
        started = clock()
        head = first()
        assert head is not None
        remove(head, served=True)
        middle = clock()
        push(waiter)
        dequeue += middle - started
        enqueue += clock() - middle
    assert len(queue) == WAITING
    started = clock()
    for _ in range(PASSES):
        for _, _item in zip(range(100), queue, strict=False):  # a serve pass that looks at the first 100 waiting
            pass
    scan = (clock() - started) / PASSES
    return enqueue / ROUNDS * 1e6, dequeue / ROUNDS * 1e6, scan * 1e6


def main() -> int:
    results = [run(seed) for seed in range(5)]
    print(json.dumps({"waiting": WAITING, "clients": CLIENTS,
                      "enqueue_us": statistics.median(r[0] for r in results),
                      "dequeue_us": statistics.median(r[1] for r in results),
                      "first_100_in_order_us": statistics.median(r[2] for r in results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
