"""~100 MB of Python objects built at import, and a job that reads them (memory benchmark).

DATA maps 600,000 str keys to (int, int) tuples: ~107 MB of objects. A `lookup` job reads
`k` random entries: each read increments the refcount of the value it returns, which writes to
the page holding that object, so reading shared data copies pages in every forked child.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from gearman_driver import Worker, job

ENTRIES = 600_000
DATA: dict[str, tuple[int, int]] = {f"k{i}": (i, i) for i in range(ENTRIES)}


def lookup(data: bytes) -> bytes:
    """Read `k` (the workload, default 1000) random entries; return how many were found."""
    k = int(data or b"1000")
    found = 0
    rand = random.randrange
    for _ in range(k):
        if DATA.get(f"k{rand(ENTRIES)}") is not None:
            found += 1
    return str(found).encode()


class Big(Worker):
    prefix = "bench."

    @job
    def lookup(self, job: Any, workload: bytes) -> bytes:
        return lookup(workload)


BARE_TASKS: dict[str, Callable[[bytes], bytes]] = {"bench.lookup": lookup}
