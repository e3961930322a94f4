"""max_jobs_per_process: 100 — 1,000 jobs through one process are served by ~10 pids, none fails."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.faults.faultutil import peak_rss_kb, record_figures
from tests.gearmand_util import TestClient

JOBS = 1000
LIMIT = 100


@pytest.mark.slow
def test_processes_are_recycled_without_failing_a_job(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, {"namespaces": ["tw.faults.recycle"], "loglevel": "INFO",
                                       "max_jobs_per_process": LIMIT})
    assert driver.wait_registered("f.recycle.pid", 1)
    served: Counter[str] = Counter()
    failed = 0
    t0 = time.monotonic()
    with TestClient(gearmand, timeout=30) as client:
        for i in range(JOBS):
            outcome = client.submit("f.recycle.pid", str(i).encode())
            echoed, _, pid = outcome.result.decode().partition(":")
            if outcome.final == "complete" and echoed == str(i):
                served[pid] += 1
            else:
                failed += 1
    took = time.monotonic() - t0
    recycled = driver.log().count("recycling after")
    peak = peak_rss_kb(driver.pid)
    record_figures(f"max_jobs_per_process: {LIMIT}", sent=JOBS, completed=sum(served.values()),
                   failed=failed, lost=JOBS - sum(served.values()) - failed, recover_s=None,
                   peak_rss_kb=peak,
                   notes=f"{len(served)} distinct pids served {JOBS} jobs (min=max=1), "
                         f"most {max(served.values())} each; {recycled} recycles logged; "
                         f"{took:.1f}s in all",
                   pids=len(served))
    assert failed == 0 and sum(served.values()) == JOBS
    assert 9 <= len(served) <= 11, served
    assert max(served.values()) <= LIMIT
    assert driver.proc is not None and driver.proc.poll() is None
