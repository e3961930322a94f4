"""A poison job (its process exits every time it takes it) under gearmand --job-retries=3:
dropped after 3 tries, no fork storm, and good jobs keep flowing afterwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.faults.faultutil import peak_rss_kb, record_figures, started_count
from tests.gearmand_util import (
    JobOutcome,
    TestClient,
    start_gearmand,
    status_table,
    stop_gearmand,
    wait_for,
)

RETRIES = 3
GOOD = 200


@pytest.mark.slow
def test_poison_job_is_dropped_after_job_retries(tmp_path: Path, driver_factory) -> None:
    tries = tmp_path / "tries.txt"
    proc, port = start_gearmand(tmp_path / "g", f"--job-retries={RETRIES}")
    try:
        driver = driver_factory(port, {
            "namespaces": ["tw.faults.poison"], "loglevel": "INFO",
            "worker_options": {"GLOBAL": {"tries_file": str(tries)}}})
        assert driver.wait_registered("f.poison.eat", 1)
        poisoned: list[JobOutcome] = []

        def poison_client() -> None:
            with TestClient(port, timeout=30) as client:
                poisoned.append(client.submit("f.poison.eat", b"poison-fg"))

        t0 = time.monotonic()
        thread = threading.Thread(target=poison_client, daemon=True)
        thread.start()
        with TestClient(port) as client:
            client.submit_bg("f.poison.eat", b"poison-bg")
        thread.join(30)
        assert poisoned, "the foreground client of the poison job never got an answer"
        assert wait_for(lambda: status_table(port).get("f.poison.eat", (0,))[0] == 0, 15)
        dropped_after = time.monotonic() - t0
        # good jobs flow afterwards, through a replaced process
        with TestClient(port, timeout=30) as client:
            good = [client.submit("f.poison.eat", f"good{i}".encode()) for i in range(GOOD)]
        ok = sum(1 for i, o in enumerate(good)
                 if o.final == "complete" and o.result.decode().startswith(f"good{i}:"))
        # settled: one process, registered (a late fork would show up in the count below)
        assert wait_for(lambda: len(driver.children()) == 1
                        and driver.registered("f.poison.eat") == 1, 10)
        lines = tries.read_text().splitlines()
        fg_tries = sum(1 for x in lines if x.startswith("poison-fg "))
        bg_tries = sum(1 for x in lines if x.startswith("poison-bg "))
        starts = started_count(driver.log(), "f.poison.eat")
        peak = peak_rss_kb(driver.pid)
        record_figures(f"poison job, gearmand --job-retries={RETRIES}", sent=2 + GOOD,
                       completed=ok, failed=2, lost=GOOD - ok, recover_s=dropped_after,
                       peak_rss_kb=peak,
                       notes=f"poison tries: foreground {fg_tries}, background {bg_tries}; "
                             f"client got {poisoned[0].final.upper()}; {starts} processes started "
                             f"in all; both poison jobs dropped {dropped_after:.2f}s after "
                             f"submission; {ok}/{GOOD} good jobs completed afterwards",
                       starts=starts)
        assert fg_tries == RETRIES and bg_tries == RETRIES, lines
        assert poisoned[0].final == "fail", poisoned[0].events
        assert ok == GOOD
        assert starts <= 1 + 2 * RETRIES, starts  # the first, plus one per death
        assert driver.proc is not None and driver.proc.poll() is None
    finally:
        stop_gearmand(proc)


@pytest.mark.slow
def test_poison_job_with_unlimited_retries_does_not_fork_storm(gearmand, driver_factory,
                                                              tmp_path: Path) -> None:
    """With gearmand's default --job-retries=0 a poison job is handed out for ever: a death in
    a first job must count as a failed start (backoff), or the replacements fork in a loop
    (~70 processes/s here before the fix)."""
    tries = tmp_path / "tries.txt"
    driver = driver_factory(gearmand, {
        "namespaces": ["tw.faults.poison"], "loglevel": "INFO",
        "worker_options": {"GLOBAL": {"tries_file": str(tries)}}})
    assert driver.wait_registered("f.poison.eat", 1)
    t0 = time.monotonic()
    with TestClient(gearmand) as client:
        client.submit_bg("f.poison.eat", b"poison-forever")
    # the sixth death in a row backs the next start off by 3.2 s (0.1 s doubled five times)
    assert wait_for(lambda: "6 failed start(s) in a row, next start in 3.2s" in driver.log(),
                    20), driver.log()[-2000:]
    elapsed = time.monotonic() - t0
    starts = started_count(driver.log(), "f.poison.eat")
    n_tries = len(tries.read_text().splitlines()) if tries.exists() else 0
    record_figures("poison job, gearmand default --job-retries=0", sent=1, completed=0,
                   failed=0, lost=0, recover_s=None, peak_rss_kb=peak_rss_kb(driver.pid),
                   notes=f"{starts} processes started and {n_tries} tries in {elapsed:.1f}s: the "
                         f"job is never dropped; each death backs off the next start",
                   starts=starts)
    assert driver.proc is not None and driver.proc.poll() is None
    # no fork storm: one start per death, the first one included, nothing in between
    assert starts == 6, f"{starts} processes started for 6 deaths"
