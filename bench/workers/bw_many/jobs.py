"""Fifty trivial jobs in one class (master idle CPU and SIGHUP-reload benchmarks)."""

from __future__ import annotations

from collections.abc import Callable

from bench.workers import add_echo_jobs
from gearman_driver import Worker

JOBS = 50


class Many(Worker):
    prefix = "bench.many."


add_echo_jobs(Many, [f"j{index:02d}" for index in range(JOBS)])

BARE_TASKS: dict[str, Callable[[bytes], bytes]] = {
    f"bench.many.j{i:02d}": (lambda data: data) for i in range(JOBS)
}
