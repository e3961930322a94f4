"""A 10 ms job that appends '<workload> <master pid>' to BW_RECORD_FILE (fairness benchmark).

The file is opened O_APPEND, so the short lines of every process (of every driver) interleave
whole; the benchmark counts per driver who ran what, and which workloads never ran.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gearman_driver import Worker, job

RECORD = os.environ.get("BW_RECORD_FILE", os.devnull)


class Record(Worker):
    prefix = "bench."

    @job
    def record(self, job: Any, workload: bytes) -> bytes:
        time.sleep(0.01)
        fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"%s %d\n" % (workload, os.getppid()))
        finally:
            os.close(fd)
        return b"ok"
