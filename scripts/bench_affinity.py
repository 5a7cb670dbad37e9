"""Figure (k): resident memory per affinity entry with 1,000,000 ids in the in-memory map.

Run by scripts/bench.py in a fresh process, so nothing else shares the heap. Prints JSON.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chatgpt_apiserver.state.affinity import LocalAffinity


def rss_bytes() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main(count: int = 1_000_000) -> None:
    owners = LocalAffinity(max_entries=2 * count + 2)  # large enough that nothing is dropped
    names = [f"controller-{index}" for index in range(8)]
    ids = (f"resp_{index:048x}" for index in range(count))  # the length of OpenAI's ids
    gc.collect()
    before = rss_bytes()
    for index, key in enumerate(ids):
        owners.remember(key, names[index % 8])
    gc.collect()
    after = rss_bytes()
    assert len(owners) == count
    print(json.dumps({"entries": count, "bytes_per_entry": round((after - before) / count, 1)}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
