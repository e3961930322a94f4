"""A process that dies after its job ran but before the result reached gearmand (an `end` hook
or the job closes every descriptor, or `os._exit`s) has lost that job: gearmand re-queues it
for the replacement. Each such death counts toward the failed-start backoff, also when the
process had delivered results before or a healthy sibling keeps delivering, so one job costs a
few forks, never a fork loop (75–100 forks/s before)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from tests.faults.faultutil import peak_rss_kb, record_figures, started_count
from tests.gearmand_util import TestClient

WINDOW = 5.0
PATTERNS = {
    "close_in_end": "the end hook closes every fd, so sending the result fails",
    "close_in_job": "the job closes every fd and returns, so sending the result fails",
    "exit_in_end": "os._exit in the end hook",
    "exit_in_job": "os._exit in the job while a healthy sibling delivers good jobs",
}


@pytest.fixture(params=["native", "pygearman"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def backoff_delays(log: str, job: str) -> list[float]:
    """The `next start in Xs` of every failed start the master logged for `job`."""
    return [float(m) for m in re.findall(rf" of {re.escape(job)} failed to start: .*next start "
                                         rf"in ([0-9.]+)s", log)]


@pytest.mark.slow
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_a_death_before_the_result_is_sent_is_backed_off(
        pattern: str, worker_backend: str, gearmand, driver_factory, tmp_path: Path) -> None:
    job = f"f.undelivered.{pattern}"
    processes = 2 if pattern == "exit_in_job" else 1
    tries = tmp_path / "tries.txt"
    driver = driver_factory(gearmand, {
        "namespaces": ["tw.faults.undelivered"], "loglevel": "INFO",
        "worker_options": {"GLOBAL": {"tries_file": str(tries)}}})
    assert driver.wait_registered(job, processes)
    stop = threading.Event()
    good: list[bool] = []

    def healthy_traffic() -> None:
        with TestClient(gearmand, timeout=30) as client:
            i = 0
            while not stop.is_set():
                outcome = client.submit(job, f"good{i}".encode())
                good.append(outcome.final == "complete")
                i += 1

    traffic = threading.Thread(target=healthy_traffic, daemon=True)
    if pattern == "exit_in_job":
        traffic.start()
        assert driver.wait_registered(job, processes)
    with TestClient(gearmand) as client:
        client.submit_bg(job, b"poison")
    time.sleep(WINDOW)  # the window over which forks are counted
    stop.set()
    traffic.join(30) if traffic.is_alive() else None
    log = driver.log()
    starts = started_count(log, job) - processes
    n_tries = len(tries.read_text().splitlines()) if tries.exists() else 0
    delays = backoff_delays(log, job)
    record_figures(f"result not delivered: {pattern} ({worker_backend}, {WINDOW:g} s)", sent=1,
                   completed=0, failed=0, lost=0, recover_s=None,
                   peak_rss_kb=peak_rss_kb(driver.pid),
                   notes=f"{PATTERNS[pattern]}; {starts} replacement(s) forked and {n_tries} "
                         f"tries in {WINDOW:g}s; backoff steps "
                         f"{', '.join(f'{d:g}' for d in delays) or 'none'} s (cap 60 s)"
                         + (f"; {sum(good)}/{len(good)} good jobs completed meanwhile"
                            if good else ""),
                   starts=starts)
    assert driver.proc is not None and driver.proc.poll() is None
    assert n_tries >= 1, "the poison job never ran"
    if pattern.startswith("close_in"):  # alive, but its result cannot be sent: said so
        assert "(handle H:" in log and f" lost to 127.0.0.1:{gearmand}: " in log, log[-3000:]
    assert starts <= 8, f"fork loop: {starts} processes started in {WINDOW:g}s"
    # every death of this job ramps the same backoff: 0.1, 0.2, 0.4 ... up to 60 s
    assert delays == [min(60.0, 0.1 * 2 ** i) for i in range(len(delays))], delays
    if good:
        assert all(good), "a good job failed"
