"""Fifty trivial jobs in one class (master idle CPU and SIGHUP-reload benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gearman_driver import Worker, job

JOBS = 50


def _echo_method(index: int) -> Callable[..., bytes]:
    def method(self: Any, job: Any, workload: bytes) -> bytes:
        return workload

    method.__name__ = method.__qualname__ = f"j{index:02d}"
    return job(method)


class Many(Worker):
    prefix = "bench.many."


for _index in range(JOBS):
    setattr(Many, f"j{_index:02d}", _echo_method(_index))

BARE_TASKS: dict[str, Callable[[bytes], bytes]] = {
    f"bench.many.j{i:02d}": (lambda data: data) for i in range(JOBS)
}
