"""Worker processes never outlive the master by more than graceful_timeout, even when a job
ignores or blocks SIGTERM (such a child stayed an orphan serving jobs for ever), take no new
job meanwhile, and a process forked by a job does not keep the worker's gearmand connection."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.driver_util import alive
from tests.faults.faultutil import kill_quietly, record_figures
from tests.gearmand_util import TestClient, status_table, wait_for

GRACE = 3.0
PROBES = 5


@pytest.fixture(params=["native", "pygearman"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _runs(path: Path, function: str) -> list[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [x for x in lines if x.startswith(function + " ")]


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["ignore_term", "block_term"])
def test_children_die_within_graceful_timeout_of_a_killed_master(
        pattern: str, worker_backend: str, gearmand, driver_factory, tmp_path: Path) -> None:
    function = f"f.stubborn.{pattern}"
    runs = tmp_path / "runs.txt"
    driver = driver_factory(gearmand, {
        "namespaces": ["tw.faults.stubborn"], "loglevel": "INFO", "graceful_timeout": GRACE,
        "worker_options": {"GLOBAL": {"runs_file": str(runs)}}})
    assert driver.wait_registered(function, 1)
    children = driver.children()
    try:
        if pattern == "ignore_term":
            with TestClient(gearmand) as client:
                pid = int(client.submit(function, b"first").result)
        else:  # a job in hand when the master dies, that never ends by itself
            with TestClient(gearmand) as client:
                client.submit_bg(function, b"first")
            assert wait_for(lambda: _runs(runs, function), 10)  # its begin hook ran
            pid = int(_runs(runs, function)[0].split()[2])
        driver.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert driver.wait_exit(10) is not None
        # once the orphan has noticed (it logs so), the jobs queued now must wait for others
        wait_for(lambda: "the master (pid" in driver.log(), 5)
        with TestClient(gearmand) as client:
            for i in range(PROBES):
                client.submit_bg(function, f"probe{i}".encode())
        gone = wait_for(lambda: not alive(pid), GRACE + 3, interval=0.05)
        outlived = time.monotonic() - killed
        probes_run = [x for x in _runs(runs, function) if " probe" in x]
        queued = status_table(gearmand).get(function, (0, 0, 0))[0]
        how = "ignores" if pattern == "ignore_term" else "blocks"
        record_figures(f"master kill -9, a job {how} SIGTERM ({worker_backend})", sent=PROBES,
                       completed=len(probes_run), failed=0, lost=0,
                       recover_s=outlived if gone else None, peak_rss_kb=None,
                       notes=f"graceful_timeout {GRACE:g}s; the orphan "
                             f"{'exited' if gone else 'still alive'} {outlived:.2f}s after the "
                             "master's SIGKILL; "
                             f"{len(probes_run)} of {PROBES} jobs queued after the kill were "
                             f"taken by it; {queued} still queued")
        assert gone, f"process {pid} outlived its master by more than {GRACE + 3:g}s"
        assert probes_run == [], probes_run
        assert queued >= PROBES
    finally:
        for kid in children:
            kill_quietly(kid)


@pytest.mark.slow
def test_a_process_forked_by_a_job_does_not_keep_the_worker_registered(
        worker_backend: str, gearmand, driver_factory, tmp_path: Path) -> None:
    pids = tmp_path / "pids.txt"
    driver = driver_factory(gearmand, {
        "namespaces": ["tw.faults.stubborn"], "loglevel": "INFO",
        "worker_options": {"GLOBAL": {"pids_file": str(pids)}}})
    assert driver.wait_registered("f.stubborn.spawn", 1)
    try:
        with TestClient(gearmand) as client:
            assert client.submit("f.stubborn.spawn", b"120").final == "complete"
        grandchild = int(pids.read_text().split()[0])
        assert alive(grandchild)
        assert driver.stop() == 0
        left = wait_for(lambda: driver.registered("f.stubborn.spawn") == 0, 5)
        record_figures(f"job forks a process, then the driver stops ({worker_backend})", sent=1,
                       completed=1, failed=0, lost=0, recover_s=None, peak_rss_kb=None,
                       notes="the forked process sleeps 120 s; the worker's connection "
                             f"{'was gone from' if left else 'still listed in'} gearmand's "
                             "`workers` once the driver had stopped")
        assert left, "the job's process kept the worker's gearmand connection"
        assert alive(grandchild)  # the job's own process is the job's business
    finally:
        for pid in (int(x) for x in pids.read_text().split()) if pids.exists() else ():
            kill_quietly(pid)  # not our child: init reaps it
