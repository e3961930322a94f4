"""SIGTERM with 8 busy processes on 3 s jobs: every job in hand completes for its client,
then the master exits 0 within graceful_timeout."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.driver_util import alive
from tests.faults.faultutil import peak_rss_kb, record_figures
from tests.gearmand_util import JobOutcome, TestClient, status_table, wait_for

BUSY = 8
GRACEFUL = 10


@pytest.mark.slow
def test_sigterm_lets_every_job_in_hand_complete(gearmand, driver_factory) -> None:
    driver = driver_factory(gearmand, {
        "namespaces": ["tw.faults.slow"], "graceful_timeout": GRACEFUL,
        "job_runtime_attributes": {"f.slow.sleep": {"min_processes": BUSY,
                                                    "max_processes": BUSY}}})
    assert driver.wait_registered("f.slow.sleep", BUSY)
    children = driver.children()
    outcomes: dict[int, JobOutcome] = {}
    done_at: dict[int, float] = {}

    def client(k: int) -> None:
        with TestClient(gearmand, timeout=30) as c:
            outcomes[k] = c.submit("f.slow.sleep", b"3")
            done_at[k] = time.monotonic()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(BUSY)]
    for t in threads:
        t.start()
    assert wait_for(lambda: status_table(gearmand).get("f.slow.sleep", (0, 0, 0))[1] == BUSY, 5)
    term_at = time.monotonic()
    peak = peak_rss_kb(driver.pid)
    driver.signal(signal.SIGTERM)
    code = driver.wait_exit(GRACEFUL + 5)
    exit_after = time.monotonic() - term_at
    for t in threads:
        t.join(10)
    ok = sum(1 for o in outcomes.values()
             if o.final == "complete" and o.result.startswith(b"slept 3 in "))
    record_figures("SIGTERM with 8 busy processes (3 s jobs)", sent=BUSY, completed=ok,
                   failed=len(outcomes) - ok, lost=BUSY - len(outcomes), recover_s=None,
                   peak_rss_kb=peak,
                   notes=f"master exited {code} {exit_after:.2f}s after SIGTERM "
                         f"(graceful_timeout {GRACEFUL}s); last result "
                         f"{max(done_at.values()) - term_at:.2f}s after SIGTERM"
                         if done_at else "no result",
                   exit_after_s=round(exit_after, 2))
    assert code == 0
    assert exit_after < GRACEFUL
    assert ok == BUSY, {k: o.events for k, o in outcomes.items()}
    assert max(done_at.values()) <= term_at + exit_after + 0.5
    assert not any(alive(pid) for pid in children)
    assert status_table(gearmand).get("f.slow.sleep", (0, 0, 0))[0] == 0  # nothing re-queued
