"""Text jobs: the smallest useful workers, one process each unless the config says otherwise."""

from __future__ import annotations

import json
import time
from typing import Any

from gearman_driver import Worker, job


class Text(Worker):
    """Registered as examples.workers.text.Text.<method>."""

    @job(min_processes=1, max_processes=4)
    def upper(self, job: Any, workload: bytes) -> bytes:
        return workload.upper()

    @job
    def reverse(self, job: Any, workload: bytes) -> bytes:
        return workload[::-1]

    @job(min_processes=1, max_processes=8, decode=True, encode=True)
    def word_count(self, job: Any, workload: str) -> dict[str, int]:
        """Slow on purpose (50 ms) so a burst makes the driver scale this job up."""
        time.sleep(0.05)
        return {"words": len(workload.split())}

    def decode(self, workload: bytes) -> str:
        return workload.decode("utf-8")

    def encode(self, result: Any) -> str:
        return json.dumps(result)


class Maths(Worker):
    """Two functions served by the same processes: one process group."""

    prefix = "maths."

    @job(process_group="arith", min_processes=1, max_processes=2)
    def add(self, job: Any, workload: bytes) -> str:
        return str(sum(int(x) for x in workload.split()))

    @job(process_group="arith")
    def multiply(self, job: Any, workload: bytes) -> str:
        product = 1
        for x in workload.split():
            product *= int(x)
        return str(product)
