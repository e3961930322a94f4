"""The master as the console sees it: read the job table and scoreboard, change limits, stop.

It is handed what it needs (the job table, the scoreboard, a way to stop a process, to shut
down and to reload), never the master itself. Changes take effect on the next turn of the
master loop (a fraction of a second), not at the next poll of gearmand as in Gearman::Driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from gearman_driver.console.replies import JobRow, ProcessRow, ServerRow
from gearman_driver.jobs.table import JobTable, Process
from gearman_driver.scoreboard import Scoreboard, State

log = logging.getLogger("gearman_driver")  # the master's logger, as before the move

ReloadDone = Callable[[str | None], None]


class DriverControl:
    """Implements the console's Controller protocol on the master's job table."""

    def __init__(self, jobs: JobTable, scoreboard: Scoreboard, *,
                 stop: Callable[[Process, str], None], shutdown: Callable[[], None],
                 request_reload: Callable[[ReloadDone], None],
                 servers: Callable[[], Sequence[ServerRow]] = tuple,
                 clock: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self.scoreboard = scoreboard
        self._stop = stop
        self._shutdown = shutdown
        self._request_reload = request_reload
        self._servers = servers  # the master's view of each gearmand (its observer)
        self._clock = clock  # wall clock: idle times are shown against the slots' epochs

    def job_rows(self) -> Sequence[JobRow]:
        rows = []
        for name in self.jobs:
            job = self.jobs[name]
            last_run, last_error, message = job.last_run, job.last_error, job.last_error_msg
            for process in job.processes.values():
                view = self.scoreboard.read(process.slot)
                last_run = max(last_run, view.last_job_end)
                if view.last_error > last_error:
                    last_error, message = view.last_error, view.last_error_msg
            rows.append(JobRow(name, job.min_processes, job.max_processes,
                               len(job.running()), last_run, last_error, message))
        return rows

    def process_rows(self, job: str) -> Sequence[ProcessRow]:
        now = self._clock()
        rows = []
        for pid in sorted(self.jobs[job].processes):
            view = self.scoreboard.read(self.jobs[job].processes[pid].slot)
            idle_for = None if view.state == State.BUSY or not view.last_job_end \
                else max(0.0, now - view.last_job_end)
            rows.append(ProcessRow(pid, view.state == State.BUSY, view.jobs_done, idle_for,
                                   view.slots, view.jobs_in_hand))
        return rows

    def server_rows(self) -> Sequence[ServerRow]:
        return self._servers()

    def has_job(self, job: str) -> bool:
        return job in self.jobs

    def set_limits(self, job: str, min_processes: int | None,
                   max_processes: int | None) -> None:
        """Limits checked by the console's commands; every turn applies them, so log only."""
        target = self.jobs[job]
        if min_processes is not None:
            target.min_processes = min_processes
        if max_processes is not None:
            target.max_processes = max_processes
        log.info("limits of %s set to min %d, max %d", job, target.min_processes,
                 target.max_processes)

    def stop_pids(self, pids: Sequence[int]) -> list[int]:
        ours = []
        for pid in pids:
            job = self.jobs.job_of(pid)
            if job is not None:
                self._stop(job.processes[pid], "console kill")
                ours.append(pid)
        return ours

    def stop_jobs(self, jobs: Sequence[str]) -> None:
        names = list(self.jobs) if "*" in jobs else list(jobs)
        for name in names:
            for process in list(self.jobs[name].processes.values()):
                self._stop(process, "console killall")

    def request_shutdown(self) -> None:
        self._shutdown()

    def request_reload(self, done: ReloadDone) -> None:
        self._request_reload(done)
