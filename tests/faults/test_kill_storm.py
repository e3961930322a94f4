"""kill -9 of a random worker every 200 ms while 10,000 foreground jobs run: none is lost."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.faultutil import kill_quietly, peak_rss_kb, record_figures
from tests.gearmand_util import TestClient

JOBS = 10_000
CLIENTS = 8
KILL_EVERY = 0.2
JOB_MS = 5  # each job holds its process a little, so most kills catch a job in hand


@pytest.mark.slow
def test_kill_9_storm_loses_no_foreground_job(gearmand, driver_factory, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts.txt"
    driver = driver_factory(gearmand, {
        "namespaces": ["tw.faults.calc"], "loglevel": "INFO",
        "worker_options": {"GLOBAL": {"attempts_file": str(attempts)}}})
    assert driver.wait_registered("f.calc.square", 8)

    results: dict[int, tuple[str, bytes]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        try:
            with TestClient(gearmand, timeout=60) as c:
                for n in range(k, JOBS, CLIENTS):
                    outcome = c.submit("f.calc.square", f"{n}/{JOB_MS}".encode())
                    with lock:
                        results[n] = (outcome.final, outcome.result)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    rng = random.Random(20261129)
    kills: list[int] = []
    started = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.monotonic() - started < 150:
        time.sleep(KILL_EVERY)
        kids = driver.children()
        if kids:
            victim = rng.choice(kids)
            if kill_quietly(victim):
                kills.append(victim)
    storm_end = time.monotonic()
    for t in threads:
        t.join(30)
    elapsed = storm_end - started
    assert not errors, errors[:3]
    assert driver.proc is not None and driver.proc.poll() is None, "the master fell over"

    # back to 8 registered workers after the last kill
    assert driver.wait_registered("f.calc.square", 8, timeout=20)
    recover = time.monotonic() - storm_end
    peak = peak_rss_kb(driver.pid)

    wrong = {n: r for n, r in results.items()
             if r[0] != "complete" or r[1].decode().rsplit(":", 1)[0] != f"{n}:{n * n}"}
    lost = JOBS - len(results)
    tries = Counter(attempts.read_text().split())
    retried = sum(1 for v in tries.values() if v > 1)
    served_by = {r[1].decode().rsplit(":", 1)[1] for r in results.values() if r[0] == "complete"}
    record_figures("kill -9 storm", sent=JOBS, completed=len(results) - len(wrong),
                   failed=len(wrong), lost=lost, recover_s=recover, peak_rss_kb=peak,
                   notes=f"{len(kills)} workers killed in {elapsed:.1f}s, "
                         f"{retried} jobs were in a killed worker and retried, "
                         f"{len(served_by)} distinct pids served, {CLIENTS} client connections, "
                         f"{JOB_MS} ms jobs",
                   kills=len(kills), retried=retried, duration_s=round(elapsed, 1))
    assert lost == 0
    assert wrong == {}
    assert len(kills) >= 10, "the storm was too short to prove anything"
    assert len(served_by) > 8  # replacements really served jobs
    assert retried >= len(kills) // 4  # kills caught jobs in hand, and those came back
