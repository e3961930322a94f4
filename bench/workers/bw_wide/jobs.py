"""Many trivial jobs in one class: BW_WIDE_JOBS of them (default 500), for the scale benchmark.

The count comes from the environment so one module serves every size of the 'N jobs of one
process each' case; the names are bench.wide.j000 … .
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gearman_driver import Worker, job

JOBS = int(os.environ.get("BW_WIDE_JOBS", "500"))


def _echo_method(index: int) -> Callable[..., bytes]:
    def method(self: Any, job: Any, workload: bytes) -> bytes:
        return workload

    method.__name__ = method.__qualname__ = f"j{index:03d}"
    return job(method)


class Wide(Worker):
    prefix = "bench.wide."


for _index in range(JOBS):
    setattr(Wide, f"j{_index:03d}", _echo_method(_index))
