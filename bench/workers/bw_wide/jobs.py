"""Many trivial jobs in one class: BW_WIDE_JOBS of them (default 500), for the scale benchmark.

The count comes from the environment so one module serves every size of the 'N jobs of one
process each' case; the names are bench.wide.j000 … .
"""

from __future__ import annotations

import os

from bench.workers import add_echo_jobs
from gearman_driver import Worker

JOBS = int(os.environ.get("BW_WIDE_JOBS", "500"))


class Wide(Worker):
    prefix = "bench.wide."


add_echo_jobs(Wide, [f"j{index:03d}" for index in range(JOBS)])
