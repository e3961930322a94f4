"""A job that sleeps for the workload's milliseconds (reaction, shutdown and console benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gearman_driver import Worker, job


def sleep_ms(data: bytes) -> bytes:
    time.sleep(int(data or b"10") / 1000.0)
    return b"ok"


class Sleep(Worker):
    prefix = "bench."

    @job
    def sleep(self, job: Any, workload: bytes) -> bytes:
        return sleep_ms(workload)


BARE_TASKS: dict[str, Callable[[bytes], bytes]] = {"bench.sleep": sleep_ms}
