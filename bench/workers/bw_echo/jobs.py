"""A trivial job: return the workload (the throughput and control-plane benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gearman_driver import Worker, job


class Echo(Worker):
    prefix = "bench."

    @job
    def echo(self, job: Any, workload: bytes) -> bytes:
        return workload


BARE_TASKS: dict[str, Callable[[bytes], bytes]] = {"bench.echo": lambda data: data}
