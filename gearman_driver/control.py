"""The master as the console sees it: read the job table and scoreboard, change limits, stop.

Changes take effect on the next turn of the master loop (a fraction of a second), not at
the next poll of gearmand as in Gearman::Driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gearman_driver.console_commands import JobRow, ProcessRow
from gearman_driver.scoreboard import State

if TYPE_CHECKING:
    from gearman_driver.driver import Driver


class DriverControl:
    """Implements the console's Controller protocol on top of a running Driver."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def job_rows(self) -> Sequence[JobRow]:
        driver = self.driver
        assert driver.scoreboard is not None
        rows = []
        for name in driver.jobs:
            job = driver.jobs[name]
            last_run, last_error, message = job.last_run, job.last_error, job.last_error_msg
            for process in job.processes.values():
                view = driver.scoreboard.read(process.slot)
                last_run = max(last_run, view.last_job_end)
                if view.last_error > last_error:
                    last_error, message = view.last_error, view.last_error_msg
            rows.append(JobRow(name, job.min_processes, job.max_processes,
                               len(job.running()), last_run, last_error, message))
        return rows

    def process_rows(self, job: str) -> Sequence[ProcessRow]:
        driver = self.driver
        assert driver.scoreboard is not None
        now = time.time()
        rows = []
        for pid in sorted(driver.jobs[job].processes):
            view = driver.scoreboard.read(driver.jobs[job].processes[pid].slot)
            idle_for = None if view.state == State.BUSY or not view.last_job_end \
                else max(0.0, now - view.last_job_end)
            rows.append(ProcessRow(pid, view.state == State.BUSY, view.jobs_done, idle_for))
        return rows

    def has_job(self, job: str) -> bool:
        return job in self.driver.jobs

    def set_limits(self, job: str, min_processes: int | None,
                   max_processes: int | None) -> None:
        target = self.driver.jobs[job]
        if min_processes is not None:
            target.min_processes = min_processes
        if max_processes is not None:
            target.max_processes = max_processes
        self.driver.limits_changed(job)

    def stop_pids(self, pids: Sequence[int]) -> list[int]:
        driver = self.driver
        assert driver.processes is not None
        ours = []
        for pid in pids:
            job = driver.jobs.job_of(pid)
            if job is not None:
                driver.processes.stop(job.processes[pid], "console kill")
                ours.append(pid)
        return ours

    def stop_jobs(self, jobs: Sequence[str]) -> None:
        driver = self.driver
        assert driver.processes is not None
        names = list(driver.jobs) if "*" in jobs else list(jobs)
        for name in names:
            for process in list(driver.jobs[name].processes.values()):
                driver.processes.stop(process, "console killall")

    def request_shutdown(self) -> None:
        self.driver.shutdown()

    def request_reload(self, done: Callable[[str | None], None]) -> None:
        self.driver.request_reload(done)
