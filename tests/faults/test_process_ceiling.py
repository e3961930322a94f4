"""Limits from the console are capped at the process ceiling, and a fork that fails is retried
with backoff, logged once (issue 12, item 6). The fork failures are real: the daemon runs as
nobody under `prlimit --nproc`, so the kernel refuses its third process with EAGAIN."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from gearman_driver.scoreboard import MAX_PROCESSES
from tests.driver_util import DriverProcess, cpu_seconds
from tests.faults.faultutil import (
    NOBODY,
    as_nobody,
    console,
    console_config,
    peak_rss_kb,
    record_figures,
    user_processes,
)
from tests.gearmand_util import wait_for

JOB = "f.slow.sleep"
OBSERVE_S = 8.0


@pytest.mark.slow
def test_console_refuses_a_huge_limit_and_the_master_keeps_answering(
        gearmand, driver_factory) -> None:
    cport, cfg = console_config()
    driver = driver_factory(gearmand, {"namespaces": ["tw.faults.slow"], **cfg})
    assert driver.wait_registered(JOB, 1)
    huge = "99999999999"
    expected = [f"ERR invalid_value: max_processes must be <= {MAX_PROCESSES}"]
    assert console(cport, f"set_processes {JOB} {huge} {huge}") == expected
    assert console(cport, f"set_max_processes {JOB} {huge}") == expected
    t0 = time.monotonic()
    status = console(cport, "status")
    answered = time.monotonic() - t0
    (row,) = [line.split() for line in status if line.startswith(JOB)]
    assert row[1:4] == ["1", "8", "1"], status  # min, max, processes unchanged
    assert len(driver.children()) == 1
    record_figures("process ceiling: set_processes 99999999999 from the console", sent=0,
                   completed=0, failed=0, lost=0, recover_s=answered,
                   peak_rss_kb=peak_rss_kb(driver.pid),
                   notes=f"refused with `{expected[0]}`; the next status answered in "
                         f"{answered * 1000:.0f} ms; still 1 process")


def _failed_fork_lines(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if re.search(r"ERROR .*cannot (start|fork) a process", line)]


@pytest.mark.slow
def test_failing_fork_is_logged_once_and_retried_with_backoff(gearmand, open_home) -> None:
    cport, cfg = console_config()
    driver = DriverProcess(open_home, gearmand, {
        "namespaces": ["tw.faults.slow"], "loglevel": "DEBUG", **cfg,
        "job_runtime_attributes": {JOB: {"min_processes": 4, "max_processes": 4}}})
    # Two placeholder processes of nobody's, then the master and two children fit: the
    # third fork fails with EAGAIN. Ending the placeholders makes room again (raising a
    # running process's limit needs CAP_SYS_RESOURCE, which a container may not have).
    limit = user_processes(NOBODY) + 5
    placeholders = [subprocess.Popen(as_nobody("sleep", "600")) for _ in range(2)]
    driver.wrapper = ["prlimit", f"--nproc={limit}:{limit}", *as_nobody()]
    driver.start()
    try:
        assert driver.wait_registered(JOB, 2), driver.log()[-2000:]
        assert wait_for(lambda: _failed_fork_lines(driver.log()), 10), driver.log()[-2000:]
        cpu0, t0 = cpu_seconds(driver.pid), time.monotonic()
        polls = 0
        while time.monotonic() - t0 < OBSERVE_S:  # the observation window, polled
            status = console(cport, "status", timeout=2.0)
            assert any(line.startswith(JOB) for line in status), status
            polls += 1
            time.sleep(0.5)
        cpu = (cpu_seconds(driver.pid) - cpu0) / (time.monotonic() - t0)
        log = driver.log()
        errors = _failed_fork_lines(log)
        tries = len(errors) + len(re.findall(r"start \d+ in a row failed", log))
        assert len(errors) == 1, errors[:5]
        assert tries <= 8, f"{tries} fork attempts"
        assert len(driver.children()) == 2
        # make room: the next retry starts the missing processes
        for placeholder in placeholders:
            placeholder.kill()
            placeholder.wait()
        lifted = time.monotonic()
        assert driver.wait_registered(JOB, 4, timeout=FORK_RETRY_WAIT), driver.log()[-2000:]
        recovered = time.monotonic() - lifted
        assert "started a process again after" in driver.log()
        record_figures(
            "fork fails (EAGAIN under prlimit --nproc, as nobody)", sent=0, completed=0,
            failed=0, lost=0, recover_s=recovered, peak_rss_kb=peak_rss_kb(driver.pid),
            notes=f"min_processes 4, room for 2: {tries} fork attempts and {len(errors)} error "
                  f"line in {OBSERVE_S:g}s of failures (backoff 0.5 s doubling to 30 s); master "
                  f"CPU {cpu * 100:.2f}%; {polls} console polls answered; once room was made "
                  f"the 2 missing processes were registered {recovered:.1f}s later")
    finally:
        for placeholder in placeholders:
            placeholder.kill()
            placeholder.wait()
        driver.stop()


FORK_RETRY_WAIT = 40.0  # the backoff reached at most 8 s in the window; 30 s is its cap
